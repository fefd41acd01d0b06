"""SD3's text encoders from their own files (TripleCLIPLoader, DualCLIPLoader and CLIPLoader type sd3): CLIP-L,
CLIP-G and T5-XXL in any order, each told from its weights (T5 by its blocks; a CLIP by its width, 768 or 1280,
or by a sidecar's `text_encoder`), in transformers' layout with or without the prefixes ComfyUI's and
stabilityai's files carry (`text_encoders.clip_l.transformer.`, ...), CLIP-G also in OpenCLIP's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowrun.diffusion.configs import SD3, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.sd3_files import CLIP_G, CLIP_L, T5XXL, _part


ROLES = ("clip_l", "clip_g", "t5xxl")
_ROLE_NAMES = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}
_TEXT_PREFIXES = (CLIP_L, CLIP_G, T5XXL, "cond_stage_model.transformer.", "conditioner.embedders.0.transformer.",
                  "conditioner.embedders.1.model.", "transformer.")


def _text_file(path: Path, allow_pickle: bool, label: str):
    """(role, builder(config) -> model, the config the weights say or None) of one text-encoder file."""
    import json

    from flowrun.diffusion import t5
    from flowrun.diffusion.configs import _CLIP_L, _OPEN_CLIP_BIGG
    from flowrun.diffusion.weights import _load_open_clip, _load_text, read_state_dict, sidecar

    state = read_state_dict(path, allow_pickle)
    for prefix in _TEXT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = _part(state, prefix)
            break
    side = sidecar(path)
    said = json.loads(side.read_text()).get("text_encoder") if side else None
    if t5.is_t5(state):
        def build_t5(_cfg):
            try:
                return t5.build(state)
            except ValueError as exc:
                raise CheckpointError(f"{label}: {exc}") from None
        return "t5xxl", build_t5, t5.config_from_state(state)
    if "token_embedding.weight" in state:  # OpenCLIP layout (bigG as SDXL checkpoints hold it)
        width = state["token_embedding.weight"].shape[1]
        role = said or ("clip_g" if width == 1280 else None)
        oc = {"oc." + k: v for k, v in state.items()}
        build = lambda cfg: _load_open_clip(cfg, oc, "oc.", True, path)  # noqa: E731
    else:
        key = next((k for k in state if k.endswith("embeddings.token_embedding.weight")), None)
        if key is None:
            raise CheckpointError(f"{label}: not a text encoder SD3 reads (CLIP-L, CLIP-G or T5-XXL): found keys like "
                                  f"{sorted(state)[:3]}")
        width = state[key].shape[1]
        role = said or {768: "clip_l", 1280: "clip_g"}.get(width)
        build = lambda cfg: _load_text(cfg, state, role == "clip_g",  # noqa: E731
                                       f"{_ROLE_NAMES[role]} text encoder", path)
    if role not in ("clip_l", "clip_g"):
        raise CheckpointError(f"{label}: a CLIP text encoder {width} wide; SD3 reads CLIP-L (768 wide) and CLIP-G "
                              f"(1280); for a model of another size put its configs in {path.with_suffix('.json')}")
    return role, build, {"clip_l": _CLIP_L, "clip_g": _OPEN_CLIP_BIGG}[role]


def load_text_encoders(paths: list[Path], fingerprints: list[str], labels: list[str] | None = None, *,
                       allow_pickle: bool = False):
    """CLIP (family sd3) from one to three files holding CLIP-L, CLIP-G and T5-XXL in any order, told from the
    weights (TripleCLIPLoader, DualCLIPLoader and CLIPLoader type sd3); the ones not given are left out as
    ComfyUI does. `labels` name the files in messages (the node's fields)."""
    import hashlib

    from flowrun.diffusion.model import TextEncoder
    from flowrun.diffusion.weights import sidecar, tokenizer

    labels = labels or [str(p) for p in paths]
    base, source = None, None
    for path in paths:
        side = sidecar(path)
        if side is not None:
            try:
                candidate = ModelConfig.from_sidecar(side, SD3)
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
            if candidate.family == SD3 and len(candidate.text_encoders) == 3:
                base, source = candidate, side
                break
    config = base or ModelConfig.default(SD3)
    models: list[Any] = [None, None, None]
    given: dict[str, str] = {}
    for path, label in zip(paths, labels):
        role, build, cfg = _text_file(path, allow_pickle, f"{label} ({path.name})")
        if role in given:
            raise CheckpointError(f"{given[role]} and {label} ({path.name}) are both {_ROLE_NAMES[role]} text "
                                  "encoders; SD3 takes one each of CLIP-L, CLIP-G and T5-XXL")
        given[role] = f"{label} ({path.name})"
        index = ROLES.index(role)
        if role != "t5xxl" and base is not None:
            cfg = config.text_encoders[index]
        config.text_encoders[index] = cfg
        models[index] = build(cfg)
    config.source = str(source or paths[0])
    fingerprint = fingerprints[0] if len(fingerprints) == 1 else hashlib.sha256(
        "\0".join(fingerprints).encode()).hexdigest()
    return TextEncoder(tokenizer(), models, config, fingerprint)
