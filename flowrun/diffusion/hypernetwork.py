"""Hypernetworks in A1111's format, applied as ComfyUI's HypernetworkLoader applies them.

The file (a weights-only pickle) maps a width (320, 640, 768, 1280...) to two small networks, one for
the input of the attention's key projection and one for the value's: in every attention (self and
cross) whose key/value input x has that width, to_k sees x + net_k(x) * strength and to_v sees
x + net_v(x) * strength. A network is a stack of linear layers, each followed by the file's activation
(not the last one, unless `activate_output`; with `is_layer_norm` ComfyUI activates the last one too,
and so does flowrun) and, with `is_layer_norm`, a layer norm. Dropout is left out: it belongs to
training (ComfyUI leaves its dropout layers in training mode, so its renders with such files vary from
run to run; flowrun's are the same each time).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from flowrun.diffusion.detect import CheckpointError
from flowrun.files import PICKLE_SUFFIXES

# A1111's names; `swish` is torch's Hardswish there, and so here
ACTIVATIONS = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU,
               "elu": torch.nn.ELU, "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
               "softsign": torch.nn.Softsign, "mish": torch.nn.Mish}


def read_hypernetwork_file(path: Path, allow_pickle: bool) -> dict:
    """The file's contents; pickles only with allow_pickle, and then read weights-only."""
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: hypernetworks are A1111 .pt files (a width -> networks mapping); "
                              f"{path.suffix} is not read as one")
    from flowrun.diffusion.pickles import read_pickle

    data = read_pickle(path, allow_pickle, "hypernetworks")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a hypernetwork (a dict), found {type(data).__name__}")
    return data


def _layer_names(weights: dict) -> list[str]:
    """The layers of one network in order (`linear.0`, `linear.1`, ...: linears and layer norms, both
    with a weight and a bias), by their index where the names carry one."""
    names = [k[: -len(".weight")] for k in weights if isinstance(k, str) and k.endswith(".weight")]
    numbers = [re.search(r"(\d+)$", n) for n in names]
    if all(numbers):
        names.sort(key=lambda n: int(re.search(r"(\d+)$", n).group(1)))
    return names


def _network(weights: dict, activation: str, layer_norm: bool, activate_output: bool, where: str) -> torch.nn.Module:
    names = _layer_names(weights)
    layers: list[torch.nn.Module] = []
    i = 0
    while i < len(names):
        w, b = weights[names[i] + ".weight"], weights.get(names[i] + ".bias")
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or not isinstance(b, torch.Tensor):
            raise CheckpointError(f"{where}: layer {names[i]} is not a linear layer with a bias")
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        linear.load_state_dict({"weight": w.float(), "bias": b.float()})
        layers.append(linear)
        # ComfyUI's rule, counting layer norms as layers: with is_layer_norm even the last linear is activated
        if activation != "linear" and (i < len(names) - 1 or activate_output):
            layers.append(ACTIVATIONS[activation]())
        if layer_norm:
            i += 1
            if i >= len(names):
                raise CheckpointError(f"{where}: is_layer_norm is set, but no layer norm follows {names[i - 1]}")
            nw, nb = weights[names[i] + ".weight"], weights.get(names[i] + ".bias")
            norm = torch.nn.LayerNorm(nw.shape[0])
            norm.load_state_dict({"weight": nw.float(), "bias": nb.float()})
            layers.append(norm)
        i += 1
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


@dataclass(frozen=True)
class Hypernetwork:
    """Networks by width: (for the key input, for the value input), scaled by strength."""

    networks: dict[int, tuple[torch.nn.Module, torch.nn.Module]]
    strength: float

    def apply(self, which: int, x: torch.Tensor) -> torch.Tensor:
        """x changed for the key (which 0) or value (which 1) projection; x itself if no network fits."""
        nets = self.networks.get(x.shape[-1])
        if nets is None or self.strength == 0:
            return x
        net = nets[which].to(x.device)
        return x + net(x.float()).to(x.dtype) * self.strength


def read_hypernetwork(path: Path, strength: float, allow_pickle: bool) -> Hypernetwork:
    """The hypernetwork in `path`; raises CheckpointError for a file that is not one."""
    data = read_hypernetwork_file(path, allow_pickle)
    activation = data.get("activation_func", "linear") or "linear"
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{path}: activation {activation!r} is not supported; "
                              f"supported: {', '.join(ACTIVATIONS)}")
    layer_norm, activate_output = bool(data.get("is_layer_norm", False)), bool(data.get("activate_output", False))
    networks = {}
    for key, value in data.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue  # settings: activation_func, layer_structure, name, step...
        if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(v, dict) for v in value[:2]):
            raise CheckpointError(f"{path}: width {width} should hold two networks (key, value)")
        networks[width] = tuple(_network(value[i], activation, layer_norm, activate_output, f"{path} [{width}][{i}]")
                                for i in (0, 1))
    if not networks:
        raise CheckpointError(f"{path}: not a hypernetwork: no width -> networks entries")
    return Hypernetwork(networks, strength)


@contextlib.contextmanager
def attention_inputs_patched(unet: Any, patches: tuple) -> Iterator[None]:
    """While the block runs, the key and value projections of every transformer attention (attn1, attn2)
    see their input changed by each patch in turn (Hypernetwork.apply); the hooks are removed after."""
    if not patches:
        yield
        return
    handles = []

    def hook(which: int):
        def change(module, args):
            x = args[0]
            for patch in patches:
                x = patch.apply(which, x)
            return (x, *args[1:])
        return change

    try:
        for name, module in unet.named_modules():
            if name.endswith((".attn1", ".attn2")):
                handles.append(module.to_k.register_forward_pre_hook(hook(0)))
                handles.append(module.to_v.register_forward_pre_hook(hook(1)))
        yield
    finally:
        for handle in handles:
            handle.remove()
