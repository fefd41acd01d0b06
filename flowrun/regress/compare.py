"""Compare a render with its golden: identical pixels pass at once; otherwise max absolute difference,
PSNR and SSIM (scikit-image) decide between pass, warn and fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Thresholds:
    pass_max_diff: int = 2  # every pixel within this many 8-bit levels: pass (numerical noise)
    warn_min_psnr: float = 30.0  # otherwise: warn while PSNR and SSIM stay at or above these, else fail
    warn_min_ssim: float = 0.95


@dataclass(frozen=True)
class Comparison:
    grade: str
    identical: bool
    max_diff: int
    psnr: float  # dB; inf when identical
    ssim: float
    reason: str

    def as_json(self) -> dict:
        d = asdict(self)
        d["psnr"] = None if self.psnr == float("inf") else round(self.psnr, 3)
        d["ssim"] = round(self.ssim, 5)
        return d


def load_rgb(path: Path) -> np.ndarray:
    """The image's pixels as RGB; an animated PNG's frames one above the other, so that every frame is
    compared (and a different frame count shows as a different size)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(im)]
    return frames[0] if len(frames) == 1 else np.concatenate(frames, axis=0)


def compare(new: np.ndarray, golden: np.ndarray, t: Thresholds) -> Comparison:
    if new.shape != golden.shape:
        return Comparison(FAIL, False, 255, 0.0, 0.0,
                          f"size differs: {new.shape[1]}x{new.shape[0]}, golden {golden.shape[1]}x{golden.shape[0]}")
    if np.array_equal(new, golden):
        return Comparison(PASS, True, 0, float("inf"), 1.0, "identical")
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    diff = int(np.abs(new.astype(np.int16) - golden.astype(np.int16)).max())
    psnr = float(peak_signal_noise_ratio(golden, new, data_range=255))
    win = min(7, min(new.shape[:2]) // 2 * 2 - 1)
    ssim = float(structural_similarity(golden, new, channel_axis=-1, data_range=255, win_size=max(3, win)))
    if diff <= t.pass_max_diff:
        return Comparison(PASS, False, diff, psnr, ssim, f"max difference {diff} <= {t.pass_max_diff}")
    if psnr >= t.warn_min_psnr and ssim >= t.warn_min_ssim:
        return Comparison(WARN, False, diff, psnr, ssim,
                          f"max difference {diff}, PSNR {psnr:.1f} dB >= {t.warn_min_psnr}, SSIM {ssim:.3f} >= {t.warn_min_ssim}")
    return Comparison(FAIL, False, diff, psnr, ssim,
                      f"max difference {diff}, PSNR {psnr:.1f} dB (warn at >= {t.warn_min_psnr}), "
                      f"SSIM {ssim:.3f} (warn at >= {t.warn_min_ssim})")


def heatmap(new: np.ndarray, golden: np.ndarray) -> np.ndarray:
    """Per-pixel difference as an image: black where equal, through red to yellow where it differs most."""
    if new.shape != golden.shape:
        return np.zeros_like(new)
    d = np.abs(new.astype(np.float32) - golden.astype(np.float32)).max(axis=-1)
    scale = max(float(d.max()), 1.0)
    v = d / scale
    return (np.stack([np.clip(v * 2, 0, 1), np.clip(v * 2 - 1, 0, 1), np.zeros_like(v)], -1) * 255).astype(np.uint8)
