"""Toy SD3-shaped models with seeded random weights: the 16-channel autoencoder (shared with Flux), the MMDiT
transformer, CLIP-L, CLIP-G and T5, written as an SD3.5-style single file and as split files, with their
configs in sidecars. Also the MMDiT key layout of the original checkpoints (diffusers only converts from it)."""

from __future__ import annotations

import json
from pathlib import Path

from flowrun.diffusion import offline  # noqa: F401  (before diffusers and transformers)

TINY_VAE16 = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [16, 16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64, "scaling_factor": 1.5305, "shift_factor": 0.0609,
    "use_quant_conv": False, "use_post_quant_conv": False,
}


def save(state: dict, path: Path, sidecar: dict | None = None) -> Path:
    """`state` as a safetensors file at `path` (folders made), with `sidecar` as `<name>.json` beside it."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def build_vae(seed: int = 0):
    """A toy 16-channel AutoencoderKL (no quant convolutions) with weights drawn from `seed`."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE16).eval()


def write_vae(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """vae/tiny-vae16-ldm.safetensors (original layout) and vae/tiny-vae16-diffusers.safetensors, with sidecars."""
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    vae = build_vae(seed)
    ldm = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae.state_dict(), TINY_VAE16).items()}
    side = {"vae": TINY_VAE16}
    folder = Path(models_dir) / "vae"
    return {"ldm": save(ldm, folder / "tiny-vae16-ldm.safetensors", side),
            "diffusers": save(vae.state_dict(), folder / "tiny-vae16-diffusers.safetensors", side)}


