"""The weight deltas of the LoRA file formats ComfyUI reads, one small function per format.

A file's keys are `<module>.<part>`; the parts of one module say its format:
- LoRA / LoCon: `lora_up`/`lora_down` (kohya), `lora.up`/`lora.down`, `_lora.up`, `lora_linear_layer.up`
  (diffusers), `lora_B`/`lora_A` (PEFT); 4-D for conv layers, with an optional `lora_mid` (Tucker form).
  delta = up @ down * alpha / rank.
- LoHa (LyCORIS): `hada_w1_a/b`, `hada_w2_a/b`, optional `hada_t1/t2` (CP form).
  delta = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank.
- LoKr (LyCORIS): `lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`, optional `lokr_t2`.
  delta = kron(w1, w2), times alpha / rank when a factor is low-rank.
- full-weight difference: `diff` (weight) and `diff_b` (bias).
Any of the first three may carry `dora_scale` (DoRA): the patched weight's norm is rescaled to it, as
ComfyUI's weight_decompose does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

PARTS: tuple[tuple[str, str], ...] = (
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    *((f".hada_{p}", f"hada_{p}") for p in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")),
    *((f".lokr_{p}", f"lokr_{p}") for p in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")),
    (".diff", "diff"), (".diff_b", "diff_b"), (".alpha", "alpha"), (".dora_scale", "dora_scale"),
)


def split_key(key: str) -> tuple[str, str] | None:
    """(module, part) of a LoRA file key, or None when the key is no part flowrun knows."""
    for suffix, part in PARTS:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


@dataclass(frozen=True)
class Adapter:
    """One module's delta: its format, the shape it produces, how to compute it (alpha applied)."""

    kind: str
    shape: tuple[int, ...]  # the delta as the format builds it; it must have the weight's size
    compute: Callable[[], torch.Tensor]
    dora_scale: torch.Tensor | None = None


def _tucker(t: torch.Tensor, wb: torch.Tensor, wa: torch.Tensor) -> torch.Tensor:
    """The CP/Tucker form: core t[i, j, h, w] with factors wb[j, in] and wa[i, out] -> [out, in, h, w]."""
    return torch.einsum("ijhw,jr,ip->prhw", t, wb, wa)


def _scale(alpha: torch.Tensor | None, rank: int) -> float:
    return float(alpha) / rank if alpha is not None else 1.0


def _lora(p: dict[str, torch.Tensor]) -> Adapter:
    up, down, mid = p["up"].float(), p["down"].float(), p.get("mid")
    scale = _scale(p.get("alpha"), down.shape[0])
    if mid is not None:
        mid = mid.float()
        shape = (up.shape[0], down.shape[1], *mid.shape[2:])

        def compute() -> torch.Tensor:
            inner = torch.einsum("rjhw,ji->rihw", mid, down.flatten(1))  # rank x in x kh x kw
            return (up.flatten(1) @ inner.flatten(1)) * scale
    else:
        shape = (up.shape[0], *down.shape[1:])

        def compute() -> torch.Tensor:
            return (up.flatten(1) @ down.flatten(1)) * scale
    return Adapter("lora", shape, compute, p.get("dora_scale"))


def _loha(p: dict[str, torch.Tensor]) -> Adapter:
    w1a, w1b, w2a, w2b = (p[f"hada_{n}"].float() for n in ("w1_a", "w1_b", "w2_a", "w2_b"))
    scale = _scale(p.get("alpha"), w1b.shape[0])
    if "hada_t1" in p:
        t1, t2 = p["hada_t1"].float(), p["hada_t2"].float()
        shape = (w1a.shape[1], w1b.shape[1], *t1.shape[2:])

        def compute() -> torch.Tensor:
            return _tucker(t1, w1b, w1a) * _tucker(t2, w2b, w2a) * scale
    else:
        shape = (w1a.shape[0], w1b.shape[1])

        def compute() -> torch.Tensor:
            return (w1a @ w1b) * (w2a @ w2b) * scale
    return Adapter("loha", shape, compute, p.get("dora_scale"))


