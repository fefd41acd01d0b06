"""A workflow file as it was at a git revision (flowrun diff, flowrun test --changed-since)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from flowrun.errors import UsageError


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("git is not installed: revisions cannot be read") from None


def text_at(rev: str, path: str | os.PathLike) -> str | None:
    """The text of `path` (a file in a git working tree) at revision `rev`; None if the file did not exist
    there. Raises UsageError for a folder outside a repository or a revision git does not know."""
    path = Path(path).resolve()
    folder = path.parent
    if _git(folder, "rev-parse", "--git-dir").returncode != 0:
        raise UsageError(f"{folder} is not in a git repository")
    if _git(folder, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise UsageError(f"git knows no revision '{rev}' (in {folder})")
    shown = _git(folder, "show", f"{rev}:./{path.name}")
    return shown.stdout if shown.returncode == 0 else None
