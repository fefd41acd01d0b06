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
from pathlib import Path
from typing import Any, Sequence

import torch

from flowrun.diffusion.export import CONFIG_KEY
from flowrun.files import SAFE_SUFFIXES

NOISE_LEVELS = 1000
MERGE_AUGMENTATION = 0.05
SEED_OFFSET = -10
VISUAL_PREFIX = "embedder.model.visual."  # where SD 2.1 unCLIP checkpoints keep their image encoder


def load_bundle(path: Path, fingerprint: str, *, device: str = "cpu", allow_pickle: bool = False) -> tuple:
    """MODEL, CLIP, VAE and CLIP_VISION of an SD 2.1 unCLIP checkpoint: a single file with the image
    encoder under `embedder.model.visual.` (OpenAI / OpenCLIP layout), or a diffusers folder with
    image_encoder/. The CLIP vision model stays on the CPU, as the text encoders do."""
    from flowrun.diffusion import checkpoint, clip_vision
    from flowrun.diffusion.determinism import configure
    from flowrun.diffusion.detect import CheckpointError, read_header

    configure()
    if path.is_dir():
        model, clip, vae = checkpoint.load_bundle(path, fingerprint, device=device)
        vision = _diffusers_image_encoder(path / "image_encoder", fingerprint)
    else:
        side = checkpoint.sidecar(path)
        embedded = None
        if side is None and path.suffix in SAFE_SUFFIXES:
            embedded = read_header(path).metadata.get(CONFIG_KEY)
        state = checkpoint.read_state_dict(path, allow_pickle)
        config, unet, texts, vae_module = checkpoint.load_state(state, path, side, embedded)
        model, clip, vae = checkpoint.bundle(config, unet, texts, vae_module, fingerprint, device)
        visual = clip_vision.from_openai_layout(state, VISUAL_PREFIX)
        if not visual:
            raise CheckpointError(f"{path}: no CLIP vision model in this checkpoint (expected weights under "
                                  f"'{VISUAL_PREFIX}*', as SD 2.1 unCLIP checkpoints have); for a plain checkpoint use "
                                  "CheckpointLoaderSimple, and CLIPVisionLoader for a CLIP vision model")
        vision = clip_vision.build(visual, fingerprint, str(path), config.extra.get("clip_vision"))
    if not is_unclip(model):
        raise CheckpointError(f"{path}: its UNet takes no image embedding (no class-label input): not an unCLIP model")
    if vision.embed_dim != embed_dim(model):
        raise CheckpointError(f"{path}: its CLIP vision model embeds to width {vision.embed_dim}, its UNet takes "
                              f"{embed_dim(model)}")
    return model, clip, vae, vision


def _diffusers_image_encoder(folder: Path, fingerprint: str):
    from transformers import CLIPVisionModelWithProjection

    from flowrun.diffusion.clip_vision import ClipVision
    from flowrun.diffusion.detect import CheckpointError

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder.parent}: an unCLIP pipeline folder needs a readable image_encoder/ ({exc})") from None
    return ClipVision(model.float().eval().requires_grad_(False), fingerprint)


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
