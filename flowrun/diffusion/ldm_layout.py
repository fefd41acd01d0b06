"""Write diffusers-layout weights in the original Stable Diffusion (LDM) key layout.

diffusers ships the LDM -> diffusers direction (`diffusers.loaders.single_file_utils`), which flowrun uses
to load. The other direction is not in the library (only in a script of its repository), yet flowrun needs
it to save single-file checkpoints: the test models and the bundled default model are written this way,
so that they load through the very path users' checkpoints take. The mapping follows the LDM module
structure: per resolution level `layers_per_block` resnets (+ attention) and a down/up-sampler.
"""

from __future__ import annotations

from typing import Any

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _swap_parts(key: str, pairs: list[tuple[str, str]]) -> str:
    for new, old in pairs:
        key = key.replace(f".{new}.", f".{old}.")
    return key


def unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel weights -> `model.diffusion_model.*` keys."""
    lpb = config.get("layers_per_block", 2)
    downs, ups = config["down_block_types"], config["up_block_types"]
    prefix_map: list[tuple[str, str]] = [
        ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
        ("class_embedding.linear_1.", "label_emb.0.0."), ("class_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ]
    for j in range(2):
        prefix_map.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    for i, kind in enumerate(downs):
        for j in range(lpb):
            idx = (lpb + 1) * i + j + 1
            prefix_map.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0."))
            if "CrossAttn" in kind:
                prefix_map.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1."))
        if i < len(downs) - 1:
            prefix_map.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."))
    for i, kind in enumerate(ups):
        for j in range(lpb + 1):
            idx = (lpb + 1) * i + j
            prefix_map.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0."))
            if "CrossAttn" in kind:
                prefix_map.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1."))
        if i < len(ups) - 1:
            slot = 2 if "CrossAttn" in kind else 1
            prefix_map.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(lpb + 1) * i + lpb}.{slot}."))
    out = {}
    for key, value in state.items():
        for new, old in prefix_map:
            if key.startswith(new):
                rest = key[len(new):]
                if "resnets" in new:
                    rest = _swap_parts("." + rest, _RESNET)[1:]
                out["model.diffusion_model." + old + rest] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet weight {key!r}")
    return out


def vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL weights -> `first_stage_model.*` keys (attention as 1x1 convolutions)."""
    n = len(config["block_out_channels"])
    prefix_map: list[tuple[str, str]] = [("encoder.conv_norm_out.", "encoder.norm_out."),
                                         ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        prefix_map.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        for j in range(2):
            prefix_map.append((f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}."))
    for i in range(n):
        prefix_map.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        prefix_map.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        prefix_map.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."))
        prefix_map.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    out = {}
    for key, value in state.items():
        new_key = key
        for new, old in prefix_map:
            if key.startswith(new):
                rest = key[len(new):]
                if "attentions" in new:
                    rest = _swap_parts("." + rest, _VAE_ATTN)[1:]
                    if rest.endswith("weight") and value.ndim == 2:
                        value = value.reshape(*value.shape, 1, 1)
                elif "resnets" in new:
                    rest = _swap_parts("." + rest, _VAE_RESNET)[1:]
                new_key = old + rest
                break
        out["first_stage_model." + new_key] = value
    return out


def with_text_model_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """CLIP text weights keyed as `text_model.*` (transformers 5 drops that level in CLIPTextModel)."""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in state.items()}


def clip_to_ldm(state: dict[str, Any]) -> dict[str, Any]:
    """transformers CLIPTextModel weights -> SD1's `cond_stage_model.transformer.text_model.*` keys."""
    return {"cond_stage_model.transformer." + k: v for k, v in with_text_model_prefix(state).items()
            if not k.endswith("position_ids")}


def open_clip_to_ldm(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """transformers CLIP text weights -> OpenCLIP keys under `prefix` (SD2: `cond_stage_model.model.`,
    SDXL's second encoder: `conditioner.embedders.1.model.`); q/k/v are fused into in_proj."""
    import torch

    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
    parts = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
             ("self_attn.out_proj", "attn.out_proj")]
    out: dict[str, Any] = {}
    fused: dict[str, dict[str, Any]] = {}
    for key, value in with_text_model_prefix(state).items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif key.startswith("text_model.encoder.layers."):
            rest = key[len("text_model.encoder.layers."):]
            index, _, name = rest.partition(".")
            block = f"{prefix}transformer.resblocks.{index}."
            for proj in ("q_proj", "k_proj", "v_proj"):
                if name.startswith(f"self_attn.{proj}."):
                    kind = name.rsplit(".", 1)[1]
                    fused.setdefault(f"{block}attn.in_proj_{kind}", {})[proj] = value
                    break
            else:
                for new, old in parts:
                    if name.startswith(new + "."):
                        out[block + old + name[len(new):]] = value
                        break
                else:
                    raise KeyError(f"no OpenCLIP name for text encoder weight {key!r}")
        elif not key.endswith("position_ids"):
            raise KeyError(f"no OpenCLIP name for text encoder weight {key!r}")
    for key, qkv in fused.items():
        out[key] = torch.cat([qkv["q_proj"], qkv["k_proj"], qkv["v_proj"]], dim=0)
    return out


def controlnet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers ControlNetModel weights -> `control_model.*` keys, the layout of ComfyUI's and A1111's
    ControlNet files: the UNet encoder's names, `zero_convs.N.0` for the residual convolutions,
    `middle_block_out.0` for the middle one, `input_hint_block.2N` for the hint embedding's convolutions."""
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    out = {}
    encoder = {k: v for k, v in state.items() if not k.startswith("controlnet_")}
    for key, value in unet_to_ldm(encoder, {**config, "up_block_types": []}).items():
        out["control_model." + key.removeprefix("model.diffusion_model.")] = value
    for key, value in state.items():
        if key.startswith("controlnet_down_blocks."):
            _, index, part = key.split(".")
            out[f"control_model.zero_convs.{index}.0.{part}"] = value
        elif key.startswith("controlnet_mid_block."):
            out["control_model.middle_block_out.0." + key.split(".")[-1]] = value
        elif key.startswith("controlnet_cond_embedding."):
            parts = key.split(".")
            if parts[1] == "conv_in":
                slot = 0
            elif parts[1] == "conv_out":
                slot = 2 * len(blocks) + 2
            else:
                slot = 2 * int(parts[2]) + 2
            out[f"control_model.input_hint_block.{slot}.{parts[-1]}"] = value
    return out
