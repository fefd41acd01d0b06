"""Toy models for image prompts, with seeded weights: a CLIP vision model (clip_vision/), an SD2-shaped unCLIP
checkpoint holding its own CLIP vision tower in OpenAI's layout (checkpoints/), and a T2I style adapter
(style_models/)."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_model import TINY_CLIP, TINY_UNET, TINY_VAE

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8, "projection_dim": 24, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
# what the weights' shapes cannot tell about a toy width: its sidecar says it
VISION_SIDECAR = {"clip_vision": {"num_attention_heads": 2, "hidden_act": "quick_gelu"}}
UNCLIP_TEXT = {**TINY_CLIP, "hidden_act": "gelu"}
UNCLIP_UNET = {**TINY_UNET, "use_linear_projection": True, "attention_head_dim": [2, 4],
               "class_embed_type": "projection", "projection_class_embeddings_input_dim": 2 * VISION["projection_dim"]}
STYLE = {"width": VISION["hidden_size"], "context_dim": TINY_CLIP["hidden_size"], "layers": 2, "tokens": 4}


def vision_model(seed: int = 3):
    """The toy CLIPVisionModelWithProjection."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).eval()
    with torch.no_grad():  # transformers' init is tiny (std 0.02): make the tower's output depend on the image
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim >= 2:
                p.normal_(0.0, 0.2)
    return model


def to_openai_layout(state: dict, prefix: str) -> dict:
    """transformers' CLIP vision keys as OpenAI's `visual.*` ones under `prefix` (q, k, v fused again)."""
    import torch

    out, v = {}, "vision_model."
    plain = {"embeddings.class_embedding": "class_embedding", "embeddings.patch_embedding.weight": "conv1.weight",
             "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm.weight": "ln_pre.weight",
             "pre_layrnorm.bias": "ln_pre.bias", "post_layernorm.weight": "ln_post.weight",
             "post_layernorm.bias": "ln_post.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for key, value in state.items():
        if key == "visual_projection.weight":
            out[prefix + "proj"] = value.t().contiguous()
        elif key[len(v):] in plain:
            out[prefix + plain[key[len(v):]]] = value
        elif ".encoder.layers." in key:
            block, rest = key.split(".encoder.layers.")[1].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                if module.endswith("q_proj"):
                    layer = f"{v}encoder.layers.{block}.self_attn."
                    out[f"{prefix}transformer.resblocks.{block}.attn.in_proj_{kind}"] = torch.cat(
                        [state[f"{layer}{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")])
            else:
                out[f"{prefix}transformer.resblocks.{block}.{parts[module]}.{kind}"] = value
    return out


def write_clip_vision(models_dir: Path, name: str = "tiny-vision", seed: int = 3) -> Path:
    """clip_vision/{name}.safetensors in transformers' layout (as ComfyUI's clip_vision files), and its sidecar."""
    from safetensors.torch import save_file

    path = Path(models_dir) / "clip_vision" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vision_model(seed).state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(VISION_SIDECAR))
    return path


def write_unclip(models_dir: Path, name: str = "tiny-unclip", seed: int = 4) -> Path:
    """checkpoints/{name}.safetensors: an SD2-shaped unCLIP checkpoint (v-prediction, OpenCLIP text tower, a
    UNet with a class-label projection) with the toy CLIP vision tower under embedder.model.visual."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import _text_model
    from flowrun.diffusion.ldm_layout import open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNCLIP_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text = _text_model(UNCLIP_TEXT, projection=False)
    text.to_empty(device="cpu")
    for p in text.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():  # let the class labels move the output visibly
        unet.class_embedding.linear_2.weight.mul_(20.0)
        unet.conv_out.weight.mul_(4.0)
    state = {**unet_to_ldm(unet.state_dict(), UNCLIP_UNET), **vae_to_ldm(vae.state_dict(), TINY_VAE),
             **open_clip_to_ldm(text.state_dict(), "cond_stage_model.model."),
             **to_openai_layout(vision_model(seed + 1).state_dict(), "embedder.model.visual.")}
    path = Path(models_dir) / "checkpoints" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({
        "family": "sd2", "prediction_type": "v_prediction", "unet": UNCLIP_UNET, "vae": TINY_VAE,
        "text_encoders": [UNCLIP_TEXT], **VISION_SIDECAR}))
    return path


def style_adapter(seed: int = 5):
    """The toy T2I style adapter (flowrun's module, seeded weights)."""
    import torch

    from flowrun.diffusion.style_model import StyleAdapter

    torch.manual_seed(seed)
    model = StyleAdapter(STYLE["width"], STYLE["context_dim"], STYLE["layers"], STYLE["tokens"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def write_style(models_dir: Path, name: str = "tiny-style", seed: int = 5) -> Path:
    """style_models/{name}.safetensors with the toy style adapter's weights (the files' key names)."""
    from safetensors.torch import save_file

    path = Path(models_dir) / "style_models" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in style_adapter(seed).state_dict().items()}, str(path))
    return path


def write_all(models_dir: Path) -> Path:
    """Every toy model of this family under models_dir."""
    write_clip_vision(models_dir)
    write_unclip(models_dir)
    write_style(models_dir)
    return Path(models_dir)


def gated_unet(base_state: dict | None, seed: int = 6, config: dict | None = None):
    """diffusers' GLIGEN UNet (attention_type "gated") shaped as the tiny SD1 model, with its weights and
    seeded fusers and position net, each fuser with the heads flowrun gives it (the weights cannot tell)."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import GatedSelfAttentionDense

    from flowrun.diffusion.gligen import _heads

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(config or TINY_UNET), attention_type="gated").eval()
    if base_state is not None:
        unet.load_state_dict(base_state, strict=False)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".fuser." in name or name.startswith("position_net."):
                p.normal_(0.0, 0.2) if p.ndim else p.fill_(0.8)  # alpha gates open (tanh(0) would shut them)
        for block in [m for m in unet.modules() if hasattr(m, "fuser")]:
            dim, key_dim = block.fuser.linear.out_features, block.fuser.linear.in_features
            fuser = GatedSelfAttentionDense(dim, key_dim, *_heads(dim, key_dim))
            fuser.load_state_dict(block.fuser.state_dict())
            block.fuser = fuser.eval()
    return unet


def write_gligen(models_dir: Path, gated, name: str = "tiny-gligen", config: dict | None = None) -> Path:
    """gligen/{name}.safetensors: a gated UNet's fusers (LDM block names) and position net."""
    from safetensors.torch import save_file

    from flowrun.diffusion.ldm_layout import unet_to_ldm

    ldm = unet_to_ldm({k: v for k, v in gated.state_dict().items() if not k.startswith("position_net.")},
                      config or TINY_UNET)
    state = {k.replace("model.diffusion_model.", ""): v for k, v in ldm.items() if ".fuser." in k}
    state.update({k: v for k, v in gated.state_dict().items() if k.startswith("position_net.")})
    path = Path(models_dir) / "gligen" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_bundled_gligen(models_dir: Path, name: str = "flowrun-tiny-gligen") -> Path:
    """gligen/{name}.safetensors shaped for the bundled flowrun-tiny model (its configs from its sidecar)."""
    from flowrun.files import BUNDLED

    config = json.loads((BUNDLED / "checkpoints" / "flowrun-tiny.json").read_text())["unet"]
    return write_gligen(models_dir, gated_unet(None, config=config), name, config)