TINY_MMDIT = {  # SD3.5-medium-shaped: q/k RMS norms and a second attention in block 0
    "sample_size": 16, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 8,
    "num_attention_heads": 4, "joint_attention_dim": 96, "caption_projection_dim": 32, "pooled_projection_dim": 80,
    "out_channels": 16, "pos_embed_max_size": 16, "dual_attention_layers": [0], "qk_norm": "rms_norm",
}
TINY_CLIP_L = {
    "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 32, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
TINY_CLIP_G = {**TINY_CLIP_L, "hidden_size": 48, "projection_dim": 48, "hidden_act": "gelu", "num_attention_heads": 4}
TINY_T5 = {"vocab_size": 32128, "d_model": 96, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
           "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False, "use_cache": False}
SIDECAR = {"family": "sd3", "unet": TINY_MMDIT, "vae": TINY_VAE16, "text_encoders": [TINY_CLIP_L, TINY_CLIP_G, TINY_T5],
           "context_width": 96}

# diffusers name -> MMDiT name, per block (the inverse of convert_sd3_transformer_checkpoint_to_diffusers)
_BLOCK = [("attn.to_out.0.", "x_block.attn.proj."), ("attn.to_add_out.", "context_block.attn.proj."),
          ("attn.norm_q.", "x_block.attn.ln_q."), ("attn.norm_k.", "x_block.attn.ln_k."),
          ("attn.norm_added_q.", "context_block.attn.ln_q."), ("attn.norm_added_k.", "context_block.attn.ln_k."),
          ("attn2.to_out.0.", "x_block.attn2.proj."), ("attn2.norm_q.", "x_block.attn2.ln_q."),
          ("attn2.norm_k.", "x_block.attn2.ln_k."), ("norm1.linear.", "x_block.adaLN_modulation.1."),
          ("norm1_context.linear.", "context_block.adaLN_modulation.1."), ("ff.net.0.proj.", "x_block.mlp.fc1."),
          ("ff.net.2.", "x_block.mlp.fc2."), ("ff_context.net.0.proj.", "context_block.mlp.fc1."),
          ("ff_context.net.2.", "context_block.mlp.fc2.")]
_TOP = [("pos_embed.proj.", "x_embedder.proj."), ("time_text_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
        ("time_text_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
        ("time_text_embed.text_embedder.linear_1.", "y_embedder.mlp.0."),
        ("time_text_embed.text_embedder.linear_2.", "y_embedder.mlp.2."), ("context_embedder.", "context_embedder."),
        ("proj_out.", "final_layer.linear."), ("norm_out.linear.", "final_layer.adaLN_modulation.1.")]
_QKV = [("attn.to_", "x_block.attn.qkv."), ("attn.add_", "context_block.attn.qkv."),
        ("attn2.to_", "x_block.attn2.qkv.")]


def _swap(t):
    """Scale and shift halves exchanged (diffusers' AdaLayerNormContinuous has them the other way round)."""
    import torch

    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def transformer_to_mmdit(state: dict, num_layers: int, prefix: str = "") -> dict:
    """diffusers SD3Transformer2DModel weights -> the original MMDiT keys (works on meta tensors)."""
    import torch

    out, used = {}, set()
    for key, value in state.items():
        if key == "pos_embed.pos_embed":
            out[prefix + "pos_embed"] = value
            used.add(key)
        for new, old in _TOP:
            if key.startswith(new):
                last = key.startswith("norm_out.")
                out[prefix + old + key[len(new):]] = _swap(value) if last else value
                used.add(key)
    for i in range(num_layers):
        head = f"transformer_blocks.{i}."
        for new, old in _BLOCK:
            for kind in ("weight", "bias"):
                key = head + new + kind
                if key in state:
                    last = new.startswith("norm1_context") and i == num_layers - 1
                    out[prefix + f"joint_blocks.{i}." + old + kind] = _swap(state[key]) if last else state[key]
                    used.add(key)
        for new, old in _QKV:
            for kind in ("weight", "bias"):
                names = [head + new + (f"{p}_proj." if new == "attn.add_" else f"{p}.") + kind for p in "qkv"]
                if all(n in state for n in names):
                    out[prefix + f"joint_blocks.{i}." + old + kind] = torch.cat([state[n] for n in names])
                    used.update(names)
    left = set(state) - used
    if left:
        raise KeyError(f"no MMDiT name for {sorted(left)[:3]}")
    return out


def _random_text(cfg: dict, projection: bool, seed: int):
    import torch

    from flowrun.diffusion.checkpoint import _text_model

    torch.manual_seed(seed)
    model = _text_model(cfg, projection)
    model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    embeddings = getattr(model, "text_model", model).embeddings  # to_empty left the position ids unset
    embeddings.position_ids.copy_(torch.arange(embeddings.position_ids.shape[-1]).expand(1, -1))
    return model.eval()


def build(seed: int = 0):
    """(transformer, vae, clip_l, clip_g, t5) with weights drawn from `seed`."""
    import torch
    from diffusers import SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**TINY_MMDIT).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but the output is faint: make it do visible work
        transformer.proj_out.weight.mul_(4.0)
        transformer.context_embedder.weight.mul_(8.0)  # and let the prompt show in it
    vae = build_vae(seed)
    clip_l = _random_text(TINY_CLIP_L, False, seed + 1)
    clip_g = _random_text(TINY_CLIP_G, True, seed + 2)
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(T5Config(**TINY_T5)).eval()
    return transformer, vae, clip_l, clip_g, t5


def _with_text_model(state: dict) -> dict:
    """transformers' CLIP keys with the `text_model.` level (transformers 5 drops it in CLIPTextModel)."""
    from flowrun.diffusion.ldm_layout import with_text_model_prefix

    return with_text_model_prefix(state)


def write(models_dir: Path, seed: int = 0, name: str = "tiny-sd3") -> dict[str, Path]:
    """The toy SD3 as ComfyUI users have it: checkpoints/{name}.safetensors (transformer, VAE, CLIP-L, CLIP-G and
    T5 in one file) and the split files diffusion_models/{name}-mmdit (original layout),
    diffusion_models/{name}-transformer (diffusers layout), text_encoders/{name}-clip-l, -clip-g, -t5xxl and
    vae/{name}-vae, each with its sidecar."""
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    transformer, vae, clip_l, clip_g, t5 = build(seed)
    root = Path(models_dir)
    mmdit = transformer_to_mmdit(transformer.state_dict(), TINY_MMDIT["num_layers"])
    ldm_vae = vae_to_ldm(vae.state_dict(), TINY_VAE16)
    l_state, g_state = _with_text_model(clip_l.state_dict()), _with_text_model(clip_g.state_dict())
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    single = {**{"model.diffusion_model." + k: v for k, v in mmdit.items()}, **ldm_vae,
              **{"text_encoders.clip_l.transformer." + k: v for k, v in l_state.items()},
              **{"text_encoders.clip_g.transformer." + k: v for k, v in g_state.items()},
              **{"text_encoders.t5xxl.transformer." + k: v for k, v in t5_state.items()}}
    return {
        "single": save(single, root / "checkpoints" / f"{name}.safetensors", SIDECAR),
        "mmdit": save(mmdit, root / "diffusion_models" / f"{name}-mmdit.safetensors", SIDECAR),
        "transformer": save(transformer.state_dict(), root / "diffusion_models" / f"{name}-transformer.safetensors",
                            SIDECAR),
        "clip_l": save(l_state, root / "text_encoders" / f"{name}-clip-l.safetensors", {**SIDECAR, "text_encoder": "clip_l"}),
        "clip_g": save(g_state, root / "text_encoders" / f"{name}-clip-g.safetensors", {**SIDECAR, "text_encoder": "clip_g"}),
        "t5xxl": save(t5_state, root / "text_encoders" / f"{name}-t5xxl.safetensors", {**SIDECAR, "text_encoder": "t5xxl"}),
        "vae": save({k[len("first_stage_model."):]: v for k, v in ldm_vae.items()}, root / "vae" / f"{name}-vae.safetensors",
                    {"vae": TINY_VAE16}),
    }


COMFYUI_NAMES = {  # the file names ComfyUI users' SD3 graphs carry (tests/comfyui/sd3*.json)
    "single": "checkpoints/sd3.5_medium_incl_clips_t5xxl", "mmdit": "diffusion_models/sd3.5_medium",
    "clip_l": "text_encoders/clip_l", "clip_g": "text_encoders/clip_g", "t5xxl": "text_encoders/t5xxl_fp16",
    "vae": "vae/sd3_vae",
}


def write_as_comfyui(models_dir: Path, seed: int = 0) -> None:
    """The toy SD3's files under the names of tests/comfyui/sd3*.json (sidecars beside them)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = write(Path(tmp), seed)
        for part, name in COMFYUI_NAMES.items():
            target = Path(models_dir) / f"{name}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[part], target)
            shutil.copyfile(files[part].with_suffix(".json"), target.with_suffix(".json"))
