"""Toy Z-Image-shaped models with seeded random weights: the single-stream DiT (two layers, one refiner layer
each), a Qwen3-type decoder (Qwen3's full vocabulary, toy widths) and Flux's 16-channel VAE shape, written as the
split files ComfyUI users have (transformer in the original layout and in diffusers', text encoder under
`model.`), with their configs in sidecars. Also the original key layout (diffusers only converts from it)."""

from __future__ import annotations

from pathlib import Path

from flowrun.diffusion import offline  # noqa: F401  (before diffusers and transformers)
from tiny_sd3 import TINY_VAE16, save

TINY_Z = {
    "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 64, "n_layers": 2,
    "n_refiner_layers": 1, "n_heads": 4, "n_kv_heads": 4, "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 40,
    "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [4, 6, 6], "axes_lens": [512, 32, 32],
}
TINY_QWEN3 = {
    "vocab_size": 151936, "hidden_size": 40, "num_hidden_layers": 3, "head_dim": 16, "num_attention_heads": 2,
    "num_key_value_heads": 1, "intermediate_size": 64, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 40960, "tie_word_embeddings": True,
}
SIDECAR = {"family": "zimage", "unet": TINY_Z, "vae": TINY_VAE16, "text_encoders": [TINY_QWEN3]}

# diffusers name -> original name (convert_z_image_transformer_checkpoint_to_diffusers read backwards)
_RENAME = [("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
           (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
           (".attention.norm_q.", ".attention.q_norm.")]


def transformer_to_original(state: dict, prefix: str = "") -> dict:
    """diffusers ZImageTransformer2DModel weights -> the original keys, q / k / v fused (works on meta tensors)."""
    import torch

    out = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace("to_q", n)] for n in ("to_q", "to_k", "to_v")]
            out[prefix + key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts, dim=0)
            continue
        for new, old in _RENAME:
            key = key.replace(new, old)
        out[prefix + key] = value
    return out


def build(seed: int = 0):
    """(transformer, vae, qwen3) with weights drawn from `seed`."""
    import torch
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from tiny_sd3 import build_vae

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(**TINY_Z).eval()
    with torch.no_grad():  # zero-initialised parts: make them do visible work, and let the prompt show
        for name, p in transformer.named_parameters():
            if p.abs().max() == 0 and p.ndim > 0 and "norm" not in name:
                p.normal_(0.0, 0.05)
        transformer.all_final_layer["2-1"].linear.weight.mul_(4.0)
        transformer.cap_embedder[1].weight.mul_(8.0)
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    vae = build_vae(seed + 1)
    torch.manual_seed(seed + 2)
    qwen3 = Qwen3Model(Qwen3Config(**TINY_QWEN3)).eval()
    return transformer, vae, qwen3


def write(models_dir: Path, seed: int = 0, name: str = "tiny-zimage") -> dict[str, Path]:
    """diffusion_models/{name} (original layout), diffusion_models/{name}-diffusers, text_encoders/{name}-qwen3
    (transformers' names under `model.`) and vae/{name}-vae (original layout), each with its sidecar."""
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    transformer, vae, qwen3 = build(seed)
    root = Path(models_dir)
    ldm_vae = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae.state_dict(), TINY_VAE16).items()}
    return {
        "original": save(transformer_to_original(transformer.state_dict()),
                         root / "diffusion_models" / f"{name}.safetensors", SIDECAR),
        "diffusers": save(transformer.state_dict(), root / "diffusion_models" / f"{name}-diffusers.safetensors",
                          SIDECAR),
        "qwen3": save({"model." + k: v for k, v in qwen3.state_dict().items()},
                      root / "text_encoders" / f"{name}-qwen3.safetensors", SIDECAR),
        "vae": save(ldm_vae, root / "vae" / f"{name}-vae.safetensors", {"vae": TINY_VAE16}),
    }


COMFYUI_NAMES = {  # the file names ComfyUI users' Z-Image graphs carry (tests/comfyui/zimage*.json)
    "original": "diffusion_models/z_image_turbo_bf16", "qwen3": "text_encoders/qwen_3_4b", "vae": "vae/ae",
}


def write_as_comfyui(models_dir: Path, seed: int = 0) -> None:
    """The toy Z-Image's files under the names of tests/comfyui/zimage*.json (sidecars beside them)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = write(Path(tmp), seed)
        for part, name in COMFYUI_NAMES.items():
            target = Path(models_dir) / f"{name}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[part], target)
            shutil.copyfile(files[part].with_suffix(".json"), target.with_suffix(".json"))
