"""Model merging, ComfyUI's names and fields (comfy_extras/nodes_model_merging.py): ModelMergeSimple,
ModelMergeBlocks, and CheckpointSave, which writes a model with its patches (LoRAs, merges) baked in.

A merge returns a new model value carrying patches: the models it was given stay as they were, and the
weights are mixed only while the merged model runs (flowrun.diffusion.merge).
"""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import stays_inside
from flowrun.nodes.registry import NodeParams, node


def _ratio(description: str):
    return Field(1.0, ge=0.0, le=1.0, description=description)


class MergeSimpleParams(NodeParams):
    ratio: float = _ratio("How much of model1 each weight keeps; model2 gives the rest (1: model1 alone).")


def _merged(model1, model2, ratio_of):
    from flowrun.diffusion.merge import MergeError, merge

    try:
        return merge(model1, model2, ratio_of)
    except MergeError as exc:
        raise NodeError(str(exc)) from None


@node("ModelMergeSimple", outputs={"model": ports.MODEL}, category="advanced/model_merging")
def model_merge_simple(p: MergeSimpleParams, ctx, *, model1: ports.Model, model2: ports.Model) -> ports.Model:
    """model1 * ratio + model2 * (1 - ratio), weight by weight over the UNet; model1's sampling,
    guidance patches and LoRAs come first."""
    return _merged(model1, model2, lambda name: p.ratio)


class MergeBlocksParams(NodeParams):
    input: float = _ratio("model1's share in the input blocks (and the time embedding).")
    middle: float = _ratio("model1's share in the middle block.")
    out: float = _ratio("model1's share in the output blocks and the final layers.")


@node("ModelMergeBlocks", outputs={"model": ports.MODEL}, category="advanced/model_merging")
def model_merge_blocks(p: MergeBlocksParams, ctx, *, model1: ports.Model, model2: ports.Model) -> ports.Model:
    """ModelMergeSimple with a ratio per part of the UNet: input, middle and output blocks."""
    from flowrun.diffusion.merge import block_ratio

    return _merged(model1, model2, block_ratio({"input": p.input, "middle": p.middle, "out": p.out}))


class CheckpointSaveParams(NodeParams):
    filename_prefix: str = Field("checkpoints/flowrun", min_length=1, max_length=200,
                                 description="File name without extension, below the run's output folder.")

    _inside = stays_inside("filename_prefix", "the prefix would not stay in the output folder")


@node("CheckpointSave", output=True, category="advanced/model_merging")
def checkpoint_save(p: CheckpointSaveParams, ctx, *, model: ports.Model, clip: ports.Clip, vae: ports.Vae) -> None:
    """Write model, clip and vae as one .safetensors checkpoint in the original layout, their patches
    (LoRAs, merges) applied, with the model's configs and the workflow in its metadata; it loads back with
    CheckpointLoaderSimple."""
    from flowrun.diffusion.checkpoint_save import saved_checkpoint

    if model.attention_patches:
        ctx.warn("CheckpointSave: the model's hypernetworks are not weights of the UNet and are not saved")
    stem = ctx.outputs.stem(p.filename_prefix)
    extra = {"modelspec.title": stem.rsplit("/", 1)[-1], **ctx.outputs.provenance_text()}
    try:
        data = saved_checkpoint(model, clip, vae, extra)
    except ValueError as exc:
        raise NodeError(str(exc)) from None
    ctx.outputs.save(f"{stem}.safetensors", data)
