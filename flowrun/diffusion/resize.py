"""Resizing NCHW tensors as ComfyUI's `common_upscale` does: for latents and for images alike."""

from __future__ import annotations

import numpy as np
import torch


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Optional centre crop to the new aspect ("center"), then resize to width x height with `method`
    (torch's interpolate modes, or "lanczos" through Pillow on 0..1 images)."""
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "lanczos":
        from PIL import Image

        out = []
        for img in samples:
            pil = Image.fromarray(np.clip(255.0 * img.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8))
            pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
            out.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0).movedim(-1, 0))
        return torch.stack(out)
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=method)
