"""The on-disk store: one folder per cache key, published atomically, checked on every read.

Layout: ROOT/v1/ab/abcdef.../ holding meta.json and one file per blob. An entry is written in a private
temporary folder and published with a single rename, so another process (or a run killed halfway)
never sees half an entry; whoever publishes first wins and the other copy is dropped.

Processes sharing the folder take a file lock per key (ROOT/v1/locks/) around computing an entry, so two
of them never compute the same entry at once: the second waits, then finds the entry published. Reading
an entry touches its meta.json, whose modification time is the "last used" that eviction goes by.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from flowrun.cache.store import verified_blobs, warn_discarded

LAYOUT = "v1"


class DiskStore:
    """The cache in a folder on this machine (a `Store`): entries published by folder rename, file locks."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.base = self.root / LAYOUT

    def _entry(self, key: str) -> Path:
        return self.base / key[:2] / key

    @contextmanager
    def locked(self, keys: list[str]):
        """Hold the compute locks of `keys` (taken in sorted order, so processes cannot deadlock)."""
        from filelock import FileLock

        with ExitStack() as stack:
            for key in sorted(set(keys)):
                path = self.base / "locks" / key[:2] / f"{key}.lock"
                path.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(FileLock(path))
            yield

    def has(self, key: str) -> bool:
        return (self._entry(key) / "meta.json").is_file()

    def meta(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._entry(key) / "meta.json").read_bytes())
        except (OSError, ValueError):
            return None

    def get(self, key: str) -> tuple[dict[str, bytes], dict[str, Any]] | None:
        """The blobs of an entry and its meta, or None if absent. A damaged entry is removed with a warning."""
        entry = self._entry(key)
        meta = self.meta(key)
        if meta is None:
            if entry.exists():
                self._discard(key, "its meta.json is missing or unreadable")
            return None
        blobs, why = verified_blobs(meta, lambda blob: (entry / blob["file"]).read_bytes())
        if blobs is None:
            self._discard(key, why)
            return None
        try:
            os.utime(entry / "meta.json")  # last used, for least-recently-used eviction
        except OSError:
            pass
        return blobs, meta

    def put(self, key: str, blobs: dict[str, bytes], info: dict[str, Any] | None = None) -> None:
        entry = self._entry(key)
        if entry.exists():
            return
        tmp_root = self.base / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=key[:12] + ".", dir=tmp_root))
        try:
            listing = []
            for i, (name, data) in enumerate(blobs.items()):
                fname = f"{i}.bin"
                # no fsync: a killed process cannot leave a half entry (the rename publishes whole), and
                # after a power cut a short blob fails its checksum on read and is recomputed
                (tmp / fname).write_bytes(data)
                listing.append({"name": name, "file": fname, "size": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()})
            meta = {"key": key, "blobs": listing, **(info or {})}
            with open(tmp / "meta.json", "w") as fh:
                json.dump(meta, fh, sort_keys=True)
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, entry)
            except OSError:
                if not entry.exists():  # anything other than "someone published it first" is a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, key: str, why: str) -> None:
        warn_discarded(key, why)
        self.remove(key)

    def remove(self, key: str) -> None:
        """Take an entry away in one rename (readers see it whole or not at all), then delete it."""
        entry = self._entry(key)
        trash = self.base / "tmp" / f"discard-{key[:12]}-{os.getpid()}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            shutil.rmtree(entry, ignore_errors=True)
