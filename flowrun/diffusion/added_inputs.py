"""What a model family takes beside the prompt's token embeddings, per conditioning entry (the `added` inputs
of a forward pass): SDXL's pooled text embedding and size/crop time ids, SD3's pooled vector. A family that
takes more (a pooled vector, a guidance strength) adds its function to BY_FAMILY; the values are [1, n] tensors,
which guidance batches along the first dimension and DiffusionModel hands to its network as `added_cond_kwargs`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flowrun.diffusion.configs import AURAFLOW, FLUX, QWEN_IMAGE, SD3, SDXL, SDXL_REFINER, TIME_IDS, ZIMAGE


def _sdxl(model, cond, positive: bool, h: int, w: int) -> dict[str, torch.Tensor]:
    """The pooled CLIP-G embedding (zeros without one) and time ids: (h, w, crop_h, crop_w, target_h,
    target_w), the refiner's (h, w, crop_h, crop_w, aesthetic score), in pixels, from the entry's `extra`."""
    config = model.unet.config
    pooled = cond.pooled_output
    if pooled is None:
        pooled = torch.zeros(1, config.projection_class_embeddings_input_dim
                             - TIME_IDS[model.family] * config.addition_time_embed_dim)
    extra = cond.extra
    height, width = extra.get("height", h * 8), extra.get("width", w * 8)
    if model.family == SDXL_REFINER:  # ComfyUI's default scores: 6 for positive prompts, 2.5 for negative
        last = [extra.get("aesthetic_score", 6.0 if positive else 2.5)]
    else:
        last = [extra.get("target_height", height), extra.get("target_width", width)]
    time_ids = torch.tensor([[height, width, extra.get("crop_h", 0), extra.get("crop_w", 0), *last]],
                            dtype=torch.float32)
    return {"text_embeds": pooled.float(), "time_ids": time_ids}


FLUX_GUIDANCE = 3.5  # ComfyUI's Flux model takes this distilled guidance when no FluxGuidance set one


def _flux(model, cond, positive: bool, h: int, w: int) -> dict[str, torch.Tensor]:
    """Flux's pooled CLIP-L vector (zeros without one) and, for a guidance-distilled model (dev), the
    entry's guidance (`extra["guidance"]`, set by FluxGuidance or CLIPTextEncodeFlux; 3.5 otherwise). A
    guidance set on a model without a guidance embedding (schnell) is an error: ComfyUI ignores it
    silently, which hides a node that does nothing."""
    config = model.unet.config
    pooled = cond.pooled_output
    if pooled is None:
        pooled = torch.zeros(1, config.pooled_projection_dim)
    out = {"pooled_projections": pooled.float().reshape(1, -1)}
    guidance = cond.extra.get("guidance")
    if config.guidance_embeds:
        out["guidance"] = torch.tensor([[FLUX_GUIDANCE if guidance is None else float(guidance)]])
    elif guidance is not None:
        raise ValueError(f"input '{'positive' if positive else 'negative'}': the conditioning sets a Flux guidance "
                         f"of {float(guidance):g} (FluxGuidance or CLIPTextEncodeFlux, field 'guidance'), but this "
                         "model has no guidance embedding (a Flux schnell-type model): leave the guidance out")
    return out


def _sd3(model, cond, positive: bool, h: int, w: int) -> dict[str, torch.Tensor]:
    """SD3's pooled text vector (CLIP-L's and CLIP-G's side by side; zeros without one, as ComfyUI's SD3)."""
    pooled = cond.pooled_output
    if pooled is None:
        pooled = torch.zeros(1, int(model.unet.config.pooled_projection_dim))
    return {"pooled_projections": pooled.float()}


def _auraflow(model, cond, positive: bool, h: int, w: int) -> None:
    """Nothing beside the context; which must be Pile-T5's width (a ValueError names a CLIP of another family
    before sampling starts)."""
    width = int(model.unet.config.joint_attention_dim)
    if cond.embedding.shape[-1] != width:
        raise ValueError(f"the AuraFlow model reads a {width}-wide Pile-T5 text context; this conditioning's is "
                         f"{cond.embedding.shape[-1]} wide (from a CLIP of another family?)")
    return None


def _qwen_image(model, cond, positive: bool, h: int, w: int) -> None:
    """Nothing beside the context; which must be Qwen2.5-VL's width (a ValueError names a CLIP of another family
    before sampling starts)."""
    width = int(model.unet.config.joint_attention_dim)
    if cond.embedding.shape[-1] != width:
        raise ValueError(f"the Qwen-Image model reads a {width}-wide Qwen2.5-VL text context; this conditioning's "
                         f"is {cond.embedding.shape[-1]} wide (from a CLIP of another family?)")
    return None


def _zimage(model, cond, positive: bool, h: int, w: int) -> dict[str, torch.Tensor]:
    """How many tokens the prompt has (the network reads each row's own tokens: guidance may repeat a shorter
    context to batch it with a longer one); the context must be Qwen3's width (a ValueError names a CLIP of
    another family before sampling starts)."""
    width = int(model.unet.config.cap_feat_dim)
    if cond.embedding.shape[-1] != width:
        raise ValueError(f"the Z-Image model reads a {width}-wide Qwen3 text context; this conditioning's is "
                         f"{cond.embedding.shape[-1]} wide (from a CLIP of another family?)")
    n = cond.embedding.shape[1]  # as (n // 128, n % 128): both exact in the half-precision dtype it is cast to
    return {"cap_tokens": torch.tensor([[float(n // 128), float(n % 128)]])}


# family -> f(model, conditioning entry, positive, latent height, latent width) -> added inputs
BY_FAMILY: dict[str, Callable[..., dict[str, torch.Tensor] | None]] = {SDXL: _sdxl, SDXL_REFINER: _sdxl, SD3: _sd3,
                                                                     FLUX: _flux, AURAFLOW: _auraflow,
                                                                     QWEN_IMAGE: _qwen_image, ZIMAGE: _zimage}


def added_inputs(model: Any, cond: Any, positive: bool, h: int, w: int) -> dict[str, torch.Tensor] | None:
    """The entry's added inputs for this model, or None when its family takes only the token embeddings."""
    fn = BY_FAMILY.get(model.family)
    return fn(model, cond, positive, h, w) if fn is not None else None
