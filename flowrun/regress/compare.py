"""Compare a render with its golden: identical pixels pass at once; otherwise max absolute difference,
PSNR and SSIM (scikit-image) decide between pass, warn and fail. (Semantic checks with CLIP, which a case
may ask for besides or instead of these, are in flowrun.regress.semantic.)"""

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
    pixels: bool = True  # false: only the semantic checks grade (flowrun.regress.semantic)
    min_clip_score: float | None = None
    clip_text: str | None = None
    min_similarity_to_golden: float | None = None
    clip_model: str = "flowrun-tiny-clip"


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


def heatmap(new: np.ndarray, golden: np.ndarray, display: int = 256) -> np.ndarray:
    """Per-pixel difference of two images of one size, amplified for review: black where equal; any
    difference is coloured on a log scale, a 1-level difference dark red, through red and orange to
    yellow at 255 levels. An image wider or taller than `display` pixels is shown scaled down, so each
    difference is spread over the block of pixels one displayed pixel covers: a single differing pixel
    stays visible."""
    d = np.abs(new.astype(np.int16) - golden.astype(np.int16)).max(axis=-1)
    block = -(-max(d.shape) // display)
    if block > 1:
        from scipy.ndimage import maximum_filter

        d = maximum_filter(d, size=block)
    t = np.log1p(d.astype(np.float32)) / np.log1p(255.0)  # 1 level: 0.125, 255 levels: 1
    # the red floor (0.55) keeps a 1-level difference far from black; green rises only for large ones
    red = np.where(d > 0, 0.55 + 0.45 * np.clip(2 * t, 0, 1), 0)
    green = np.clip(2 * t - 1, 0, 1)
    return (np.stack([red, green, np.zeros_like(t)], -1) * 255).round().astype(np.uint8)
