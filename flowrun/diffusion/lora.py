"""LoRA files in the kohya / A1111 layout, applied to models as reversible weight patches.

Keys look like `lora_unet_<module>.lora_down.weight`, `.lora_up.weight` and `.alpha`, where <module> is a
diffusers module path (or an original-layout one, `input_blocks_1_1_...`) with '.' written as '_';
text encoders are `lora_te_` (SDXL: `lora_te1_`, `lora_te2_`). The delta is up @ down * alpha / rank.
A LoRA never changes the loaded model in place for good: patches are added while a node runs and the
original weights are put back after, so every cell of a sweep sees the model it asked for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.ldm_layout import unet_to_ldm
from flowrun.diffusion.model import Patch

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def _module_names(module: torch.nn.Module) -> dict[str, str]:
    """flattened kohya name -> parameter name of the module's weight."""
    names = {name.replace(".", "_"): name + ".weight" for name, m in module.named_modules()
             if name and isinstance(getattr(m, "weight", None), torch.Tensor)}
    # kohya names text encoder layers `text_model_encoder_...`; transformers 5's CLIPTextModel has no
    # `text_model` level, so accept both spellings
    names.update({"text_model_" + k: v for k, v in list(names.items()) if not k.startswith("text_model")})
    return names


def _unet_names(unet: Any) -> dict[str, str]:
    names = _module_names(unet)
    # original-layout names too: map each weight's LDM name back to the diffusers parameter
    params = {k: None for k in unet.state_dict() if k.endswith(".weight")}
    try:
        ldm = unet_to_ldm(params, dict(unet.config))
    except KeyError:
        return names
    inverse = {}
    for diff_key, ldm_key in zip(params, ldm):
        inverse[ldm_key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")] = diff_key
    return {**inverse, **names}


def _delta(down: torch.Tensor, up: torch.Tensor, alpha: float | None, shape: torch.Size):
    rank = down.shape[0]
    scale = (alpha / rank) if alpha is not None else 1.0

    def compute() -> torch.Tensor:
        d, u = down.float(), up.float()
        if d.ndim == 4 and d.shape[2:] == (1, 1):
            w = (u.flatten(1) @ d.flatten(1)).reshape(shape)
        elif d.ndim == 4:
            w = torch.nn.functional.conv2d(d.permute(1, 0, 2, 3), u).permute(1, 0, 2, 3)
        else:
            w = (u @ d).reshape(shape)
        return w * scale

    return compute


def read_lora(path: Path, unet: Any, text_models: list[Any], strength_model: float, strength_clip: float
              ) -> tuple[list[Patch], list[tuple[int, Patch]]]:
    """Patches for the UNet and for each text model. Raises CheckpointError when the LoRA does not fit."""
    from safetensors.torch import load_file

    from flowrun.diffusion.detect import read_header

    read_header(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file: {exc}") from None
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix in SUFFIXES:
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[suffix] = value
                break
    if not groups:
        raise CheckpointError(f"{path}: not a LoRA: no '*.lora_down.weight' / '*.lora_up.weight' keys found")
    targets: list[tuple[str, Any, dict[str, str], int | None]] = [("lora_unet_", unet, _unet_names(unet), None)]
    if len(text_models) == 1:
        targets.append(("lora_te_", text_models[0], _module_names(text_models[0]), 0))
    for i, tm in enumerate(text_models):
        targets.append((f"lora_te{i + 1}_", tm, _module_names(tm), i))
    unet_patches: list[Patch] = []
    clip_patches: list[tuple[int, Patch]] = []
    unmatched: list[str] = []
    for base, parts in groups.items():
        if not text_models and base.startswith("lora_te"):
            continue  # no text encoder given (LoraLoaderModelOnly): its part of the LoRA is not used
        if ".lora_down.weight" not in parts or ".lora_up.weight" not in parts:
            unmatched.append(base)
            continue
        for prefix, module, names, index in targets:
            if base.startswith(prefix) and base[len(prefix):] in names:
                param_name = names[base[len(prefix):]]
                param = module.get_parameter(param_name)
                down, up = parts[".lora_down.weight"], parts[".lora_up.weight"]
                if up.shape[0] != param.shape[0] or down.shape[1] != param.shape[1]:
                    raise CheckpointError(f"{path}: LoRA weight {base} is {tuple(up.shape[:1]) + tuple(down.shape[1:2])}, "
                                          f"the model's {param_name} is {tuple(param.shape[:2])}: the LoRA was made "
                                          "for another model")
                alpha = float(parts[".alpha"]) if ".alpha" in parts else None
                patch = Patch(param_name, _delta(down, up, alpha, param.shape), 0.0)
                if index is None:
                    unet_patches.append(Patch(patch.target, patch.delta, strength_model))
                else:
                    clip_patches.append((index, Patch(patch.target, patch.delta, strength_clip)))
                break
        else:
            unmatched.append(base)
    if unmatched:
        raise CheckpointError(f"{path}: {len(unmatched)} of {len(groups)} LoRA weights match no layer of this model "
                              f"(e.g. {unmatched[:2]}): the LoRA was made for another model family")
    return unet_patches, clip_patches


def _apply(weight: torch.Tensor, group: list[Patch], deltas: list) -> torch.Tensor:
    """weight with each patch applied in order, in place: weight * keep + delta * strength."""
    for patch, delta in zip(group, deltas):
        if patch.keep != 1.0:
            weight.mul_(patch.keep)
        if delta is not None:
            weight.add_(delta.to(weight.device, weight.dtype) * patch.strength)
    return weight


def _deltas(group: list[Patch]) -> list:
    return [p.delta() if p.strength != 0 else None for p in group]


def patched_weight(module: Any, patches: tuple, target: str) -> torch.Tensor:
    """A copy of `module`'s parameter `target` with those of `patches` (Patch) that aim at it applied;
    the module is not changed. What a model's weight is, as a merge reads it or a checkpoint saves it."""
    group = [p for p in patches if p.target == target]
    with torch.no_grad():
        weight = module.get_parameter(target).detach().clone()
        return _apply(weight, group, _deltas(group)) if group else weight


@contextlib.contextmanager
def patched(modules: Any, patches: tuple) -> Iterator[None]:
    """Apply the patches to the weights for the duration of the block, then restore the originals.
    `modules` is one module (patches are Patch) or a list (patches are (index, Patch)). The patches of
    one weight are applied in their order, their deltas all computed before that weight changes (a merge
    may read the very weight it patches, when both models share one UNet)."""
    if not patches:
        yield
        return
    pairs = [(modules[i], p) for i, p in patches] if isinstance(modules, list) else [(modules, p) for p in patches]
    groups: dict[tuple[int, str], tuple[Any, list[Patch]]] = {}
    for module, patch in pairs:
        if patch.strength != 0 or patch.keep != 1.0:
            groups.setdefault((id(module), patch.target), (module, []))[1].append(patch)
    saved: dict[tuple[int, str], tuple[Any, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for slot, (module, group) in groups.items():
                param = module.get_parameter(group[0].target)
                deltas = _deltas(group)
                saved[slot] = (module, param.detach().clone())
                _apply(param, group, deltas)
        yield
    finally:
        with torch.no_grad():
            for (_, target), (module, original) in saved.items():
                module.get_parameter(target).copy_(original)
