"""The run context: a node's only door to the outside world.

A node gets exactly what it may use: the device and dtype policy, a pool of loaded models, noise from a
seed, progress, warnings and interruption, the files it named (lookup and the fingerprints the plan computed), and
its outputs. The runner builds one per node from run-wide `Services`; a test builds one from fakes
(every part has a harmless default, so `RunContext()` serves a node that needs none of them).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from flowrun.files import FileLookup
from flowrun.safepath import relative_name_problem


@dataclass(frozen=True)
class DevicePolicy:
    """Where models run and in what precision. `requested` None: cuda if available, else cpu.
    `requested_dtype` None: the device's default (float32 on the CPU: exact parity with ComfyUI's CPU
    numbers; float16 on CUDA); flowrun.diffusion.precision gives each model part its dtype."""

    requested: str | None = None
    requested_dtype: str | None = None

    @property
    def device(self) -> str:
        if self.requested:
            return self.requested
        return _auto_device()

    @property
    def dtype(self) -> str:
        """The run's precision by name (float32, bfloat16, float16)."""
        from flowrun.precision import resolved

        return resolved(self.device, self.requested_dtype)


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelPool:
    """Loaded models shared by the nodes that load the same file the same way, for as long as something
    (the memory cache, a node's output) holds them. The pool never keeps a model alive on its own, so
    its memory is the memory cache's to bound."""

    def __init__(self) -> None:
        self._held: dict[tuple, tuple[weakref.ref, ...]] = {}
        self.loads = 0  # how many times a loader ran (tests, progress)

    def load(self, key: tuple, build: Callable[[], Sequence[Any]]) -> tuple:
        """The parts `build()` returns for `key` (a file fingerprint plus whatever decides the result),
        built only if no earlier load of the same key is still alive."""
        refs = self._held.get(key)
        if refs is not None:
            parts = tuple(r() for r in refs)
            if all(p is not None for p in parts):
                return parts
        parts = tuple(build())
        self.loads += 1
        self._held[key] = tuple(weakref.ref(p) for p in parts)
        return parts


class NodeFiles:
    """A node's view of the files: where a name leads, and the fingerprint the plan computed for each of
    the node's file fields (so nothing is hashed twice)."""

    def __init__(self, lookup: FileLookup | None = None, fingerprints: Mapping[str, str] | None = None):
        self._lookup = lookup
        self._fingerprints = dict(fingerprints or {})

    @property
    def allow_pickle(self) -> bool:
        return bool(self._lookup and self._lookup.allow_pickle)

    def path(self, kind: str, name: str) -> Path:
        """The model of `kind` called `name` on the search path, or with files.INPUT a file beside the
        workflow. Raises FileNotFoundError or ValueError."""
        if self._lookup is None:
            raise FileNotFoundError(f"no files are available to this node (looking for {kind} '{name}')")
        return self._lookup.path(kind, name)

    def fingerprint(self, field_name: str) -> str:
        """The content fingerprint of the file that literal field `field_name` names."""
        return self._fingerprints[field_name]


class Outputs:
    """The files an output node writes, by name below the run's output folder. The runner writes them
    atomically after the node ends; the provenance covers only what the cache key covers, so a cached
    file and a fresh one are the same bytes."""

    def __init__(self, suffix: str = "", provenance: Mapping[str, Any] | None = None):
        self.suffix = suffix
        self.provenance = dict(provenance or {})
        self.saved: dict[str, bytes] = {}

    def stem(self, prefix: str) -> str:
        """The file stem for `prefix`, plus a suffix when other cells would write the same names."""
        return prefix + self.suffix

    def provenance_text(self) -> dict[str, str]:
        """Text chunks for output files: what made them as JSON, the resolved workflow as YAML, and
        ComfyUI's `prompt` (the image opens there as a graph) when every node has a counterpart."""
        prov = dict(self.provenance)
        resolved = prov.pop("resolved", "")
        prompt = prov.pop("prompt", None)
        text = {"flowrun": json.dumps(prov, sort_keys=True, ensure_ascii=False), "flowrun_workflow": resolved}
        if prompt:
            text["prompt"] = prompt
        return text

    def save(self, name: str, data: bytes) -> None:
        problem = relative_name_problem(name)
        if problem:
            raise ValueError(f"output name '{name}' is not allowed: {problem}")
        if name in self.saved:
            raise ValueError(f"output '{name}' written twice by one node")
        self.saved[name] = data


@dataclass
class Services:
    """What every node of a run shares: built once per run (flowrun.execute.resources), handed to each
    node's context."""

    device: DevicePolicy = field(default_factory=DevicePolicy)
    models: ModelPool = field(default_factory=ModelPool)
    lookup: FileLookup | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop at the next step


class RunContext:
    """What one node (for one cell, or one batch of cells) may use."""

    def __init__(self, *, device: DevicePolicy | None = None, models: ModelPool | None = None,
                 files: NodeFiles | None = None, outputs: Outputs | None = None,
                 progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
                 cells: Sequence[str] = (), warn: Callable[[str], None] | None = None,
                 preview: Callable[[int, int, Any, str], None] | None = None):
        self.device = device or DevicePolicy()
        self.models = models or ModelPool()
        self.files = files or NodeFiles()
        self.outputs = outputs or Outputs()
        self.cells = tuple(cells)  # labels of the cells this call computes, for messages
        self._progress = progress
        self._cancel = cancel
        self._warn = warn
        # a sampler's per-step latent preview (flowrun.diffusion.ksampler.Preview); None when nobody
        # listens, so that sampling computes nothing for it
        self.preview = preview

    @classmethod
    def for_node(cls, services: Services, *, fingerprints: Mapping[str, str], suffix: str = "",
                 provenance: Mapping[str, Any] | None = None, progress: Callable[[int, int], None] | None = None,
                 cells: Sequence[str] = (), warn: Callable[[str], None] | None = None,
                 preview: Callable[[int, int, Any, str], None] | None = None) -> "RunContext":
        return cls(device=services.device, models=services.models,
                   files=NodeFiles(services.lookup, fingerprints), outputs=Outputs(suffix, provenance),
                   progress=progress, cancel=services.cancel, cells=cells, warn=warn, preview=preview)

    def noise(self, seeds: int | Sequence[int]):
        """Noise from seeds, drawn on the CPU so that a seed means the same image on every device: one
        seed, or one per cell of a batch (flowrun.diffusion.noise.SeedNoise)."""
        from flowrun.diffusion.noise import SeedNoise

        return SeedNoise([seeds] if isinstance(seeds, int) else list(seeds))

    def warn(self, message: str) -> None:
        """Tell the person running the workflow about something that works but may not be what they meant."""
        if self._warn is not None:
            self._warn(message)

    def check_interrupted(self) -> None:
        """Raise KeyboardInterrupt if the run was asked to stop (long nodes call this between steps)."""
        if self._cancel is not None and self._cancel.is_set():
            raise KeyboardInterrupt("the run was interrupted")

    def progress(self, step: int, total: int) -> None:
        """Report step `step` of `total` inside a long node (a sampler's steps); stops here if interrupted."""
        if self._progress is not None:
            self._progress(step, total)
        self.check_interrupted()
