"""flowrun.lock: the content of every file a set of workflows reads (models, LoRAs, VAEs, embeddings, input
images), pinned by sha256 and size, optionally with where each model comes from.

A run or test of a workflow uses the nearest `flowrun.lock` in its folder or a folder above it (up to the
repository root, the first folder holding `.git`); every file it reads must then match its entry, or the
run stops before any model loads (exit 2), naming the file, the expected and the found hash. `flowrun lock`
writes and updates the file. Models are keyed as workflows name them (`checkpoints/flowrun-tiny`, the
folder kind and the name), input files by their path relative to the lock's folder (`inputs/cat.png`).
A diffusers folder's hash is the hash of its files' names and hashes (flowrun.files.fingerprint_path).

The file is JSON, keys sorted and one entry per line group, so that a change reads well in a diff.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from flowrun.errors import UsageError
from flowrun.safepath import write_atomic

NAME = "flowrun.lock"
INPUT = "input"  # flowrun.files.INPUT, the kind of files beside the workflow (files.py imports this module)
VERSION = 1


class LockError(ValueError):
    """A file that does not match the lock, or that the lock does not list."""


def find(start: str | os.PathLike) -> Path | None:
    """The nearest flowrun.lock in `start` or a folder above it, stopping at the repository root (the first
    folder with a .git entry) or the filesystem root."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        candidate = folder / NAME
        if candidate.is_file():
            return candidate
        if (folder / ".git").exists():
            return None
    return None


@dataclass
class Lock:
    """The entries of one lock file: models by `kind/name`, inputs by path relative to the lock's folder;
    each {"sha256", "size"} and, for models, an optional "source"."""

    path: Path
    models: dict[str, dict] = field(default_factory=dict)
    inputs: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Lock":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read the lock: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise UsageError(f"{path}: not a flowrun lock of version {VERSION}")
        return cls(path, dict(data.get("models", {})), dict(data.get("inputs", {})))

    def write(self) -> None:
        data = {"version": VERSION, "models": dict(sorted(self.models.items())),
                "inputs": dict(sorted(self.inputs.items()))}
        write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def key(self, kind: str, name: str, path: Path) -> tuple[dict, str]:
        """(the section, the key) of a file a field names: an input (kind flowrun.files.INPUT) by its path
        from the lock's folder, a model by kind/name."""
        if kind == INPUT:
            rel = os.path.relpath(Path(path).resolve(), self.path.parent.resolve())
            return self.inputs, Path(rel).as_posix()
        return self.models, f"{kind}/{name}"

    def verify(self, kind: str, name: str, path: Path, sha256: str) -> None:
        """Raise LockError unless the lock lists this file with this hash."""
        section, key = self.key(kind, name, path)
        entry = section.get(key)
        if entry is None:
            raise LockError(f"{key} is not in {self.path}: every file a workflow reads is pinned there once a "
                            f"lock exists; run `flowrun lock` on the workflow to add it")
        if entry.get("sha256") != sha256:
            raise LockError(f"{key} ({path}) does not match {self.path}: expected sha256 {entry.get('sha256')}, "
                            f"found {sha256}")

    def record(self, kind: str, name: str, path: Path, sha256: str, size: int) -> str:
        """Add or update a file's entry (keeping its source); returns "added", "changed" or "unchanged"."""
        section, key = self.key(kind, name, path)
        old = section.get(key)
        entry = {**(old or {}), "sha256": sha256, "size": size}
        section[key] = entry
        if old is None:
            return "added"
        return "unchanged" if old.get("sha256") == sha256 else "changed"


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (a diffusers model)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
