"""One workflow file, rendered again on every save by one process that keeps what it loaded.

A `Session` holds what outlives a run: the memory cache (loaded models, prompts' embeddings, every result)
and the model pool. Each `step()` reads and validates the file again, builds its graph, and runs it unless
every node's cache key is the one the last good run had (a comment, a blank line or reordered keys change
nothing). The executor's cache decides what re-runs: a new prompt re-encodes that prompt and samples and
decodes again, while the checkpoint stays in memory. An invalid file or a failed node leaves the last
outputs where they are. `step()` and `on_change()` take no file events, so tests drive them directly;
`flowrun.watch.loop` feeds them from watchfiles.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from flowrun import pipeline
from flowrun.errors import FlowrunError, WorkflowInvalid
from flowrun.settings import Settings
from flowrun.spec.sweep import Overrides

if TYPE_CHECKING:
    from flowrun.execute.events import Events
    from flowrun.graph.resolve import Resolved

RAN, UNCHANGED, INVALID, FAILED = "ran", "unchanged", "invalid", "failed"


@dataclass
class NodeRun:
    """One node that executed in a run (not from the cache), for the summary."""

    node: str
    type: str
    cells: list[str]
    seconds: float


@dataclass
class Outcome:
    """What one step did: RAN (`executed`, `cached` nodes, `files`), UNCHANGED (same keys as the last good
    run: nothing ran), INVALID (the file does not validate: `message` as `flowrun validate` prints it) or
    FAILED (a node failed: `message`); `seconds` from reading the file to the end."""

    status: str
    seconds: float
    message: str = ""
    executed: list[NodeRun] = field(default_factory=list)
    cached: int = 0
    files: list[Path] = field(default_factory=list)
    manifest: dict | None = None
    out_dir: Path | None = None


class Session:
    """Re-renders `path` on request, reusing results and loaded models across runs."""

    def __init__(self, path: str | os.PathLike, overrides: Overrides | None = None, settings: Settings | None = None,
                 events: "Events | None" = None):
        from flowrun.cache.memory import MemoryCache
        from flowrun.execute.context import ModelPool

        self.path = Path(path)
        self.overrides = overrides
        self.settings = settings or Settings()
        self.events = events
        self.memory = MemoryCache(self.settings.memory_bytes)
        self.models = ModelPool()
        self.resolved: "Resolved | None" = None  # the last version of the file that validated
        self._keys: frozenset[str] | None = None  # every node's key in the last run that succeeded
        self._stamps: dict[Path, tuple[int, int] | None] = {}  # the watched files as the last step read them

    def watched(self) -> set[Path]:
        """The files whose change can change the outputs: the workflow and the input files it reads (models
        are not watched: they are large and are not edited while one works on a workflow)."""
        paths = {self.path.resolve()}
        if self.resolved is not None:
            from flowrun.files import INPUT, FileLookup
            from flowrun.graph.files import named_files

            lookup = FileLookup.for_workflow(self.resolved.file, self.settings)
            for kind, name in named_files(self.resolved):
                if kind == INPUT:
                    try:
                        paths.add(lookup.path(kind, name).resolve())
                    except (OSError, ValueError):
                        pass  # a missing input is the next step's validation error
        return paths

    def stale(self) -> bool:
        """Whether a watched file changed since the last step read it (a save that came before the file
        events were being watched, e.g. during the first render)."""
        return any(_stamp(p) != stamp for p, stamp in self._stamps.items())

    def on_change(self, changed: Iterable[str | os.PathLike]) -> Outcome | None:
        """A step if any of `changed` is a watched file, else None (another file in the same folder)."""
        watched = self.watched()
        if not any(Path(p).resolve() in watched for p in changed):
            return None
        return self.step()

    def step(self) -> Outcome:
        """Read, validate and (if anything changed) run the workflow once."""
        t0 = time.perf_counter()
        self._stamps = {p: _stamp(p) for p in self.watched()}  # before reading: a later save is news
        try:
            resolved = pipeline.load(self.path, self.overrides, plugins=self.settings.plugins, files=self.settings)
            keys = self._graph_keys(resolved)
        except WorkflowInvalid as exc:
            return Outcome(INVALID, time.perf_counter() - t0, exc.render())
        except FlowrunError as exc:  # a lock the files no longer match, a plugin that fails to load
            return Outcome(INVALID, time.perf_counter() - t0, exc.render())
        self.resolved = resolved
        for p in self.watched() - self._stamps.keys():  # input files this version reads for the first time
            self._stamps[p] = _stamp(p)
        if keys == self._keys:
            return Outcome(UNCHANGED, time.perf_counter() - t0)
        try:
            result = pipeline.run(resolved, self.settings, events=self.events, memory=self.memory, models=self.models)
        except FlowrunError as exc:  # a node failed: run.json records it, the other outputs stay
            self._keys = None
            return Outcome(FAILED, time.perf_counter() - t0, exc.render())
        self._keys = keys
        nodes = result.manifest["nodes"]
        return Outcome(
            RAN, time.perf_counter() - t0,
            executed=[NodeRun(n["id"], n["type"], n["cells"], n["seconds"]) for n in nodes if n["status"] == "executed"],
            cached=sum(1 for n in nodes if n["status"] != "executed"), files=result.files, manifest=result.manifest,
            out_dir=result.out_dir)

    def _graph_keys(self, resolved: "Resolved") -> frozenset[str]:
        """Every node's cache key: equal keys mean equal outputs, so there is nothing to run."""
        from flowrun.files import FileLookup
        from flowrun.graph.build import build

        graph = build(resolved, FileLookup.for_workflow(resolved.file, self.settings), self.settings.device)
        return frozenset(graph.tasks)



def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's modification time and size (None if it is gone): what changes when it is saved."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
