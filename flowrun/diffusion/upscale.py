"""Image-to-image upscale models (ESRGAN, RealESRGAN, SwinIR, ...) loaded and run by spandrel, as ComfyUI's
UpscaleModelLoader and ImageUpscaleWithModel do.

spandrel tells the architecture from the state dict's keys and builds the network (we would otherwise
rewrite dozens of architectures); flowrun reads the file itself (pickles only with allow_pickle) and runs
the model in overlapping tiles (diffusion/tiling.py), so memory is bounded by the tile, not the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from flowrun.diffusion import offline  # noqa: F401  (before spandrel, which imports torchvision)
from flowrun.diffusion.detect import CheckpointError
from flowrun.files import PICKLE_SUFFIXES

TILE = 512  # ComfyUI's first tile edge; halved while the device runs out of memory
OVERLAP = 32
MIN_TILE = 128  # ComfyUI gives up below this
# SwinIR checkpoints saved from a DataParallel module: ComfyUI strips the prefix before spandrel looks
_DATA_PARALLEL_PROBE = "module.layers.0.residual_group.blocks.0.norm1.weight"


def read_weights(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The state dict in `path` as spandrel expects it (unwrapped from `params_ema`, `state_dict`, ...)."""
    from spandrel import canonicalize_state_dict

    from flowrun.diffusion.checkpoint import read_state_dict
    from flowrun.diffusion.pickles import read_pickle

    if path.suffix in PICKLE_SUFFIXES:
        # not read_state_dict: RealESRGAN's .pth files nest the weights under "params_ema"
        data = read_pickle(path, allow_pickle, "upscale models")
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}")
    else:
        data = read_state_dict(path, allow_pickle)
    state = canonicalize_state_dict(data)
    if _DATA_PARALLEL_PROBE in state:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load(path: Path, device: str, allow_pickle: bool):
    """The spandrel ImageModelDescriptor of the model in `path`, on `device`, in eval mode. Raises
    CheckpointError for a file spandrel does not know or a model that is not image-to-image."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = read_weights(path, allow_pickle)
    try:
        model = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError as exc:  # spandrel raises it without a message
        raise CheckpointError(f"{path}: spandrel does not know this model's architecture"
                              + (f" ({exc})" if str(exc) else "")) from None
    except (KeyError, RuntimeError, ValueError, AssertionError) as exc:  # a known architecture, wrong weights
        raise CheckpointError(f"{path}: spandrel cannot load it: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, ImageModelDescriptor):
        raise CheckpointError(f"{path}: {model.architecture.name} is not an image-to-image model (spandrel: "
                              f"{type(model).__name__}, purpose {model.purpose}); an upscale model takes one image "
                              f"and gives one image")
    return model.to(device).eval()


def upscale(model: Callable[[torch.Tensor], torch.Tensor], scale: float, images: np.ndarray,
            progress: Callable[[int, int], None] | None = None, tile: int = TILE,
            overlap: int = OVERLAP) -> np.ndarray:
    """`images` (float32 [b, h, w, c] in 0..1) through `model` ([1, c, h, w] -> [1, c', h*scale, w*scale]) in
    tiles of `tile` overlapping by `overlap`, feathered as ComfyUI's tiled_scale; on running out of device
    memory the tile is halved, down to 128 as ComfyUI does. Returns float32 [b, h*scale, w*scale, c'] in 0..1."""
    from flowrun.diffusion.tiling import tiled_scale

    device = _device_of(model)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, 1)
    out_channels = int(getattr(model, "output_channels", pixels.shape[1]))
    while True:
        total, done = len(images) * _tile_count(pixels.shape[2:], tile, overlap), [0]

        def run(piece: torch.Tensor) -> torch.Tensor:
            result = model(piece.to(device))
            done[0] += 1
            if progress is not None:
                progress(done[0], total)
            return result

        try:
            with torch.inference_mode():
                out = tiled_scale(pixels, run, (tile, tile), overlap, scale, out_channels)
            break
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < MIN_TILE:
                raise
    return torch.clamp(out, 0.0, 1.0).movedim(1, -1).numpy()


def _tile_count(size: torch.Size, tile: int, overlap: int) -> int:
    """How many tiles tiled_scale runs over one image of `size` (ComfyUI's get_tiled_scale_steps)."""
    if all(s <= tile for s in size):
        return 1
    count = 1
    for s in size:
        count *= len(range(0, s - overlap, tile - overlap)) if s > tile else 1
    return count


def _device_of(model) -> torch.device:
    """Where the model's weights are (a spandrel descriptor knows; a plain function runs on the CPU)."""
    device = getattr(model, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")
