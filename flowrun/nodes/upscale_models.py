"""Upscale models, ComfyUI's names and fields: UpscaleModelLoader (a file from upscale_models/, its
architecture told by spandrel) and ImageUpscaleWithModel (the image through it, in tiles of 512 pixels
overlapping by 32, halved while the device runs out of memory).

spandrel is an optional dependency (pip install 'flowrun[upscale]'): a workflow that loads an upscale model
without it is refused when it is validated, before anything runs.
"""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.registry import NodeParams, NoParams, node

class UpscaleModelLoaderParams(NodeParams):
    model_name: str = Field(min_length=1, description="Upscale model file by name, under upscale_models/ "
                            "(ESRGAN, RealESRGAN, SwinIR, HAT, ... as spandrel knows them).")

    _inside = stays_inside("model_name", LEAVES_MODELS)


@node("UpscaleModelLoader", outputs={"upscale_model": ports.UPSCALE_MODEL}, category="loaders",
      files={"model_name": "upscale_models"}, extras={"upscale": "spandrel"})
def upscale_model_loader(p: UpscaleModelLoaderParams, ctx) -> ports.UpscaleModel:
    """Load an image-to-image upscale model; spandrel tells its architecture from the weights."""
    from flowrun.diffusion import upscale
    from flowrun.diffusion.detect import CheckpointError

    device = ctx.device.device
    try:
        fingerprint = ctx.files.fingerprint("model_name")
        path = ctx.files.path("upscale_models", p.model_name)
        model, = ctx.models.load(("upscale_model", fingerprint, device), lambda: (
            upscale.load(path, device, ctx.files.allow_pickle),))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(f"model_name '{p.model_name}': {exc}") from None
    return model


@node("ImageUpscaleWithModel", outputs={"image": ports.IMAGE}, category="image/upscaling")
def image_upscale_with_model(p: NoParams, ctx, *, upscale_model: ports.UpscaleModel,
                             image: ports.Image) -> ports.Image:
    """Upscale `image` by the model's factor, in overlapping tiles so memory is bounded by the tile."""
    from flowrun.diffusion import upscale

    if image.shape[-1] != upscale_model.input_channels:
        raise NodeError(f"input 'image' has {image.shape[-1]} channels, but this {upscale_model.architecture.name} "
                        f"model takes {upscale_model.input_channels}")
    return upscale.upscale(upscale_model, upscale_model.scale, image, progress=ctx.progress)
