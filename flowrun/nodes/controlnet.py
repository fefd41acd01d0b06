"""ControlNet and T2I-Adapter nodes, ComfyUI's names and fields: ControlNetLoader, DiffControlNetLoader,
ControlNetApply, ControlNetApplyAdvanced, and Canny (the edge map a canny ControlNet takes as its hint).

A CONTROL_NET value is a loaded ControlNet or T2I-Adapter (flowrun.diffusion.controlnet_files.ControlFile);
applying it puts a copy with the hint image, strength and percent range on each conditioning entry
(CondEntry.control), chained to the control the entry already carries (flowrun.diffusion.control).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.model_files import load_one, loading
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import Conditioning


class ControlNetLoaderParams(NodeParams):
    control_net_name: str = Field(min_length=1, description="ControlNet or T2I-Adapter file by name, under "
                                  "controlnet/ or t2i_adapter/ (original or diffusers layout; SD1, SD2, SDXL).")

    _inside = stays_inside("control_net_name", LEAVES_MODELS)


@node("ControlNetLoader", outputs={"control_net": ports.CONTROL_NET}, category="loaders",
      files={"control_net_name": "controlnet"})
def controlnet_loader(p: ControlNetLoaderParams, ctx) -> ports.ControlNet:
    """Load a ControlNet or T2I-Adapter; its kind, layout and model family come from the weights."""
    from flowrun.diffusion.controlnet_files import load_control_file

    device = ctx.device.device
    return load_one(ctx, "control_net_name", "controlnet", p.control_net_name,
                    lambda path, fp: load_control_file(path, fp, allow_pickle=ctx.files.allow_pickle, device=device),
                    device)


@node("DiffControlNetLoader", outputs={"control_net": ports.CONTROL_NET}, category="loaders",
      files={"control_net_name": "controlnet"})
def diff_controlnet_loader(p: ControlNetLoaderParams, ctx, *, model: ports.Model) -> ports.ControlNet:
    """Load a diff ControlNet: its weights are differences, added to the model's UNet weights (a plain
    ControlNet file loads as it is)."""
    from flowrun.diffusion.controlnet_files import load_control_file

    fingerprint, device = ctx.files.fingerprint("control_net_name"), ctx.device.device
    path = loading(lambda: ctx.files.path("controlnet", p.control_net_name))
    control, = loading(lambda: ctx.models.load(("controlnet", fingerprint, device, model.fingerprint), lambda: (
        load_control_file(path, fingerprint, allow_pickle=ctx.files.allow_pickle, device=device,
                          unet=model.unet),)))
    return control


class ApplyParams(NodeParams):
    strength: float = Field(1.0, ge=0.0, le=10.0, description="Scales the control's residuals (0: not applied).")


@node("ControlNetApply", outputs={"conditioning": ports.CONDITIONING}, category="conditioning/controlnet")
def controlnet_apply(p: ApplyParams, ctx, *, conditioning: Conditioning, control_net: ports.ControlNet,
                     image: ports.Image) -> Conditioning:
    """Apply a ControlNet with a hint image to every entry, over the whole schedule (ComfyUI's older node;
    as there, the sampler also gives the control to the negative prompt's entries that have none)."""
    from flowrun.diffusion.control import APPLY_TO_UNCOND, AppliedControl

    if p.strength == 0:
        return conditioning
    return Conditioning(conditioning).map(lambda e: e.replace(
        control=AppliedControl(control_net, image, p.strength, (0.0, 1.0), e.control),
        extra={**e.extra, APPLY_TO_UNCOND: True}))


class ApplyAdvancedParams(NodeParams):
    strength: float = Field(1.0, ge=0.0, le=10.0, description="Scales the control's residuals (0: not applied).")
    start_percent: float = Field(0.0, ge=0.0, le=1.0, description="Part of the schedule where the control starts.")
    end_percent: float = Field(1.0, ge=0.0, le=1.0, description="Part of the schedule where it ends.")


@node("ControlNetApplyAdvanced", outputs={"positive": ports.CONDITIONING, "negative": ports.CONDITIONING},
      category="conditioning/controlnet")
def controlnet_apply_advanced(p: ApplyAdvancedParams, ctx, *, positive: Conditioning, negative: Conditioning,
                              control_net: ports.ControlNet, image: ports.Image,
                              vae: ports.Vae | None = None) -> dict:
    """Apply a ControlNet with a hint image to the positive and the negative prompt from start_percent to
    end_percent. Entries that carried the same control before share one copy, so positive and negative
    still run in one batched pass. `vae` is for ControlNets that take a latent hint, which the SD families'
    do not: it is accepted, as in ComfyUI, and unused."""
    from flowrun.diffusion.control import APPLY_TO_UNCOND, AppliedControl

    if p.strength == 0:
        return {"positive": positive, "negative": negative}
    copies: dict = {}

    def applied(entry):
        previous = entry.control
        if id(previous) not in copies:
            copies[id(previous)] = AppliedControl(control_net, image, p.strength, (p.start_percent, p.end_percent),
                                                  previous)
        return entry.replace(control=copies[id(previous)], extra={**entry.extra, APPLY_TO_UNCOND: False})

    return {"positive": Conditioning(positive).map(applied), "negative": Conditioning(negative).map(applied)}


class CannyParams(NodeParams):
    low_threshold: float = Field(0.4, ge=0.01, le=0.99, description="Weak edges: gradient magnitude above this.")
    high_threshold: float = Field(0.8, ge=0.01, le=0.99, description="Strong edges: above this; weak edges are "
                                  "kept where they touch strong ones.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.low_threshold > self.high_threshold:
            raise ValueError(f"low_threshold ({self.low_threshold}) must not be above high_threshold "
                             f"({self.high_threshold})")
        return self


@node("Canny", outputs={"image": ports.IMAGE}, category="image/preprocessors")
def canny_node(p: CannyParams, ctx, *, image: ports.Image) -> ports.Image:
    """The image's Canny edges, white on black (ComfyUI's Canny, which is kornia's canny)."""
    import numpy as np
    import torch

    from flowrun.diffusion.canny import canny

    edges = canny(torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, 1), p.low_threshold, p.high_threshold)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1).numpy().astype(np.float32)
