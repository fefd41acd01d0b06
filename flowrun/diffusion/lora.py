"""LoRA files as people have them, applied to models as reversible weight patches.

The formats (kohya LoRA and LoCon, LyCORIS LoHa and LoKr, full `diff` patches, DoRA) are in
flowrun.diffusion.lora_formats; this module finds the layer each file key means. UNet layers are named
as kohya does (`lora_unet_<module>` with '.' written as '_', the module in the diffusers or the original
layout, `input_blocks_1_1_...`), as diffusers and PEFT do (`unet.<module>`, or no prefix; the old
`processor.to_q` spelling too) or by their full original name (`diffusion_model.<module>`). Text encoders
are `lora_te_` / `text_encoder.` (SDXL: `lora_te1_`, `lora_te2_`, `text_encoder.`, `text_encoder_2.`).
Keys that match no layer are reported through `warn`; a LoRA for another family is an error.
A LoRA never changes the loaded model in place for good: patches are added while a node runs and the
original weights are put back after, so every cell of a sweep sees the model it asked for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from flowrun.diffusion.configs import AURAFLOW, FLUX, QWEN_IMAGE, SD3, ZIMAGE
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.ldm_layout import unet_to_ldm
from flowrun.diffusion.lora_formats import adapters, delta_fn, fits, split_key
from flowrun.diffusion.model import Patch

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner"}
# the transformer (DiT) families, whose LoRAs flowrun does not map yet
DIT_NAMES = {SD3: "SD3", FLUX: "Flux", AURAFLOW: "AuraFlow", QWEN_IMAGE: "Qwen-Image", ZIMAGE: "Z-Image"}
CONTEXT_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}  # cross-attention input width


def _module_names(module: torch.nn.Module, prefixes: tuple[str, ...], text: bool = False) -> dict[str, str]:
    """LoRA module name (each prefix, kohya '_' or dotted spelling) -> parameter name of its weight."""
    dotted = {name: name + ".weight" for name, m in module.named_modules()
              if name and isinstance(getattr(m, "weight", None), torch.Tensor)}
    if text:  # transformers 5's CLIPTextModel has no `text_model` level, which LoRA names keep: accept both
        dotted.update({"text_model." + k: v for k, v in list(dotted.items()) if not k.startswith("text_model")})
    names = {}
    for prefix in prefixes:
        for name, param in dotted.items():
            names[prefix + (name.replace(".", "_") if prefix.endswith("_") else name)] = param
    return names


def _unet_names(unet: Any) -> dict[str, str]:
    names = _module_names(unet, ("lora_unet_", "lycoris_", "unet.", "", "base_model.model."))
    for name, param in list(names.items()):  # diffusers' old attention-processor spelling
        if ".to_" in name:
            old = name.replace(".to_", ".processor.to_")
            names[old[:-2] if old.endswith(".to_out.0") else old] = param
    params = {k: None for k in unet.state_dict() if k.endswith(".weight")}
    try:
        ldm = unet_to_ldm(params, dict(unet.config))
    except KeyError:
        return names
    for diff_key, ldm_key in zip(params, ldm):  # original-layout names: LDM name -> diffusers parameter
        module = ldm_key[len("model.diffusion_model."):-len(".weight")]
        names.setdefault("lora_unet_" + module.replace(".", "_"), diff_key)
        names.setdefault("diffusion_model." + module, diff_key)
    return names


def _targets(unet: Any, text_models: list[Any]) -> dict[str, tuple[int | None, str]]:
    """Every name a LoRA may give a layer -> (None for the UNet or the text model's index, parameter)."""
    found: dict[str, tuple[int | None, str]] = {}
    if len(text_models) == 1:
        found.update({k: (0, v) for k, v in _module_names(
            text_models[0], ("lora_te_", "lora_te1_", "text_encoder."), text=True).items()})
    elif len(text_models) == 2:
        for i, prefixes in enumerate((("lora_te1_", "text_encoder."), ("lora_te2_", "text_encoder_2."))):
            found.update({k: (i, v) for k, v in _module_names(text_models[i], prefixes, text=True).items()})
    if unet is not None:
        found.update({k: (None, v) for k, v in _unet_names(unet).items()})
    return found


def lora_family(state: dict[str, torch.Tensor]) -> str | None:
    """The family a LoRA file was made for, when its keys or shapes tell; None when they do not."""
    keys = list(state)
    if any(k.startswith(("transformer.", "lora_transformer_")) or "double_blocks" in k for k in keys):
        flux = any("single_transformer_blocks" in k or "single_blocks" in k for k in keys)
        return "Flux" if flux else "a DiT (transformer) model such as SD3 or Flux"
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) or "add_embedding" in k or "label_emb" in k
           for k in keys):
        return "sdxl"
    widths = {v.shape[1] for k, v in state.items() if ("attn2_to_k" in k or "attn2.to_k" in k)
              and v.ndim == 2 and split_key(k) is not None and split_key(k)[1] == "down"}
    if len(widths) == 1 and (width := widths.pop()) in CONTEXT_FAMILY:
        return CONTEXT_FAMILY[width]
    return None


