"""Keeping the disk cache in bounds: what it holds, least-recently-used eviction to a size limit, clearing.

An entry's size is the sum of its files; its last use is its meta.json's modification time (set when it
is written, touched on every read). Eviction takes whole entries, oldest use first, each in one rename,
so a concurrent reader sees an entry whole or not at all.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from flowrun.cache.disk import DiskStore

DEFAULT_MAX_BYTES = 20 * 1024**3
MAX_SIZE_ENV = "FLOWRUN_CACHE_MAX_SIZE"
STALE_TMP_SECONDS = 3600  # a temporary folder this old belongs to a process that died mid-write

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'500M', '20G', '1.5T', '0' (no limit) -> bytes. Binary units; an optional trailing 'B' or 'iB'."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise ValueError(f"'{text}' is not a size; write it like 500M, 20G or 0 for no limit")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def default_max_bytes() -> int:
    """$FLOWRUN_CACHE_MAX_SIZE, else 20 GiB; 0 means no limit."""
    return parse_size(os.environ[MAX_SIZE_ENV]) if os.environ.get(MAX_SIZE_ENV) else DEFAULT_MAX_BYTES


@dataclass
class Entry:
    key: str
    path: Path
    size: int
    used: float


def entries(store: DiskStore) -> list[Entry]:
    found = []
    if not store.base.is_dir():
        return found
    for shard in os.scandir(store.base):
        if not shard.is_dir() or len(shard.name) != 2:  # skip tmp/ and locks/
            continue
        for entry in os.scandir(shard.path):
            try:
                used = os.stat(os.path.join(entry.path, "meta.json")).st_mtime
                size = sum(f.stat().st_size for f in os.scandir(entry.path) if f.is_file())
            except OSError:  # being written, evicted or damaged: not counted now
                continue
            found.append(Entry(entry.name, Path(entry.path), size, used))
    return found


def _stale_tmp(store: DiskStore, now: float) -> list[Path]:
    tmp = store.base / "tmp"
    if not tmp.is_dir():
        return []
    return [Path(p.path) for p in os.scandir(tmp) if now - p.stat().st_mtime > STALE_TMP_SECONDS]


def info(store: DiskStore, max_bytes: int) -> dict:
    found = entries(store)
    return {
        "path": str(store.root),
        "entries": len(found),
        "bytes": sum(e.size for e in found),
        "max_bytes": max_bytes,
        "oldest_use": min((e.used for e in found), default=None),
        "newest_use": max((e.used for e in found), default=None),
        "stale_temporary": len(_stale_tmp(store, time.time())),
    }


def prune(store: DiskStore, max_bytes: int = 0, older_than: float | None = None) -> tuple[int, int]:
    """Evict least-recently-used entries until the cache holds at most `max_bytes` (0: no size limit),
    and every entry not used for `older_than` seconds. Also removes temporary folders that dead
    processes left behind. Returns (entries removed, bytes freed)."""
    now = time.time()
    for path in _stale_tmp(store, now):
        shutil.rmtree(path, ignore_errors=True)
    found = sorted(entries(store), key=lambda e: e.used)
    total = sum(e.size for e in found)
    removed = freed = 0
    for e in found:
        too_old = older_than is not None and now - e.used > older_than
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big):
            continue
        store.remove(e.key)
        total -= e.size
        removed += 1
        freed += e.size
    return removed, freed


def clear(store: DiskStore) -> tuple[int, int]:
    """Remove every entry (and the locks and temporary folders). Returns (entries removed, bytes freed)."""
    found = entries(store)
    if store.base.exists():
        trash = store.root / f".clearing-{os.getpid()}"
        os.rename(store.base, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return len(found), sum(e.size for e in found)
