"""What the small training scripts for flowrun-tiny (its LoRA, its embedding) share: their command-line
options, deterministic torch settings, and one noised batch of procedural images for the diffusion loss.
Each script keeps its own parameters and saving."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = ROOT / "flowrun" / "models" / "checkpoints" / "flowrun-tiny.safetensors"


def arguments(doc: str, out: Path, steps: int) -> argparse.ArgumentParser:
    """--ckpt, --out, --steps, --batch, --seed; a script adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def deterministic(seed: int) -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


class NoisedBatches:
    """Latents of rendered images, noised at random timesteps of the model's schedule (the DDPM forward
    process), for the noise-prediction loss."""

    def __init__(self, model, vae, generator: torch.Generator):
        self.vae, self.generator = vae, generator
        self.alphas_cumprod = 1.0 / (1.0 + model.sampling.sigmas.double() ** 2)
        self.scale = model.latent_scale

    def __call__(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noised latents, timesteps, the noise) for uint8 images [batch, h, w, 3]."""
        with torch.no_grad():
            x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
            z0 = self.vae.model.encode(x).latent_dist.mean * self.scale
        t = torch.randint(0, 1000, (len(images),), generator=self.generator)
        noise = torch.randn(z0.shape, generator=self.generator)
        ac = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return ac.sqrt() * z0 + (1 - ac).sqrt() * noise, t, noise


def diffusion_loss(unet, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
    zt, t, noise = batch
    return torch.nn.functional.mse_loss(unet(zt, t, encoder_hidden_states=context).sample, noise)
