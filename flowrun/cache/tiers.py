"""The two cache tiers behind one door: memory first, then disk (for outputs whose port types serialize)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from flowrun.cache import codecs
from flowrun.cache.memory import MemoryCache
from flowrun.cache.store import Store

FILES = "files"  # the pseudo-output under which an output node's written files are cached


class NodeCache:
    """A node's outputs by cache key: in memory (any value), and in a store when their port types serialize."""

    def __init__(self, memory: MemoryCache | None, disk: Store | None):
        self.memory = memory
        self.disk = disk

    @staticmethod
    def serializable(out_types: dict[str, str]) -> bool:
        return all(codecs.for_port(t) is not None for t in out_types.values())

    def where(self, key: str, out_types: dict[str, str] | None) -> str | None:
        """'memory' or 'disk' if the node's result is cached (without loading it), else None.
        `out_types` None means an output node, whose result is the files it wrote."""
        if self.memory is not None and key in self.memory:
            return "memory"
        if self.disk is not None and (out_types is None or self.serializable(out_types)) and self.disk.has(key):
            return "disk"
        return None

    def locked(self, keys: list[str], out_types: dict[str, str] | None):
        """While computing entries that go to disk: hold their locks, so that processes sharing the
        cache folder do not compute the same entry at once (see Store.locked)."""
        if self.disk is None or (out_types is not None and not self.serializable(out_types)):
            return nullcontext()
        return self.disk.locked(keys)

    def load(self, key: str, out_types: dict[str, str] | None) -> dict[str, Any] | None:
        if self.memory is not None:
            value = self.memory.get(key)
            if value is not None:
                return value
        if self.disk is None or (out_types is not None and not self.serializable(out_types)):
            return None
        got = self.disk.get(key)
        if got is None:
            return None
        blobs, _ = got
        if out_types is None:
            value = {FILES: blobs}
        else:
            if set(blobs) != set(out_types):
                return None
            value = {name: codecs.for_port(t).decode(blobs[name]) for name, t in out_types.items()}
        if self.memory is not None:
            self.memory.put(key, value)
        return value

    def store(self, key: str, value: dict[str, Any], out_types: dict[str, str] | None, info: dict | None = None) -> None:
        if self.memory is not None:
            self.memory.put(key, value)
        if self.disk is None:
            return
        if out_types is None:
            self.disk.put(key, dict(value[FILES]), info)
        elif self.serializable(out_types):
            try:
                blobs = {name: codecs.for_port(t).encode(value[name]) for name, t in out_types.items()}
            except codecs.NotStorable:  # e.g. a conditioning carrying a ControlNet: memory only
                return
            self.disk.put(key, blobs, info)
