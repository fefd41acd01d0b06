"""unCLIP: an image embedding as the UNet's class labels (SD 2.1 unCLIP-L/H), as ComfyUI's unclip_adm.

Each image prompt (unCLIPConditioning: image embeddings, strength, noise_augmentation) is noise-augmented
like diffusers' StableUnCLIPImg2ImgPipeline.noise_image_embeddings: normalised by the model's embedding
statistics (zeros and ones: SD 2.1 unCLIP ships none, and ComfyUI reads none), noised to level
round(999 * noise_augmentation) on a squaredcos_cap_v2 schedule of 1000 steps, un-normalised, then
followed by the level's sinusoidal embedding (cos first), and the whole vector scaled by the strength. Several
image prompts (or images in one prompt) are summed, and their embedding half noised again at level
round(999 * 0.05) (ComfyUI's unclip_noise_augment_merge). An unCLIP model without an image prompt gets zeros.

The noise: ComfyUI draws it on the CPU from the sampler's seed - 10 (torch.manual_seed); so does flowrun,
for the merge too, where ComfyUI draws from the global generator (not repeatable there).
diffusers' UNet2DConditionModel takes the vector as `class_labels` (class_embed_type "projection": the
LDM UNet's label_emb).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch


NOISE_LEVELS = 1000
MERGE_AUGMENTATION = 0.05
SEED_OFFSET = -10


def is_unclip(model: Any) -> bool:
    """Whether the model's UNet takes an image embedding (and its noise level) as class labels."""
    return getattr(model.unet.config, "class_embed_type", None) == "projection" and model.family == "sd2"


def embed_dim(model: Any) -> int:
    """The width of the image embedding an unCLIP model takes (768 unCLIP-L, 1024 unCLIP-H)."""
    return int(model.unet.config.projection_class_embeddings_input_dim) // 2


@functools.lru_cache(maxsize=1)
def _scheduler():
    # the image-embedding noising schedule of the unCLIP pipelines (diffusers' image_noising_scheduler)
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=NOISE_LEVELS, beta_schedule="squaredcos_cap_v2")


def noise_level(augmentation: float) -> int:
    """ComfyUI's noise level of a noise_augmentation in 0..1."""
    return round((NOISE_LEVELS - 1) * augmentation)


def augment(embedding: torch.Tensor, level: int, seed: int, mean: torch.Tensor | None = None,
            std: torch.Tensor | None = None) -> torch.Tensor:
    """The embedding [1, d] noised to `level` (the noise drawn from `seed`), then its level's embedding:
    [1, 2d]. `mean`/`std`: the model's embedding statistics (none: 0 and 1)."""
    from diffusers.models.embeddings import get_timestep_embedding

    embedding = embedding.float().reshape(1, -1)
    dim = embedding.shape[1]
    mean = torch.zeros(1, dim) if mean is None else mean.float().reshape(1, dim)
    std = torch.ones(1, dim) if std is None else std.float().reshape(1, dim)
    noise = torch.randn((1, dim), dtype=torch.float32, generator=torch.Generator("cpu").manual_seed(seed))
    levels = torch.tensor([level])
    noised = _scheduler().add_noise((embedding - mean) / std, noise, levels) * std + mean
    level_embedding = get_timestep_embedding(levels, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat([noised, level_embedding.float()], dim=1)


def adm(prompts: Sequence[tuple], dim: int, seed: int) -> torch.Tensor:
    """The class-label vector [1, 2 * dim] of one entry's image prompts ((image_embeds [n, d], strength,
    noise_augmentation) each) for a render from `seed`; zeros without prompts."""
    if not prompts:
        return torch.zeros(1, 2 * dim)
    parts = []
    for embeds, strength, augmentation in prompts:
        embeds = torch.as_tensor(embeds).float()
        if embeds.shape[-1] != dim:
            raise ValueError(f"an image prompt (unCLIPConditioning) has an embedding of width {embeds.shape[-1]}, "
                             f"this unCLIP model takes {dim}: use the CLIP vision model of its checkpoint "
                             "(unCLIPCheckpointLoader's clip_vision)")
        for row in embeds.reshape(-1, dim):
            parts.append(augment(row, noise_level(augmentation), seed + SEED_OFFSET) * float(strength))
    if len(parts) == 1:
        return parts[0]
    summed = torch.stack(parts).sum(0)
    return augment(summed[:, :dim], noise_level(MERGE_AUGMENTATION), seed + SEED_OFFSET)


def class_labels(model: Any, cond: Any, rows: int, seeds: Sequence[int]) -> torch.Tensor | None:
    """The class labels an entry gives `model` for a batch of `rows` latent rows per seed ([1, d], or one
    vector per row when several seeds are sampled together); None for a model without class labels.
    An image prompt on a model that takes none is an error."""
    prompts = tuple(getattr(cond, "unclip", ()) or ())
    if not is_unclip(model):
        if prompts:
            raise ValueError("a conditioning carries an image prompt (unCLIPConditioning), but this model "
                             f"({model.family}) takes no image embedding: load an unCLIP checkpoint "
                             "(unCLIPCheckpointLoader), or drop the unCLIPConditioning node")
        return None
    dim = embed_dim(model)
    vectors = [adm(prompts, dim, seed) for seed in seeds]
    if len(vectors) == 1 or all(torch.equal(vectors[0], v) for v in vectors[1:]):
        return vectors[0]
    return torch.cat([v.expand(rows, -1) for v in vectors])