def _lokr(p: dict[str, torch.Tensor]) -> Adapter:
    f = {k: v.float() for k, v in p.items() if k.startswith("lokr_")}
    rank = None
    if "lokr_w1" in f:
        w1_shape = tuple(f["lokr_w1"].shape)
    else:
        rank, w1_shape = f["lokr_w1_b"].shape[0], (f["lokr_w1_a"].shape[0], f["lokr_w1_b"].shape[1])
    if "lokr_w2" in f:
        w2_shape = tuple(f["lokr_w2"].shape)
    elif "lokr_t2" in f:
        rank = f["lokr_w2_b"].shape[0]
        w2_shape = (f["lokr_w2_a"].shape[1], f["lokr_w2_b"].shape[1], *f["lokr_t2"].shape[2:])
    else:
        rank, w2_shape = f["lokr_w2_b"].shape[0], (f["lokr_w2_a"].shape[0], f["lokr_w2_b"].shape[1])
    # alpha counts only when a factor is low-rank (ComfyUI: the rank of the last factored one)
    scale = _scale(p.get("alpha"), rank) if rank is not None else 1.0
    w1_shape = w1_shape + (1,) * (len(w2_shape) - len(w1_shape))
    shape = tuple(a * b for a, b in zip(w1_shape, w2_shape))

    def compute() -> torch.Tensor:
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        if "lokr_w2" in f:
            w2 = f["lokr_w2"]
        elif "lokr_t2" in f:
            w2 = _tucker(f["lokr_t2"], f["lokr_w2_b"], f["lokr_w2_a"])
        else:
            w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
        w1 = w1.reshape(*w1.shape, *(1,) * (w2.ndim - w1.ndim))
        return torch.kron(w1.contiguous(), w2.contiguous()) * scale
    return Adapter("lokr", shape, compute, p.get("dora_scale"))


def _diff(tensor: torch.Tensor) -> Adapter:
    return Adapter("diff", tuple(tensor.shape), lambda: tensor.float())


def adapters(parts: dict[str, torch.Tensor]) -> dict[str, Adapter] | None:
    """The module's deltas by what they change ("weight", "bias"); None when the parts make no whole format."""
    found: dict[str, Adapter] = {}
    if "up" in parts and "down" in parts:
        found["weight"] = _lora(parts)
    elif all(f"hada_{n}" in parts for n in ("w1_a", "w1_b", "w2_a", "w2_b")):
        found["weight"] = _loha(parts)
    elif ("lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts.keys()) and (
            "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts.keys()):
        found["weight"] = _lokr(parts)
    elif "diff" in parts:
        found["weight"] = _diff(parts["diff"])
    if "diff_b" in parts:
        found["bias"] = _diff(parts["diff_b"])
    return found or None


def fits(adapter: Adapter, shape: torch.Size) -> bool:
    """Whether the delta can be laid onto a parameter of this shape (same outputs, same size)."""
    if adapter.dora_scale is not None and adapter.dora_scale.numel() not in (shape[0], shape[1]):
        return False
    return adapter.shape[0] == shape[0] and math.prod(adapter.shape) == math.prod(shape)


def delta_fn(adapter: Adapter, shape: torch.Size) -> Callable[[torch.Tensor], torch.Tensor]:
    """delta(current weight) -> what to add to it at strength 1; strength s adds s times that."""

    def delta(weight: torch.Tensor) -> torch.Tensor:
        d = adapter.compute().reshape(shape).to(weight.device)
        if adapter.dora_scale is None:
            return d
        return _dora(weight.float(), d, adapter.dora_scale.to(weight.device, torch.float32))

    return delta


def _dora(weight: torch.Tensor, d: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA as ComfyUI's weight_decompose: W' = (W + d) * magnitude / norm, returned as W' - W. The
    norm runs over the output axis of the unpatched W when the magnitude has one entry per output (as
    ComfyUI does), else over the input axis of W + d (LyCORIS' layout)."""
    patched = weight + d
    if magnitude.shape[0] == patched.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (weight.ndim - 1))
    else:
        norm = patched.transpose(0, 1).reshape(patched.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *[1] * (weight.ndim - 2))
    norm = norm + torch.finfo(torch.float32).eps
    return patched * magnitude.reshape(norm.shape) / norm - weight
