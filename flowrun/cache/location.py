"""Which store a cache location names: a folder on this machine (DiskStore, with locks and eviction) or
an fsspec URL such as s3://bucket/flowrun (FsspecStore, a cache shared over the network)."""

from __future__ import annotations

import os

from flowrun.cache.disk import DiskStore
from flowrun.cache.fsspec_store import FsspecStore  # imports fsspec only when a store at a URL is opened
from flowrun.cache.store import Store


def is_url(location: str | os.PathLike) -> bool:
    """Whether `location` is a URL (scheme://...) rather than a folder."""
    return "://" in str(location)


def open_store(location: str | os.PathLike) -> Store:
    """The cache store for a folder (DiskStore) or a URL (FsspecStore)."""
    if is_url(location):
        return FsspecStore(str(location))
    return DiskStore(location)
