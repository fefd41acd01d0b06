"""Nodes for Flux.1 models, ComfyUI's names and fields (comfy_extras/nodes_flux.py, nodes_edit_model.py):
CLIPTextEncodeFlux, FluxGuidance, ReferenceLatent (Kontext's reference image) and FluxKontextImageScale.

The guidance value rides on each conditioning entry (`extra["guidance"]`) and reaches the model's guidance
embedding (flowrun.diffusion.added_inputs); reference latents ride on `extra["reference_latents"]` and
become extra image tokens (flowrun.diffusion.flux_network).
"""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Conditioning, Latent

# the sizes Flux.1 Kontext was trained at (about one megapixel each), (width, height); BFL's list, as ComfyUI's
KONTEXT_RESOLUTIONS = [(672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
                       (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
                       (1456, 720), (1504, 688), (1568, 672)]


class TextFluxParams(NodeParams):  # ComfyUI's field order
    clip_l: str = Field("", description="Prompt for CLIP-L (its pooled vector).")
    t5xxl: str = Field("", description="Prompt for T5-XXL (the tokens the model attends to).")
    guidance: float = Field(3.5, ge=0.0, le=100.0, description="Distilled guidance strength (Flux dev); a model "
                            "without guidance embedding (schnell) refuses it.")


@node("CLIPTextEncodeFlux", outputs={"conditioning": ports.CONDITIONING}, category="advanced/conditioning/flux")
def clip_text_encode_flux(p: TextFluxParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt for each of Flux's text encoders, with the guidance strength the model is told."""
    from flowrun.diffusion import text_flux
    from flowrun.diffusion.configs import FLUX

    if clip.family != FLUX:
        raise NodeError(f"input 'clip': this node is for Flux's CLIP-L and T5-XXL (DualCLIPLoader type flux); this "
                        f"CLIP is {clip.family}")
    try:
        return text_flux.encode(clip, p.clip_l, p.t5xxl, p.guidance)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


class GuidanceParams(NodeParams):
    guidance: float = Field(3.5, ge=0.0, le=100.0, description="Distilled guidance strength (Flux dev).")


@node("FluxGuidance", outputs={"conditioning": ports.CONDITIONING}, category="advanced/conditioning/flux")
def flux_guidance(p: GuidanceParams, ctx, *, conditioning: Conditioning) -> Conditioning:
    """The conditioning with every entry's guidance strength set (what Flux dev's guidance embedding reads)."""
    return Conditioning(conditioning).map(lambda e: e.replace(extra={**e.extra, "guidance": p.guidance}))


@node("ReferenceLatent", outputs={"conditioning": ports.CONDITIONING}, category="advanced/conditioning/edit_models")
def reference_latent(p: NoParams, ctx, *, conditioning: Conditioning, latent: Latent | None = None) -> Conditioning:
    """Add `latent` to every entry's reference latents (Flux Kontext edits the image they hold; chain the node
    for more than one); without a latent, the conditioning unchanged."""
    from flowrun.diffusion.flux_inputs import REFERENCE_LATENTS

    if latent is None:
        return Conditioning(conditioning)
    samples = latent.samples

    def add(entry):
        refs = list(entry.extra.get(REFERENCE_LATENTS) or ()) + [samples]
        return entry.replace(extra={**entry.extra, REFERENCE_LATENTS: refs})

    return Conditioning(conditioning).map(add)


@node("FluxKontextImageScale", outputs={"image": ports.IMAGE}, category="advanced/conditioning/flux")
def flux_kontext_image_scale(p: NoParams, ctx, *, image: ports.Image) -> ports.Image:
    """The image resized (Lanczos, centre crop) to the Kontext training size nearest its aspect ratio."""
    import torch

    from flowrun.diffusion.resize import upscale

    aspect = image.shape[2] / image.shape[1]
    _, width, height = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
    pixels = torch.as_tensor(image).movedim(-1, 1)
    return upscale(pixels, width, height, "lanczos", "center").movedim(1, -1).numpy()
