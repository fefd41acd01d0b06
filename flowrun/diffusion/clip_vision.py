"""CLIP vision models (image prompts), loaded offline on transformers' CLIPVisionModelWithProjection, and
ComfyUI's way of encoding an image with them.

Files come in two layouts: transformers' keys (`vision_model.*`, `visual_projection.weight`: what ComfyUI's
clip_vision/ folder holds) and OpenAI / OpenCLIP's (`visual.transformer.resblocks.*`, also inside SD 2.1
unCLIP checkpoints under `embedder.model.visual.`). The configuration is read off the weights' shapes
(width, patch size, image size, depth, MLP width, projection width); what shapes cannot tell (heads,
activation) comes from the known models: ViT-L/14 (OpenAI), ViT-H/14 and ViT-bigG/14 (OpenCLIP), as ComfyUI
knows them. A model of another size names its config in a sidecar `<name>.json` ({"clip_vision": {...}}).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import siglip
from flowrun.diffusion.detect import CheckpointError

# CLIP's image normalisation (OpenAI's numbers, which ComfyUI and every CLIP image processor use)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# width -> (heads, activation, name): what the weights' shapes cannot tell, for the models ComfyUI knows
KNOWN = {
    1024: (16, "quick_gelu", "ViT-L/14"),
    1280: (16, "gelu", "ViT-H/14"),
    1664: (16, "gelu", "ViT-bigG/14"),
}
VISION = "vision_model."
_RESBLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "attn.out_proj": "self_attn.out_proj"}


@dataclass
class ClipVision:
    """A CLIP_VISION value: the vision tower with its projection, and the image size it was trained on."""

    model: Any  # transformers.CLIPVisionModelWithProjection, or SiglipVisionModel (flowrun.diffusion.siglip)
    fingerprint: str
    mean_std: tuple = (MEAN, STD)  # the image normalisation it was trained with

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)


def from_openai_layout(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI / OpenCLIP `visual.*` keys (under `prefix`) as transformers' CLIPVisionModelWithProjection keys;
    the fused attention input projection is split into q, k and v. (transformers converts only whole
    OpenAI checkpoints, not the vision tower inside another model's file, hence this mapping.)"""
    out: dict[str, torch.Tensor] = {}
    renames = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
               "positional_embedding": "embeddings.position_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
               "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
               "ln_post.bias": "post_layernorm.bias"}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in renames:
            out[VISION + renames[name]] = value
        elif name == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            block, part = name[len("transformer.resblocks."):].split(".", 1)
            layer = f"{VISION}encoder.layers.{block}."
            if part.startswith("attn.in_proj_"):
                kind = part[len("attn.in_proj_"):]
                for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{layer}self_attn.{proj}.{kind}"] = chunk.contiguous()
            else:
                module, kind = part.rsplit(".", 1)
                if module not in _RESBLOCK_PARTS:
                    raise CheckpointError(f"unexpected CLIP vision weight {key!r}")
                out[f"{layer}{_RESBLOCK_PARTS[module]}.{kind}"] = value
    return out


def config_from_shapes(shapes: dict[str, tuple[int, ...]], file: str, given: dict | None = None) -> dict[str, Any]:
    """The CLIPVisionConfig fields of transformers-layout weights; `given` (a sidecar's) fills and overrides."""
    patch = shapes.get(VISION + "embeddings.patch_embedding.weight")
    positions = shapes.get(VISION + "embeddings.position_embedding.weight")
    projection = shapes.get("visual_projection.weight")
    fc1 = shapes.get(VISION + "encoder.layers.0.mlp.fc1.weight")
    if patch is None or positions is None or fc1 is None:
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise CheckpointError(f"{file}: not a CLIP vision model: expected '{VISION}embeddings.*' and "
                              f"'{VISION}encoder.layers.*' weights (or OpenAI's 'visual.*'), found keys like {sample}")
    if projection is None:
        raise CheckpointError(f"{file}: a CLIP vision tower without its projection ('visual_projection.weight'); "
                              "image prompts need the projected embedding")
    width, side = patch[0], patch[2]
    grid = math.isqrt(positions[0] - 1)
    layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith(VISION + "encoder.layers."))
    config = {"hidden_size": width, "patch_size": side, "image_size": grid * side, "num_hidden_layers": layers,
              "intermediate_size": fc1[0], "projection_dim": projection[0], "layer_norm_eps": 1e-5}
    given = dict(given or {})
    if width in KNOWN:
        config["num_attention_heads"], config["hidden_act"], _ = KNOWN[width]
    elif "num_attention_heads" not in given:
        known = ", ".join(f"{n} (width {w})" for w, (_, _, n) in KNOWN.items())
        raise CheckpointError(f"{file}: a CLIP vision model of width {width}, which is none flowrun knows ({known}); "
                              f"give its config in {Path(file).with_suffix('.json')} as "
                              '{"clip_vision": {"num_attention_heads": ..., "hidden_act": ...}}')
    config.update(given)
    return config


