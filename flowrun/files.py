"""What a workflow may read: models by name on the model search path, input files beside the workflow,
and the content fingerprints of both. Torch-free: the planner fingerprints files, `validate` checks them.

Model search order: --models-dir, $FLOWRUN_MODELS (os.pathsep-separated), `models/` beside the workflow,
then the models bundled with flowrun. Each root is laid out as ComfyUI's `models/` folder (`checkpoints/`,
`loras/`, ...). Model folders are configured by the person running flowrun and are trusted: symbolic
links in them are followed (a Hugging Face cache snapshot is a folder of links into `blobs/`, shared
drives are linked into `checkpoints/`). What stays refused is a *name written in a workflow* that would
leave its folder (`..`, absolute paths, NUL, drive letters). Input files keep the strict rule: a name
and every link on its way must stay inside the workflow's folder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from flowrun import lockfile
from flowrun.cache.fingerprints import file_sha256
from flowrun.safepath import inside, relative_name_problem

AUTO_LOCK = "auto"  # Settings.lock: the nearest flowrun.lock (flowrun.lockfile.find)
INPUT = lockfile.INPUT  # the file kind of names relative to the workflow's folder (LoadImage's image)
MODELS_ENV = "FLOWRUN_MODELS"
BUNDLED = Path(__file__).resolve().parent / "models"
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONFIG_SUFFIXES = (".yaml",)  # configs/: LDM model configs (CheckpointLoader's config_name)
# kinds ComfyUI reads from two folders, the current name first
FOLDERS = {"text_encoders": ("text_encoders", "clip"), "diffusion_models": ("diffusion_models", "unet"),
           "clip_score": ("clip_score", "clip_vision"),  # a full CLIPModel may sit in clip_vision/ too
           "controlnet": ("controlnet", "t2i_adapter")}
# kinds whose models may be transformers folders (config.json + weights) rather than diffusers folders
TRANSFORMERS_FOLDER_KINDS = ("clip_score",)


def folders(kind: str) -> tuple[str, ...]:
    """The folder names under each models root where files of `kind` live."""
    return FOLDERS.get(kind, (kind,))


def search_roots(models_dirs: Iterable[str | os.PathLike] = (), workflow_dir: str | os.PathLike | None = None) -> list[Path]:
    roots = [Path(d) for d in models_dirs]
    roots += [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    if workflow_dir is not None:
        roots.append(Path(workflow_dir) / "models")
    roots.append(BUNDLED)
    return list(dict.fromkeys(roots))


# bare names may also be pickles (.pt, A1111's; most upscale models are .pth)
PICKLE_KINDS = ("checkpoints", "embeddings", "hypernetworks", "upscale_models")


def _candidates(name: str, kind: str) -> list[str]:
    if name.endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES):
        return [name]
    names = [name + s for s in SAFE_SUFFIXES] + [name]  # a bare name may be a diffusers folder
    if kind in PICKLE_KINDS:
        names += [name + s for s in PICKLE_SUFFIXES]
    return names


@dataclass(frozen=True)
class InText:
    """A text field that names files inside it: a prompt's `embedding:NAME` words name files of `kind`.
    Declared like a kind in a node's `files=`; every name found enters the cache key and is checked."""

    kind: str

    def names(self, text: str) -> list[str]:
        from flowrun.diffusion.prompt_syntax import embedding_names  # torch-free

        return embedding_names(text)


    def files(self, text: str) -> list[tuple[str, str]]:
        """(kind, name) of every file the text names."""
        return [(self.kind, name) for name in self.names(text)]


EMBEDDINGS_IN_PROMPT = InText("embeddings")

TINY_VAES = ("taesd", "taesdxl")  # VAELoader's names for tiny autoencoders (flowrun.diffusion.taesd)


@dataclass(frozen=True)
class VaeFiles:
    """VAELoader's `vae_name`: a file in vae/, or a tiny autoencoder's name (`taesd`, `taesdxl`) standing
    for its encoder and decoder files in vae_approx/, as ComfyUI lists them. Declared like a kind; the
    files' fingerprints enter the cache key together."""

    kind = "vae"

    def files(self, name: str) -> list[tuple[str, str]]:
        if name in TINY_VAES:
            return [("vae_approx", f"{name}_encoder"), ("vae_approx", f"{name}_decoder")]
        return [("vae", name)]


VAE_FILES = VaeFiles()


def locate(name: str, kind: str, roots: list[Path]) -> Path:
    """The file (or diffusers folder) called `name` under ROOT/kind/ for the first root that has it,
    following symbolic links in the model folders. Raises FileNotFoundError listing what is there, or
    ValueError for a name that would leave its folder."""
    problem = relative_name_problem(name)
    if problem:
        raise ValueError(f"model name '{name}' is not allowed: {problem}")
    for folder in (root / sub for root in roots for sub in folders(kind)):
        if not folder.is_dir():
            continue
        for candidate in _candidates(name, kind):
            path = folder / candidate
            if path.is_file() or (path.is_dir() and (path / _folder_marker(kind)).is_file()):
                return path
    available = sorted(set(available_names(kind, roots)))
    listing = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "") if available else "none"
    where = ", ".join(str(r / sub) for r in roots for sub in folders(kind))
    raise FileNotFoundError(f"no {kind[:-1] if kind.endswith('s') else kind} named '{name}' in {where}; available: {listing}")


