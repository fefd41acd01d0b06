"""Merging two models' UNets, as ComfyUI's ModelMergeSimple and ModelMergeBlocks do: every weight of
the result is model1's * ratio + model2's * (1 - ratio), with the ratio chosen per weight.

The merge is a list of patches on a new model value (flowrun.diffusion.model.Patch with `keep` = ratio),
so neither input changes and the weights are mixed only while the merged model runs. model2's weights
are read as model2 is, its own patches (a LoRA, an earlier merge) applied; model1's patches come first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from flowrun.diffusion.ldm_layout import unet_to_ldm
from flowrun.diffusion.lora import patched_weight
from flowrun.diffusion.model import DiffusionModel, Patch

LDM_PREFIX = "model.diffusion_model."


class MergeError(ValueError):
    """The two models cannot be merged (other families, other shapes)."""


def _check_compatible(model1: DiffusionModel, model2: DiffusionModel) -> dict[str, tuple[int, ...]]:
    """The shapes of model1's UNet parameters, once model2 is known to have the same ones."""
    if model1.family != model2.family:
        raise MergeError(f"cannot merge a {model1.family} model (model1) with a {model2.family} model (model2): "
                         "both must be of one family")
    shapes1 = {k: tuple(v.shape) for k, v in model1.unet.named_parameters()}
    shapes2 = {k: tuple(v.shape) for k, v in model2.unet.named_parameters()}
    if shapes1 != shapes2:
        only = sorted(set(shapes1) ^ set(shapes2))
        if only:
            detail = f"{len(only)} weights are in one model only, e.g. {only[0]}"
        else:
            k = next(k for k in shapes1 if shapes1[k] != shapes2[k])
            detail = f"{k} is {shapes1[k]} in model1, {shapes2[k]} in model2"
        raise MergeError(f"cannot merge model1 ({model1.family}) with model2 ({model2.family}): their UNets differ "
                         f"in shape ({detail}); they are models of different sizes")
    return shapes1


def ldm_names(model: DiffusionModel) -> dict[str, str]:
    """UNet parameter name -> its original-layout name without `model.diffusion_model.` (input_blocks.1...)."""
    names = [k for k, _ in model.unet.named_parameters()]
    ldm = unet_to_ldm(dict.fromkeys(names), dict(model.unet.config))
    return {name: key[len(LDM_PREFIX):] for name, key in zip(names, ldm)}


def merge(model1: DiffusionModel, model2: DiffusionModel, ratio_of: Callable[[str], float]) -> DiffusionModel:
    """model1 with every UNet weight w1 replaced by w1 * r + w2 * (1 - r), r = ratio_of(the weight's
    original-layout name). Raises MergeError when the two do not fit together."""
    _check_compatible(model1, model2)
    names = ldm_names(model1)
    patches = []
    for name, ldm_name in names.items():
        ratio = float(ratio_of(ldm_name))
        patches.append(Patch(name, _weight_of(model2, name), 1.0 - ratio, keep=ratio))
    return replace(model1, patches=model1.patches + tuple(patches))


def _weight_of(model: DiffusionModel, name: str):
    """A patch delta (it is given model1's weight, which it does not need): model2's weight as model2 is."""
    return lambda _weight=None: patched_weight(model.unet, model.patches, name)


def block_ratio(ratios: dict[str, float]) -> Callable[[str], float]:
    """ComfyUI's rule: a weight takes the ratio of the longest prefix among `ratios` its name starts with
    (`input`: input_blocks, `middle`: middle_block, `out`: output_blocks and the final out layers), and
    the first ratio when none matches (the time embedding)."""
    default = next(iter(ratios.values()))

    def ratio_of(name: str) -> float:
        best, ratio = 0, default
        for prefix, value in ratios.items():
            if name.startswith(prefix) and len(prefix) > best:
                best, ratio = len(prefix), value
        return ratio

    return ratio_of
