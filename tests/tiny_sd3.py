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
