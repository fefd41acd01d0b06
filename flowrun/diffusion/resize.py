"""Resizing NCHW tensors as ComfyUI's `common_upscale` does: for latents and for images alike."""

from __future__ import annotations

import numpy as np
import torch


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Optional centre crop to the new aspect ("center"), then resize to width x height with `method`
    (torch's interpolate modes, "bislerp", or "lanczos" through Pillow on 0..1 images)."""
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        from PIL import Image

        out = []
        for img in samples:
            pil = Image.fromarray(np.clip(255.0 * img.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8))
            pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
            out.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0).movedim(-1, 0))
        return torch.stack(out)
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=method)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resize that slerps between neighbours instead of lerping: each pixel's channel vector is
    treated as a direction with a length, as ComfyUI's `bislerp` does, first along width, then height."""
    dtype = samples.dtype
    out = _slerp_axis(samples.float(), width, dim=3)
    return _slerp_axis(out, height, dim=2).to(dtype)


def _neighbours(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` positions: the left and right source index and the weight of the right one,
    from torch's bilinear sampling (half-pixel centres, clamped at the edges)."""
    left_pos = torch.nn.functional.interpolate(torch.arange(old, dtype=torch.float32).view(1, 1, 1, -1),
                                               size=(1, new), mode="bilinear").flatten()
    right = torch.arange(old, dtype=torch.float32) + 1
    right[-1] -= 1
    right_pos = torch.nn.functional.interpolate(right.view(1, 1, 1, -1), size=(1, new), mode="bilinear").flatten()
    return left_pos.long(), right_pos.long(), left_pos - left_pos.floor()


def _slerp_axis(samples: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    left, right, ratio = _neighbours(samples.shape[dim], size)
    a, b = samples.index_select(dim, left), samples.index_select(dim, right)
    shape = [1, 1, 1, 1]
    shape[dim] = size
    return _slerp(a, b, ratio.view(shape))


def _slerp(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors (dim 1) from a to b by r, with the lengths lerped;
    a zero vector has no direction (taken as zero); nearly equal directions keep a, opposite ones lerp."""
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua = torch.where(na == 0, torch.zeros_like(a), a / na)
    ub = torch.where(nb == 0, torch.zeros_like(b), b / nb)
    dot = (ua * ub).sum(dim=1, keepdim=True)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    out = (torch.sin((1.0 - r) * omega) / so * ua + torch.sin(r * omega) / so * ub) * (na * (1.0 - r) + nb * r)
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1.0 - r) + b * r, out)
