"""What a cache store is: the `Store` protocol that both stores implement (DiskStore for a folder,
FsspecStore for a URL), and the entry checks they share.

An entry is a cache key's blobs (named bytes) plus its meta, which lists each blob's size and sha256.
Every read checks the blobs against the meta; a damaged entry is discarded with a CacheWarning, and the
node that made it simply runs again.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, ContextManager, Protocol


class CacheWarning(UserWarning):
    """A cache entry could not be used (corrupt, unreadable); it is discarded and recomputed."""


class Store(Protocol):
    """Entries by cache key. Publishing is atomic: a reader sees an entry whole or not at all."""

    def has(self, key: str) -> bool:
        """Whether the entry is there (without reading or checking its blobs)."""

    def meta(self, key: str) -> dict[str, Any] | None:
        """The entry's meta, or None if absent or unreadable."""

    def get(self, key: str) -> tuple[dict[str, bytes], dict[str, Any]] | None:
        """The entry's checked blobs and its meta, or None if absent (a damaged entry is discarded)."""

    def put(self, key: str, blobs: dict[str, bytes], info: dict[str, Any] | None = None) -> None:
        """Publish an entry; `info` joins its meta. An entry already there is kept as it is."""

    def remove(self, key: str) -> None:
        """Take the entry away, if it is there."""

    def locked(self, keys: list[str]) -> ContextManager[None]:
        """Hold the right to compute `keys`, so that processes sharing the store do not compute the same
        entry at once (where the store can lock at all)."""


def verified_blobs(meta: dict[str, Any], read: Callable[[dict[str, Any]], bytes]
                   ) -> tuple[dict[str, bytes] | None, str]:
    """The blobs an entry's meta lists, each read with `read(blob)` and checked against its size and
    sha256; (None, why) at the first one missing or damaged."""
    blobs: dict[str, bytes] = {}
    for blob in meta.get("blobs", []):
        try:
            data = read(blob)
        except OSError:
            return None, f"blob {blob['name']!r} is missing"
        if len(data) != blob["size"] or hashlib.sha256(data).hexdigest() != blob["sha256"]:
            return None, f"blob {blob['name']!r} does not match its checksum"
        blobs[blob["name"]] = data
    return blobs, ""


def warn_discarded(key: str, why: str) -> None:
    """Tell the user an entry was dropped and why (the warning points at the caller of the store's get)."""
    warnings.warn(f"cache entry {key[:12]} discarded: {why}; it will be recomputed", CacheWarning, stacklevel=4)
