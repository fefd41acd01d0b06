"""Inpainting, outpainting and edit conditioning, ComfyUI's names and fields: VAEEncodeForInpaint
(nodes.py), InpaintModelConditioning (nodes.py), InstructPixToPixConditioning (comfy_extras/nodes_ip2p.py)
and DifferentialDiffusion (comfy_extras/nodes_differential_diffusion.py).

A mask whose size differs from the image is stretched to it, as ComfyUI does; a mask batch that cannot be
paired with the images is an error. The pixel work is in flowrun.diffusion.inpaint; the channels an
inpainting or instruct-pix2pix model takes are built at sampling time (flowrun.diffusion.concat).
"""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Conditioning, Latent


class EncodeForInpaintParams(NodeParams):
    grow_mask_by: int = Field(6, ge=0, le=64, description="Pixels the repainted region reaches beyond the mask.")


def _prepared(pixels, mask, vae):
    """(cropped pixels, their mask [b, 1, h, w]) after ComfyUI's resize and crop; errors as NodeError."""
    from flowrun.diffusion import inpaint

    try:
        resized = inpaint.mask_to_image(mask, pixels.shape[1], pixels.shape[2])
        inpaint.check_mask_batch(resized, pixels.shape[0])
        return inpaint.crop_to_cell(pixels, resized, vae.downscale)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


def _encode(vae, pixels):
    from flowrun.diffusion.vae import encode

    try:
        return encode(vae, pixels.numpy() if hasattr(pixels, "numpy") else pixels)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


@node("VAEEncodeForInpaint", outputs={"latent": ports.LATENT}, category="latent/inpaint")
def vae_encode_for_inpaint(p: EncodeForInpaintParams, ctx, *, pixels: ports.Image, vae: ports.Vae,
                           mask: ports.Mask) -> Latent:
    """Encode the image with the masked region grey, and limit sampling to the mask grown by
    `grow_mask_by` pixels (for ordinary checkpoints; sample at denoise 1)."""
    from flowrun.diffusion import inpaint

    cropped, m = _prepared(pixels, mask, vae)
    latent = _encode(vae, inpaint.grey_masked(cropped, m))
    return Latent(latent, noise_mask=inpaint.grow(m, p.grow_mask_by).round())


class InpaintConditioningParams(NodeParams):
    noise_mask: bool = Field(True, description="Also limit sampling to the mask (off: the model repaints "
                                               "the whole latent, seeing the masked image as its input).")


@node("InpaintModelConditioning", outputs={"positive": ports.CONDITIONING, "negative": ports.CONDITIONING,
                                           "latent": ports.LATENT}, category="conditioning/inpaint")
def inpaint_model_conditioning(p: InpaintConditioningParams, ctx, *, positive: Conditioning, negative: Conditioning,
                               vae: ports.Vae, pixels: ports.Image, mask: ports.Mask) -> dict:
    """For inpainting models: both conditionings carry the masked image's latent and the mask (the model's
    extra input channels); the latent is the whole image's, with the mask as noise mask if `noise_mask`."""
    from flowrun.diffusion import inpaint

    cropped, m = _prepared(pixels, mask, vae)
    concat = _encode(vae, inpaint.grey_masked(cropped, m))
    latent = Latent(_encode(vae, pixels), noise_mask=m if p.noise_mask else None)

    def carry(cond: Conditioning) -> Conditioning:
        return Conditioning(cond).map(lambda e: e.replace(concat_latent=concat, concat_mask=m))

    return {"positive": carry(positive), "negative": carry(negative), "latent": latent}


@node("InstructPixToPixConditioning", outputs={"positive": ports.CONDITIONING, "negative": ports.CONDITIONING,
                                               "latent": ports.LATENT}, category="conditioning/instructpix2pix")
def instruct_pix_to_pix_conditioning(p: NoParams, ctx, *, positive: Conditioning, negative: Conditioning,
                                     vae: ports.Vae, pixels: ports.Image) -> dict:
    """For instruct-pix2pix models: both conditionings carry the source image's latent (the model's extra
    input channels; ordinary cfg over them); the latent to sample is empty, of the image's size."""
    import torch

    concat = _encode(vae, pixels)

    def carry(cond: Conditioning) -> Conditioning:
        return Conditioning(cond).map(lambda e: e.replace(concat_latent=concat))

    return {"positive": carry(positive), "negative": carry(negative), "latent": Latent(torch.zeros_like(concat))}


class DifferentialDiffusionParams(NodeParams):
    strength: float = Field(1.0, ge=0.0, le=1.0, description="1: the thresholded mask alone; below, blended "
                                                             "with the soft mask.")


@node("DifferentialDiffusion", outputs={"model": ports.MODEL}, category="_for_testing")
def differential_diffusion(p: DifferentialDiffusionParams, ctx, *, model: ports.Model) -> ports.Model:
    """A soft noise mask read as per-pixel strength: at each step only where the mask reaches the
    step's remaining share of the schedule is repainted, so grey areas change less than white ones."""
    from flowrun.diffusion.differential import DifferentialMask

    return model.with_denoise_mask_function(DifferentialMask(p.strength))