def build(state: dict[str, torch.Tensor], fingerprint: str, file: str, given: dict | None = None,
          device: str = "cpu") -> ClipVision:
    """A ClipVision from transformers-layout weights, its config read off their shapes."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from flowrun.diffusion.checkpoint import _instantiate

    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, file, given)
    with torch.device("meta"):
        probe = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    wrong = [k for k, v in state.items() if k in expected and expected[k] != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{file}: CLIP vision weight {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                              f"the configuration read off the file expects {expected[wrong[0]]}")
    state = {k: v for k, v in state.items() if k in expected}
    model = _instantiate(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**config)), state,
                         "CLIP vision", Path(file))
    return ClipVision(model.to(device), fingerprint)


def _sidecar_config(path: Path) -> dict | None:
    from flowrun.diffusion.checkpoint import sidecar

    side = sidecar(path)
    if side is None:
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{side}: unreadable sidecar config: {exc}") from None
    return data.get("clip_vision") if isinstance(data, dict) else None


def load(path: Path, fingerprint: str, *, device: str = "cpu", allow_pickle: bool = False) -> ClipVision:
    """A CLIP vision model file (transformers' or OpenAI's layout), as ComfyUI's CLIPVisionLoader reads it."""
    from flowrun.diffusion.checkpoint import read_state_dict
    from flowrun.diffusion.determinism import configure

    configure()
    state = read_state_dict(path, allow_pickle)
    for prefix in ("visual.", ""):
        if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in state:
            state = from_openai_layout(state, prefix)
            break
    if siglip.is_siglip(siglip.with_prefix(state)):  # Flux Redux's image encoder
        model = siglip.build(siglip.with_prefix(state), str(path), _sidecar_config(path))
        return ClipVision(model.to(device), fingerprint, siglip.MEAN_STD)
    return build(state, fingerprint, str(path), _sidecar_config(path), device)


def preprocess(image: torch.Tensor, size: int, crop: bool = True, mean_std: tuple = (MEAN, STD)) -> torch.Tensor:
    """ComfyUI's clip_preprocess: IMAGE [b, h, w, c] in 0..1 -> normalised pixels [b, 3, size, size]. The
    shortest side is resized to `size` (bicubic, antialiased) and the centre cropped, or (crop off) the
    whole image squeezed to size x size; then quantised to 8 bits and normalised with CLIP's mean and std
    (or `mean_std`: SigLIP's).
    (transformers' CLIPImageProcessor resizes with PIL, which differs by a few levels; ComfyUI's numbers
    are the ones wanted.)"""
    image = image[..., :3].float().movedim(-1, 1)
    if image.shape[2] != size or image.shape[3] != size:
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            target = (size, size)
        image = torch.nn.functional.interpolate(image, size=target, mode="bicubic", antialias=True)
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    mean = torch.tensor(mean_std[0], dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(mean_std[1], dtype=image.dtype).view(1, 3, 1, 1)
    return (image - mean) / std


def encode(clip_vision: ClipVision, image: Any, crop: bool = True):
    """CLIPVisionEncode: the image batch's projected embeddings and the last and penultimate layers' hidden
    states (flowrun.values.ClipVisionOutput), computed on the CPU in float32."""
    import numpy as np

    from flowrun.values import ClipVisionOutput

    pixels = preprocess(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), clip_vision.image_size, crop,
                        clip_vision.mean_std)
    model = clip_vision.model
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(pixel_values=pixels.to(device), output_hidden_states=True)
    embeds = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output  # SigLIP: its pooling head's
    return ClipVisionOutput(image_embeds=embeds.float().cpu(),
                            last_hidden_state=out.last_hidden_state.float().cpu(),
                            penultimate_hidden_states=out.hidden_states[-2].float().cpu())
