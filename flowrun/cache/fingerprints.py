"""Content hashes of files that nodes read (images, checkpoints), computed once per file version.

A file's sha256 is remembered by (path, size, mtime) in memory and in the cache folder, so a large
checkpoint is hashed once, not at every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from flowrun.safepath import write_atomic

_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = (real, st.st_size, st.st_mtime_ns)
    if ident in _memo:
        return _memo[ident]
    record = None
    if memo_dir is not None:
        record = Path(memo_dir) / "fingerprints" / (hashlib.sha256(real.encode()).hexdigest()[:32] + ".json")
        try:
            saved = json.loads(record.read_text())
            if (saved["path"], saved["size"], saved["mtime_ns"]) == ident:
                _memo[ident] = saved["sha256"]
                return saved["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    value = h.hexdigest()
    _memo[ident] = value
    if record is not None:
        try:
            write_atomic(record, json.dumps({"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                             "sha256": value}).encode())
        except OSError:
            pass  # the memo is an optimisation; a read-only cache folder must not fail the run
    return value
