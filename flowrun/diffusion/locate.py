"""Find model files by name on the search path, without importing torch (the planner fingerprints them).

Search order: --models-dir, $FLOWRUN_MODELS (os.pathsep-separated), `models/` beside the workflow, then the
models bundled with flowrun. Each root is laid out as ComfyUI's `models/` folder: `checkpoints/`, `loras/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from flowrun.safepath import inside, relative_name_problem

MODELS_ENV = "FLOWRUN_MODELS"
BUNDLED = Path(__file__).resolve().parent.parent / "models"
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def search_roots(models_dirs: Iterable[str | os.PathLike] = (), workflow_dir: str | os.PathLike | None = None) -> list[Path]:
    roots = [Path(d) for d in models_dirs]
    roots += [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    if workflow_dir is not None:
        roots.append(Path(workflow_dir) / "models")
    roots.append(BUNDLED)
    return list(dict.fromkeys(roots))


def _candidates(name: str, kind: str) -> list[str]:
    if name.endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES):
        return [name]
    names = [name + s for s in SAFE_SUFFIXES] + [name]  # a bare name may be a diffusers folder
    if kind == "checkpoints":
        names += [name + s for s in PICKLE_SUFFIXES]
    return names


def locate(name: str, kind: str, roots: list[Path]) -> Path:
    """The file (or diffusers folder) called `name` under ROOT/kind/ for the first root that has it.
    Raises FileNotFoundError listing what is there, or ValueError for a name that would leave its folder."""
    problem = relative_name_problem(name)
    if problem:
        raise ValueError(f"model name '{name}' is not allowed: {problem}")
    for root in roots:
        folder = root / kind
        if not folder.is_dir():
            continue
        for candidate in _candidates(name, kind):
            try:
                path = inside(folder, candidate)
            except ValueError as exc:
                raise ValueError(f"model name '{name}': {exc}") from None
            if path.is_file() or (path.is_dir() and (path / "model_index.json").is_file()):
                return path
    available = sorted(set(available_names(kind, roots)))
    listing = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "") if available else "none"
    where = ", ".join(str(r / kind) for r in roots)
    raise FileNotFoundError(f"no {kind[:-1]} named '{name}' in {where}; available: {listing}")


def available_names(kind: str, roots: list[Path]) -> list[str]:
    """Model names under ROOT/kind for every root: files by name, diffusers folders as a whole."""
    names = []
    for root in roots:
        folder = root / kind
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            if here != folder and "model_index.json" in filenames:
                names.append(here.relative_to(folder).as_posix())
                dirnames.clear()  # its component files are not models of their own
                continue
            dirnames.sort()
            for f in sorted(filenames):
                path = here / f
                rel = path.relative_to(folder).as_posix()
                if path.suffix in SAFE_SUFFIXES:
                    names.append(rel[: -len(path.suffix)])
                elif path.suffix in PICKLE_SUFFIXES:
                    names.append(rel)
    return names


def fingerprint_path(path: Path, sha256) -> str:
    """Content fingerprint of a model file, or of a diffusers folder (hash of its files' hashes)."""
    if path.is_file():
        return sha256(path)
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256(f).encode() + b"\0")
    return h.hexdigest()