def _folder_marker(kind: str) -> str:
    """The file that makes a folder one model: a diffusers pipeline's index, or a transformers config."""
    return "config.json" if kind in TRANSFORMERS_FOLDER_KINDS else "model_index.json"


def _walk(folder: Path):
    """os.walk through symbolic links, entering each real folder once (a link to a parent ends there)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()
        yield Path(dirpath), dirnames, sorted(filenames)


def available_names(kind: str, roots: list[Path]) -> list[str]:
    """Model names under ROOT/kind for every root: files by name, diffusers folders as a whole."""
    names = []
    for folder in (root / sub for root in roots for sub in folders(kind)):
        for here, dirnames, filenames in _walk(folder):
            if here != folder and _folder_marker(kind) in filenames:
                names.append(here.relative_to(folder).as_posix())
                dirnames.clear()  # its component files are not models of their own
                continue
            for f in filenames:
                path = here / f
                rel = path.relative_to(folder).as_posix()
                if path.suffix in SAFE_SUFFIXES:
                    names.append(rel[: -len(path.suffix)])
                elif path.suffix in PICKLE_SUFFIXES:
                    names.append(rel if kind != "embeddings" else rel[: -len(path.suffix)])
                elif kind == "configs" and path.suffix in CONFIG_SUFFIXES:
                    names.append(rel)
    return names


def fingerprint_path(path: Path, sha256) -> str:
    """Content fingerprint of a file, or of a diffusers folder (hash of its files' names and hashes)."""
    if path.is_file():
        return sha256(path)
    h = hashlib.sha256()
    for here, _, filenames in _walk(path):
        for f in filenames:
            file = here / f
            if file.is_file():
                h.update(file.relative_to(path).as_posix().encode() + b"\0" + sha256(file).encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class FileLookup:
    """Where a workflow's file names lead, and what the files hold. Built once per run from the settings
    (`for_workflow`), used by the planner (fingerprints, missing files) and by nodes (through the run
    context)."""

    workflow_dir: Path
    models_dirs: tuple[str, ...] = ()
    memo_dir: Path | None = None  # where remembered hashes live (the cache folder), if anywhere
    allow_pickle: bool = False  # .ckpt/.pt checkpoints may be read (weights only)
    roots: tuple[Path, ...] = field(default=(), compare=False)
    lock: Any = field(default=None, compare=False)  # a flowrun.lockfile.Lock the files must match, if any

    def __post_init__(self) -> None:
        object.__setattr__(self, "workflow_dir", Path(self.workflow_dir))
        object.__setattr__(self, "roots", tuple(search_roots(self.models_dirs, self.workflow_dir)))

    @classmethod
    def for_workflow(cls, workflow_file: str | os.PathLike, settings) -> "FileLookup":
        """The lookup for `workflow_file` under `settings` (flowrun.settings.Settings): names relative to
        its folder, the model folders, the hash memo in the local cache folder. The one place it is built."""
        folder = Path(workflow_file).resolve().parent
        lock_path = lockfile.find(folder) if settings.lock == AUTO_LOCK else settings.lock
        return cls(folder, tuple(settings.models_dirs), settings.local_cache_dir, settings.allow_pickle,
                   lock=lockfile.Lock.read(lock_path) if lock_path else None)

    def model_roots(self) -> list[Path]:
        return list(self.roots)

    def path(self, kind: str, name: str) -> Path:
        """The file a field names: an input beside the workflow, or a model of `kind` on the search path.
        Raises FileNotFoundError or ValueError (a name that would leave its folder)."""
        if kind == INPUT:
            path = inside(self.workflow_dir, name)
            if not path.exists():
                raise FileNotFoundError(f"no file '{name}' in {self.workflow_dir}")
            return path
        try:
            return locate(name, kind, list(self.roots))
        except FileNotFoundError as exc:
            pinned = self.lock.models.get(f"{kind}/{name}") if self.lock is not None else None
            if pinned is None:
                raise
            how = ("`flowrun models pull` fetches it from " + pinned["source"]) if pinned.get("source") else (
                "it has no source there to fetch it from")
            raise FileNotFoundError(f"{exc}; {self.lock.path} pins it (sha256 {pinned.get('sha256', '?')[:16]}…): "
                                    f"{how}") from None

    def sha256(self, path: str | os.PathLike) -> str:
        return file_sha256(path, self.memo_dir)

    def fingerprint(self, kind: str, name: str) -> str:
        """The content fingerprint of the file a field names; with a lock, checked against it (LockError)."""
        path = self.path(kind, name)
        value = fingerprint_path(path, self.sha256)
        if self.lock is not None:
            self.lock.verify(kind, name, path, value)
        return value
