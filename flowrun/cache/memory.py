"""The in-memory tier: values by cache key, least recently used first out, bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

DEFAULT_MAX_BYTES = 2 * 1024**3


def estimate_nbytes(value: Any) -> int:
    """Bytes held by a value: arrays and tensors by their buffers, models by their parameters."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if hasattr(value, "parameters") and callable(value.parameters):
        try:
            return sum(estimate_nbytes(p) for p in value.parameters())
        except TypeError:
            pass
    if isinstance(value, dict):
        return sum(estimate_nbytes(v) for v in value.values()) + 64
    if isinstance(value, (list, tuple)):
        return sum(estimate_nbytes(v) for v in value) + 64
    if isinstance(value, (str, bytes)):
        return len(value) + 48
    return 64


class MemoryCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: Any) -> None:
        size = estimate_nbytes(value)
        if size > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        self._items[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.nbytes -= dropped

    def values(self):
        """The cached values, least recently used first."""
        return [value for value, _ in self._items.values()]

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0
