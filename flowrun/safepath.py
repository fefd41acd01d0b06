"""Paths named by a workflow stay inside the folder they belong to."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def relative_name_problem(name: str) -> str | None:
    """Why `name` may not be used as a path below an output or input folder, or None if it may."""
    if "\x00" in name:
        return "it contains a NUL byte"
    if not name.strip():
        return "it is empty"
    if "\\" in name:
        return "it contains a backslash; use '/' between folders"
    if name.startswith("/") or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "it is an absolute path; give a path relative to the output folder"
    if ".." in PurePosixPath(name).parts:
        return "it contains '..' and would leave its folder"
    return None


def inside(root: str | os.PathLike, name: str) -> Path:
    """root/name, refusing names (and symlinks on the way) that lead outside root."""
    problem = relative_name_problem(name)
    if problem:
        raise ValueError(f"'{name}' is not allowed: {problem}")
    base = Path(root).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"'{name}' leads outside {base} (through a symbolic link)")
    return target


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files that write_atomic left behind in a process that was killed (its pid is
    gone). Returns how many were removed."""
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2] if tmp.name.count(".") >= 3 else ""
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
