"""load → plan → run: what the command line and Python users call."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from flowrun.errors import FlowrunError, UsageError
from flowrun.nodes.registry import Registry, default_registry
from flowrun.safepath import remove_stale_temporaries
from flowrun.settings import Settings, default_out_dir
from flowrun.spec.document import load_document
from flowrun.spec.source import read_source
from flowrun.spec.sweep import Overrides

if TYPE_CHECKING:  # typing only: these import networkx, which `validate` does not need
    from flowrun.cache.memory import MemoryCache
    from flowrun.execute.events import Events
    from flowrun.graph.build import Graph
    from flowrun.graph.plan import Step
    from flowrun.graph.resolve import Resolved

_registries: dict[tuple[str, ...], Registry] = {}


def registry(plugins: Iterable[str] = ()) -> Registry:
    """The node registry: built-in families plus plugins (entry points, $FLOWRUN_PLUGINS, `plugins`)."""
    names = tuple(plugins)
    if names not in _registries:
        try:
            _registries[names] = default_registry(names)
        except ImportError as exc:
            raise UsageError(f"cannot load node plugin: {exc}") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return _registries[names]


def load(path: str | os.PathLike, overrides: Overrides | None = None, *, plugins: Iterable[str] = (),
         reg: Registry | None = None, files: Settings | None = None) -> "Resolved":
    """Read, validate and expand a workflow file. With `files` (the settings that say where models are
    looked up), also check that every model, LoRA and input file it names exists. Raises WorkflowInvalid
    listing every problem."""
    from flowrun.graph.resolve import resolve

    source = read_source(str(path))
    spec = load_document(source)
    resolved = resolve(spec, source, reg or registry(plugins), overrides)
    if files is not None:
        from flowrun.files import FileLookup
        from flowrun.graph.files import check

        check(resolved, FileLookup.from_settings(files, resolved.file))
    return resolved


def _build(resolved: "Resolved", settings: Settings) -> "Graph":
    from flowrun.files import FileLookup
    from flowrun.graph.build import build

    return build(resolved, FileLookup.from_settings(settings, resolved.file), settings.device)


def _cache(settings: Settings, memory: "MemoryCache | None" = None):
    from flowrun.cache.fsspec_store import open_store
    from flowrun.cache.memory import MemoryCache
    from flowrun.cache.tiers import NodeCache

    if not settings.use_cache:
        return None
    return NodeCache(memory if memory is not None else MemoryCache(settings.memory_bytes), open_store(settings.cache_dir))


def estimate(steps: list["Step"], settings: Settings) -> tuple[float, list[str]]:
    """Estimated seconds for the steps that will run, from timings of earlier runs (and the node types
    that have none)."""
    from flowrun.execute import timings
    from flowrun.graph.plan import RUN

    data = timings.load(settings.local_cache_dir)
    return timings.estimate(data, [s.task for s in steps if s.action == RUN])


def plan(resolved: "Resolved", settings: Settings | None = None) -> tuple["Graph", list["Step"]]:
    """The merged graph of all cells and, for each node, whether it will run, come from the cache, or be skipped."""
    from flowrun.graph.plan import plan as make_plan

    settings = settings or Settings()
    graph = _build(resolved, settings)
    return graph, make_plan(graph, _cache(settings))


@contextmanager
def _ignoring_interrupts():
    """While run.json is written: a second Ctrl-C waits until it is done (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class RunResult:
    manifest: dict[str, Any]
    out_dir: Path
    manifest_path: Path

    @property
    def files(self) -> list[Path]:
        return [self.out_dir / f for n in self.manifest["nodes"] for f in n["outputs"]]


def run(resolved: "Resolved", settings: Settings | None = None, *, events: "Events | None" = None,
        memory: "MemoryCache | None" = None) -> RunResult:
    """Run a loaded workflow and write its outputs and run.json. Raises RunFailed if a node fails (run.json
    is written all the same, with the failure recorded)."""
    from flowrun.execute.context import Services
    from flowrun.execute.manifest import build_manifest, now, write_manifest
    from flowrun.execute.runner import Runner
    from flowrun.graph.plan import RUN
    from flowrun.graph.plan import plan as make_plan

    settings = settings or Settings()
    out_dir = Path(settings.out_dir or default_out_dir(resolved.file))
    cache = _cache(settings, memory)
    graph = _build(resolved, settings)
    steps = make_plan(graph, cache)
    if settings.executor == "ray":
        from flowrun.execute.ray_executor import require_ray

        require_ray()
    if settings.executor == "ray" and any(s.action == RUN for s in steps):
        from flowrun.execute.events import Events as NoEvents
        from flowrun.execute.ray_executor import RayExecutor, RayOptions

        runner = RayExecutor(graph, steps, settings, out_dir, events or NoEvents(), settings.ray_options or RayOptions())
    else:  # on this machine; also a cluster run with nothing to compute, which only restores files
        runner = Runner(graph, steps, cache, out_dir, Services.for_run(settings, resolved.file), events,
                        batch=settings.batch,
                        keep_going=settings.keep_going, max_batch=settings.max_batch)
    started, t0 = now(), time.perf_counter()
    status, error = "ok", None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        runner.run()
    except FlowrunError as exc:
        status, error = "failed", exc.render()
        raise
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    finally:
        manifest = build_manifest(graph, runner.records, status=status, started=started,
                                  seconds=time.perf_counter() - t0, error=error,
                                  cells=getattr(runner, "cells", None), executor=settings.executor)
        if status == "ok" and settings.contact_sheets:
            from flowrun.execute.contact_sheet import write_sheets

            manifest["sheets"] = write_sheets(manifest, out_dir)
        with _ignoring_interrupts():
            if out_dir.is_dir():
                path = write_manifest(out_dir, manifest)
            if settings.local_cache_dir is not None:
                from flowrun.execute import timings

                timings.record(settings.local_cache_dir, manifest)
    if settings.local_cache_dir is not None and settings.disk_max_bytes and cache is not None:
        from flowrun.cache.housekeeping import prune

        prune(cache.disk, settings.disk_max_bytes)
    return RunResult(manifest, out_dir, path)
