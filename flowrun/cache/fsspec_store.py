"""The disk cache on any fsspec filesystem (`s3://`, `gs://`, `file://`, `memory://`...), for workers that
share a cache over the network.

Object stores have no atomic folder rename, so an entry is published in two stages that each need only
an atomic single-object write (a PUT on object stores, write-then-rename on a local filesystem):

1. each blob goes to `v1/blobs/<sha256>`, named by its content, so rewriting it is harmless;
2. then the entry's record, `v1/entries/<key[:2]>/<key>.json`, listing the blobs with sizes and
   checksums, is written in one piece.

A reader that finds the record finds every blob it names; a writer that died before the record left
only unreferenced blobs, which no reader sees. Every blob is checked against its sha256 on read; a
damaged entry is dropped with a CacheWarning and recomputed, as on a local disk.

On a local or mounted filesystem (`file://`) computing an entry takes the same file lock as a cache
folder. On object stores there is no lock across machines, so two workers may compute the same entry
at the same time; both publish the same bytes, so the result is the same. The cluster executor gives
each cell to one worker, so this only happens for nodes that cells on different workers share.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from typing import Any

from flowrun.cache.disk import LAYOUT, DiskStore
from flowrun.cache.store import verified_blobs, warn_discarded
from flowrun.safepath import write_atomic


class FsspecStore:
    """The cache on an fsspec filesystem (a `Store`): content-named blobs, then one record per entry."""

    def __init__(self, url: str, **storage_options):
        try:
            import fsspec
        except ImportError:
            from flowrun.errors import UsageError

            raise UsageError(f"a cache at a URL ({url}) needs fsspec: pip install 'flowrun[ray]' "
                             "(or pip install fsspec, plus s3fs or gcsfs for those stores)") from None
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = root.rstrip("/")
        self.base = f"{self.root}/{LAYOUT}"
        self.local = "file" in _protocols(self.fs)

    def _record(self, key: str) -> str:
        return f"{self.base}/entries/{key[:2]}/{key}.json"

    def _blob(self, sha: str) -> str:
        return f"{self.base}/blobs/{sha[:2]}/{sha}"

    def _write(self, path: str, data: bytes) -> None:
        """One object written whole: a PUT on object stores; write-then-rename on a local filesystem."""
        if self.local:
            write_atomic(path, data)  # the path is a local one here
            return
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    def locked(self, keys: list[str]):
        """File locks where the store is a local (or network-mounted) filesystem, as DiskStore takes;
        none on object stores (see the module docstring: concurrent writers publish identical bytes)."""
        if not self.local:
            return nullcontext()
        return DiskStore(self.root).locked(keys)

    def has(self, key: str) -> bool:
        return self.fs.exists(self._record(key))

    def meta(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self._record(key)))
        except (OSError, ValueError):
            return None

    def get(self, key: str) -> tuple[dict[str, bytes], dict[str, Any]] | None:
        meta = self.meta(key)
        if meta is None:
            return None
        blobs, why = verified_blobs(meta, lambda blob: self.fs.cat_file(self._blob(blob["sha256"])))
        if blobs is None:
            self._discard(key, why)
            return None
        return blobs, meta

    def put(self, key: str, blobs: dict[str, bytes], info: dict[str, Any] | None = None) -> None:
        if self.has(key):
            return
        listing = []
        for name, data in blobs.items():
            sha = hashlib.sha256(data).hexdigest()
            if not self.fs.exists(self._blob(sha)):
                self._write(self._blob(sha), data)
            listing.append({"name": name, "size": len(data), "sha256": sha})
        meta = {"key": key, "blobs": listing, **(info or {})}
        self._write(self._record(key), json.dumps(meta, sort_keys=True).encode())

    def remove(self, key: str) -> None:
        try:
            self.fs.rm_file(self._record(key))
        except OSError:
            pass

    def _discard(self, key: str, why: str) -> None:
        warn_discarded(key, why)
        self.remove(key)


def _protocols(fs) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}

