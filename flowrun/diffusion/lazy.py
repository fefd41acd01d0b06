"""Model parts built on first use: a checkpoint's UNet, text encoders and VAE are only constructed when
a node reads them, so a workflow that needs only the VAE never builds the UNet.

A MODEL, CLIP or VAE value holds its module in a `deferred` field; the field may be given a `Deferred`
(a build function run once, under a lock, whoever asks first) and reading the field builds it. Copies
made with `replace` share the Deferred, so a LoRA'd copy of an unbuilt model still builds it once.
An error while building (a checkpoint whose weights do not fit) is raised by the node that first uses
the part.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable


class Deferred:
    """A value computed by `build()` the first time it is asked for, then kept."""

    def __init__(self, build: Callable[[], Any]):
        self._build: Callable[[], Any] | None = build
        self._value: Any = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._build is None

    def get(self) -> Any:
        with self._lock:
            if self._build is not None:
                self._value = self._build()
                self._build = None  # let the closure (and the state dict it holds) go
            return self._value


def placed(network: Any, device: str, dtype: Any = None) -> tuple[Any, Any]:
    """(network on `device`, its dtype): moved now when built, on first use when Deferred (whose dtype is the
    one it will be built in, `dtype`)."""
    if isinstance(network, Deferred):
        return Deferred(lambda: network.get().to(device)), dtype
    network.to(device)
    return network, next(network.parameters()).dtype


class deferred:  # noqa: N801  (used like `field()` in a dataclass body)
    """A dataclass field that may hold a Deferred: reading it builds the part once and keeps it."""

    def __set_name__(self, owner, name: str) -> None:
        self.name, self.slot = name, "_deferred_" + name

    def __get__(self, obj, owner=None):
        if obj is None:  # dataclasses ask the class for a default: there is none
            raise AttributeError(self.name)
        value = obj.__dict__[self.slot]
        if isinstance(value, Deferred):
            value = value.get()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value


def is_built(obj: Any, name: str) -> bool:
    """Whether `obj`'s deferred field `name` holds a built part (tests, benchmarks)."""
    value = obj.__dict__.get("_deferred_" + name)
    return not isinstance(value, Deferred) or value.built


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace that copies an unbuilt part as it is, so that making a copy builds nothing."""
    for f in dataclasses.fields(obj):
        if f.init and f.name not in changes:
            slot = "_deferred_" + f.name
            changes[f.name] = obj.__dict__[slot] if slot in obj.__dict__ else getattr(obj, f.name)
    return type(obj)(**changes)
