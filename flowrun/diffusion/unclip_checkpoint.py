"""Loading SD 2.1 unCLIP checkpoints: the MODEL, CLIP and VAE of the checkpoint and the CLIP vision model
it carries (unCLIPCheckpointLoader). What the UNet does with image embeddings is flowrun/diffusion/unclip.py.
"""

from __future__ import annotations

from pathlib import Path

from flowrun.diffusion.export import CONFIG_KEY
from flowrun.diffusion.unclip import embed_dim, is_unclip
from flowrun.files import SAFE_SUFFIXES

VISUAL_PREFIX = "embedder.model.visual."  # where SD 2.1 unCLIP checkpoints keep their image encoder


def load_bundle(path: Path, fingerprint: str, *, device: str = "cpu", allow_pickle: bool = False) -> tuple:
    """MODEL, CLIP, VAE and CLIP_VISION of an SD 2.1 unCLIP checkpoint: a single file with the image
    encoder under `embedder.model.visual.` (OpenAI / OpenCLIP layout). The CLIP vision model stays on the
    CPU, as the text encoders do."""
    from flowrun.diffusion import checkpoint, clip_vision
    from flowrun.diffusion.determinism import configure
    from flowrun.diffusion.detect import CheckpointError, read_header

    configure()
    if path.is_dir():
        raise CheckpointError(f"{path}: unCLIP models are read from single checkpoint files, not diffusers folders")
    side = checkpoint.sidecar(path)
    embedded = None
    if side is None and path.suffix in SAFE_SUFFIXES:
        embedded = read_header(path).metadata.get(CONFIG_KEY)
    state = checkpoint.read_state_dict(path, allow_pickle)
    visual = clip_vision.from_openai_layout(state, VISUAL_PREFIX)
    if not visual:
        raise CheckpointError(f"{path}: no CLIP vision model in this checkpoint (expected weights under "
                              f"'{VISUAL_PREFIX}*', as SD 2.1 unCLIP checkpoints have); for a plain checkpoint use "
                              "CheckpointLoaderSimple, and CLIPVisionLoader for a CLIP vision model")
    config, unet, texts, vae_module = checkpoint.load_state(state, path, side, embedded)
    model, clip, vae = checkpoint.bundle(config, unet, texts, vae_module, fingerprint, device)
    vision = clip_vision.build(visual, fingerprint, str(path), config.extra.get("clip_vision"))
    if not is_unclip(model):
        raise CheckpointError(f"{path}: its UNet takes no image embedding (no class-label input): not an unCLIP model")
    if vision.embed_dim != embed_dim(model):
        raise CheckpointError(f"{path}: its CLIP vision model embeds to width {vision.embed_dim}, its UNet takes "
                              f"{embed_dim(model)}")
    return model, clip, vae, vision
