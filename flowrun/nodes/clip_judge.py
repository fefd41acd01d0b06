"""CLIP as a judge (flowrun's own nodes; ComfyUI has no core counterpart): CLIPScoreModelLoader loads a
full transformers CLIPModel from clip_score/ (or clip_vision/), CLIPScore scores images against a text
(Hessel et al. 2021), CLIPImageSimilarity compares images with reference images.

Both judges are scoring nodes: their `score` (the mean over the batch) is recorded per cell in run.json,
shown on a sweep's contact sheet and sorted by `flowrun rank`; `scores` gives every image's value as a
JSON list, in batch order.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.registry import NodeParams, node

DEFAULT_CLIP = "flowrun-tiny-clip"  # bundled: trained on flowrun-tiny's shapes (tools/train_tiny_clip.py)


class ClipScoreModelParams(NodeParams):
    clip_name: str = Field(DEFAULT_CLIP, min_length=1, description="A full CLIPModel by name, under clip_score/ or "
                           "clip_vision/: a transformers folder (config.json + weights) or a .safetensors file "
                           "with a sidecar <name>.json config.")

    _inside = stays_inside("clip_name", LEAVES_MODELS)


@node("CLIPScoreModelLoader", outputs={"clip_score_model": ports.CLIP_SCORE_MODEL}, category="loaders",
      files={"clip_name": "clip_score"})
def clip_score_model_loader(p: ClipScoreModelParams, ctx) -> ports.ClipScoreModel:
    """Load a CLIP model (text and vision towers) to judge images with."""
    from flowrun.diffusion.clip_judge import load
    from flowrun.diffusion.detect import CheckpointError

    fingerprint, device = ctx.files.fingerprint("clip_name"), ctx.device.device
    try:
        path = ctx.files.path("clip_score", p.clip_name)
        judge, = ctx.models.load(("clip_score", fingerprint, device),
                                 lambda: (load(path, fingerprint, device=device),))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None
    return judge


def _scored(values: list[float]) -> dict:
    return {"score": sum(values) / len(values), "scores": json.dumps([round(v, 6) for v in values])}


class ClipScoreParams(NodeParams):
    text: str = Field(min_length=1, description="What the images should show (the prompt, usually).")


@node("CLIPScore", outputs={"score": ports.FLOAT, "scores": ports.STRING}, category="image/judge",
      metric="clip_score")
def clip_score(p: ClipScoreParams, ctx, *, clip_score_model: ports.ClipScoreModel, images: ports.Image) -> dict:
    """CLIPScore of each image against `text`: 2.5 * max(cos(image embedding, text embedding), 0) on the
    model's projected embeddings (Hessel et al. 2021); `score` is the batch's mean."""
    return _scored(clip_score_model.clip_score(images, p.text))


class ClipSimilarityParams(NodeParams):
    mode: Literal["mean", "pairwise"] = Field("mean", description="mean: each image against the mean embedding "
                                              "of all references; pairwise: image i against reference i (equal "
                                              "batches).")


@node("CLIPImageSimilarity", outputs={"score": ports.FLOAT, "scores": ports.STRING}, category="image/judge",
      metric="clip_similarity")
def clip_image_similarity(p: ClipSimilarityParams, ctx, *, clip_score_model: ports.ClipScoreModel,
                          images: ports.Image, reference: ports.Image) -> dict:
    """Cosine similarity of each image's CLIP embedding to the reference images' (their renormalised mean,
    or one by one); `score` is the batch's mean."""
    if p.mode == "pairwise" and len(reference) != len(images):
        raise NodeError(f"mode 'pairwise' needs as many reference images as images: 'images' has a batch of "
                        f"{len(images)}, 'reference' has {len(reference)}; give equal batches or mode 'mean'")
    return _scored(clip_score_model.similarity(images, reference, p.mode))