def _name(family: str | None) -> str:
    return FAMILY_NAMES.get(family, family) if family else "another model family"


def read_lora(path: Path, unet: Any, text_models: list[Any], strength_model: float, strength_clip: float,
              *, family: str | None = None, warn: Callable[[str], None] | None = None
              ) -> tuple[list[Patch], list[tuple[int, Patch]]]:
    """Patches for the UNet and for each text model. Keys that match no layer are reported through `warn`;
    raises CheckpointError when the file is no LoRA, or one for another family than `family`."""
    from safetensors.torch import load_file

    from flowrun.diffusion.detect import read_header

    read_header(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file: {exc}") from None
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        split = split_key(key)
        if split is None:
            unknown.append(key)
        else:
            groups.setdefault(split[0], {})[split[1]] = value
    if not groups:
        raise CheckpointError(f"{path}: not a LoRA: no '*.lora_down.weight' / '*.lora_up.weight' keys (or the "
                              f"LoCon, LoHa, LoKr, diff, diffusers or PEFT forms of them) found")
    if family in DIT_NAMES:  # a DiT network is no UNet: its LoRAs need their own key mapping, not written yet
        raise CheckpointError(f"{path}: LoRAs for {DIT_NAMES[family]} models are not supported yet (flowrun applies "
                              "LoRAs to SD 1.x, 2.x and SDXL UNets and their CLIP text encoders)")
    made_for = lora_family(state)
    model_name = _name(family)
    if family is not None and made_for is not None and made_for != family:
        raise CheckpointError(f"{path}: this LoRA was made for {_name(made_for)}, the model is {model_name}")
    targets = _targets(unet, text_models)
    unet_patches: list[Patch] = []
    clip_patches: list[tuple[int, Patch]] = []
    unmatched: list[str] = list(unknown)
    for base, parts in groups.items():
        if not text_models and base.startswith(("lora_te", "text_encoder")):
            continue  # no text encoder given (LoraLoaderModelOnly): its part of the LoRA is not used
        found = adapters(parts)
        if base not in targets or found is None:
            unmatched.append(base)
            continue
        index, weight_name = targets[base]
        module = unet if index is None else text_models[index]
        for what, adapter in found.items():
            param_name = weight_name if what == "weight" else weight_name[: -len("weight")] + "bias"
            try:
                param = module.get_parameter(param_name)
            except AttributeError:
                unmatched.append(f"{base}.diff_b")
                continue
            if not fits(adapter, param.shape):
                raise CheckpointError(
                    f"{path}: LoRA weight {base} ({adapter.kind}) makes a {tuple(adapter.shape)} change, the "
                    f"model's {param_name} is {tuple(param.shape)}: the LoRA was made for another model "
                    f"({_name(made_for)}; the model is {model_name})")
            delta = delta_fn(adapter, param.shape)
            if index is None:
                unet_patches.append(Patch(param_name, delta, strength_model))
            else:
                clip_patches.append((index, Patch(param_name, delta, strength_clip)))
    if unmatched and not (unet_patches or clip_patches):
        raise CheckpointError(f"{path}: {len(unmatched)} of {len(groups) + len(unknown)} LoRA weights match no "
                              f"layer of this model (e.g. {unmatched[:2]}): the LoRA was made for "
                              f"{_name(made_for)}, the model is {model_name}")
    if unmatched and warn is not None:
        warn(f"LoRA {Path(path).name}: {len(unmatched)} of {len(groups) + len(unknown)} weights match no layer of "
             f"this {model_name} model and are not applied (e.g. {', '.join(unmatched[:3])})")
    return unet_patches, clip_patches


def _apply(weight: torch.Tensor, group: list[Patch], deltas: list) -> torch.Tensor:
    """weight with each patch applied in order, in place: weight * keep + delta * strength."""
    for patch, delta in zip(group, deltas):
        if patch.keep != 1.0:
            weight.mul_(patch.keep)
        if delta is not None:
            weight.add_(delta.to(weight.device, weight.dtype) * patch.strength)
    return weight


def _deltas(group: list[Patch], weight: torch.Tensor) -> list:
    """Each patch's delta, all computed from the weight as it is before any of them applies (DoRA reads
    the weight; a merge may read the very weight it patches, when both models share one UNet)."""
    current = weight.detach().float()
    return [p.delta(current) if p.strength != 0 else None for p in group]


def patched_weight(module: Any, patches: tuple, target: str) -> torch.Tensor:
    """A copy of `module`'s parameter `target` with those of `patches` (Patch) that aim at it applied;
    the module is not changed. What a model's weight is, as a merge reads it or a checkpoint saves it."""
    group = [p for p in patches if p.target == target]
    with torch.no_grad():
        weight = module.get_parameter(target).detach().clone()
        return _apply(weight, group, _deltas(group, weight)) if group else weight


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
                deltas = _deltas(group, param)
                saved[slot] = (module, param.detach().clone())
                _apply(param, group, deltas)
        yield
    finally:
        with torch.no_grad():
            for (_, target), (module, original) in saved.items():
                module.get_parameter(target).copy_(original)
