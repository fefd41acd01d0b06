"""GLIGEN, ComfyUI's names and fields: GLIGENLoader and GLIGENTextBoxApply (text boxes that place things;
flowrun/diffusion/gligen.py)."""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, MAX_RESOLUTION, stays_inside
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import Conditioning


class GligenParams(NodeParams):
    gligen_name: str = Field(min_length=1, description="GLIGEN model by name, under gligen/.")

    _inside = stays_inside("gligen_name", LEAVES_MODELS)


@node("GLIGENLoader", outputs={"gligen": ports.GLIGEN}, category="loaders", files={"gligen_name": "gligen"})
def gligen_loader(p: GligenParams, ctx) -> ports.Gligen:
    """Load a GLIGEN model (gated self-attention layers for an SD1 UNet and their position net)."""
    from flowrun.diffusion import gligen
    from flowrun.diffusion.detect import CheckpointError

    fingerprint = ctx.files.fingerprint("gligen_name")
    try:
        path = ctx.files.path("gligen", p.gligen_name)
        model, = ctx.models.load(("gligen", fingerprint), lambda: (
            gligen.load(path, fingerprint, allow_pickle=ctx.files.allow_pickle),))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None
    return model


class TextBoxParams(NodeParams):  # ComfyUI's field order
    text: str = Field("", description="What the box holds.")
    width: int = Field(64, ge=8, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(64, ge=8, le=MAX_RESOLUTION, multiple_of=8)
    x: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)


@node("GLIGENTextBoxApply", outputs={"conditioning": ports.CONDITIONING}, category="conditioning/gligen")
def gligen_text_box_apply(p: TextBoxParams, ctx, *, conditioning_to: Conditioning, clip: ports.Clip,
                          gligen_textbox_model: ports.Gligen) -> Conditioning:
    """Ask for `text` inside a box (pixels) of the image: adds the box to every entry's GLIGEN boxes."""
    from flowrun.diffusion.gligen import pooled_unprojected
    from flowrun.diffusion.gligen_patch import Boxes

    pooled = pooled_unprojected(clip, p.text)
    if pooled.shape[-1] != gligen_textbox_model.key_dim:
        raise NodeError(f"input 'clip': its pooled text embedding has width {pooled.shape[-1]}, this GLIGEN model "
                        f"reads {gligen_textbox_model.key_dim} (GLIGEN goes with SD1's text encoder)")
    box = (pooled, p.height // 8, p.width // 8, p.y // 8, p.x // 8)

    def add(entry):
        boxes = entry.gligen if entry.gligen is not None else Boxes(gligen_textbox_model, ())
        return entry.replace(gligen=Boxes(gligen_textbox_model, boxes.boxes + (box,)))

    return Conditioning(conditioning_to).map(add)
