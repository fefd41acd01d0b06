"""The core pipeline, load → plan → run: read and validate a workflow, plan its nodes against the cache,
render them and write the outputs and run.json.

flowrun.api offers these to users with the commands around them; regression tests and reproduction
(which the api also offers) build on this module, not on the api.
"""

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
    from flowrun.execute.context import ModelPool
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
    return load_source(read_source(str(path)), overrides, plugins=plugins, reg=reg, files=files)


def load_text(text: str, path: str | os.PathLike, overrides: Overrides | None = None, *,
              plugins: Iterable[str] = (), files: Settings | None = None) -> "Resolved":
    """`load` for a workflow's text as it was elsewhere (a git revision), read as if it were at `path`:
    names of input files resolve beside it."""
    from flowrun.spec.source import parse_yaml

    return load_source(parse_yaml(text, str(path)), overrides, plugins=plugins, files=files)


def load_source(source, overrides: Overrides | None = None, *, plugins: Iterable[str] = (),
                reg: Registry | None = None, files: Settings | None = None) -> "Resolved":
    """`load` for a parsed source (flowrun.spec.source.Source)."""
    from flowrun.graph.resolve import resolve

    spec = load_document(source)
    resolved = resolve(spec, source, reg or registry(plugins), overrides)
    if files is not None:
        from flowrun.files import FileLookup
        from flowrun.graph.files import check

        check(resolved, FileLookup.for_workflow(resolved.file, files))
    return resolved


@dataclass
class Side:
    """One side of a diff: a label ("a.yaml", "HEAD~1:a.yaml") and the workflow as it was there."""

    label: str
    resolved: "Resolved"


def diff_sides(args: list[str], plugins: Iterable[str] = ()) -> tuple[Side, Side]:
    """The two sides `flowrun diff` compares: A.yaml B.yaml, or REV [REV2] FILE (REV against the working
    tree, or REV against REV2)."""
    from flowrun.revisions import text_at

    if len(args) == 2 and all(Path(a).is_file() for a in args):
        return Side(args[0], load(args[0], plugins=plugins)), Side(args[1], load(args[1], plugins=plugins))
    if len(args) not in (2, 3):
        raise UsageError("flowrun diff takes A.yaml B.yaml, or REV [REV2] -- FILE")
    *revs, file = args
    if not Path(file).is_file():
        raise UsageError(f"no workflow file '{file}'")

    def at(rev: str) -> Side:
        text = text_at(rev, file)
        if text is None:
            raise UsageError(f"{file} does not exist at revision {rev}")
        return Side(f"{rev}:{file}", load_text(text, file, plugins=plugins))

    left = at(revs[0])
    right = at(revs[1]) if len(revs) == 2 else Side(file, load(file, plugins=plugins))
    return left, right


def diff(left: Side, right: Side, settings: Settings | None = None, render_dir: str | os.PathLike | None = None):
    """The changes from `left` to `right` (flowrun.graph.diff.WorkflowDiff) and, with render_dir, an HTML
    page there showing both sides' renders of every output cell that changed (the path, else None)."""
    from flowrun.files import FileLookup
    from flowrun.graph.diff import diff as workflow_diff

    settings = settings or Settings()
    result = workflow_diff(left.resolved, right.resolved, FileLookup.for_workflow(left.resolved.file, settings),
                           FileLookup.for_workflow(right.resolved.file, settings), settings.device,
                           settings.dtype)
    if render_dir is None:
        return result, None
    from dataclasses import replace

    from flowrun.graph.diff_page import write_page

    render_dir = Path(render_dir)
    runs = [run(side.resolved, replace(settings, out_dir=render_dir / name))
            for side, name in ((left, "a"), (right, "b"))]
    return result, write_page(render_dir, left.label, right.label, result, [r.manifest for r in runs])


def lock_files(paths: Iterable[str | os.PathLike], settings: Settings | None = None,
               lock_path: str | os.PathLike | None = None) -> tuple[Path, list[tuple[str, str, str]]]:
    """Write or update the lock for the files these workflows read (every cell): `lock_path`, else the
    nearest flowrun.lock above the first workflow, else a new one beside it. Returns the lock's path and
    (status, key, sha256) per file, status "added", "changed" or "unchanged". Raises WorkflowInvalid
    listing every missing file."""
    from dataclasses import replace

    from flowrun.files import FileLookup
    from flowrun.graph.files import named_files
    from flowrun.lockfile import NAME, Lock, find, size_of

    settings = replace(settings or Settings(), lock=None)  # hashes are taken as they are, not checked
    paths = [Path(p) for p in paths]
    resolved = [load(p, plugins=settings.plugins, files=settings) for p in paths]
    if lock_path is None:
        lock_path = find(paths[0].resolve().parent) or paths[0].resolve().parent / NAME
    lock = Lock.read(lock_path) if Path(lock_path).is_file() else Lock(Path(lock_path))
    report: dict[str, tuple[str, str, str]] = {}
    for r in resolved:
        lookup = FileLookup.for_workflow(r.file, settings)
        for kind, name in named_files(r):
            path = lookup.path(kind, name)
            sha = lookup.fingerprint(kind, name)
            status = lock.record(kind, name, path, sha, size_of(path))
            key = lock.key(kind, name, path)[1]
            report.setdefault(key, (status, key, sha))
    lock.write()
    return lock.path, list(report.values())


def pull_models(paths: Iterable[str | os.PathLike] = (), settings: Settings | None = None,
                lock_path: str | os.PathLike | None = None, progress=None) -> tuple[Path, list, list[str]]:
    """Fetch the models a lock pins and the model folders lack (those the workflows at `paths` read, or
    all the lock lists): into the first --models-dir, else $FLOWRUN_MODELS, else models/ beside the lock.
    Returns (the lock's path, what was fetched, the missing keys that have no source). Raises UsageError
    when there is no lock, PullError when a download fails."""
    from flowrun.files import MODELS_ENV, FileLookup
    from flowrun.graph.files import named_files
    from flowrun.lockfile import Lock, find
    from flowrun.pull import download, wanted

    settings = settings or Settings()
    paths = [Path(p) for p in paths]
    start = paths[0].resolve().parent if paths else Path.cwd()
    lock_path = Path(lock_path) if lock_path else find(start)
    if lock_path is None or not lock_path.is_file():
        raise UsageError(f"no flowrun.lock in {start} or above it: write one with `flowrun lock`, or name one "
                         f"with --lock")
    lock = Lock.read(lock_path)
    keys = None
    if paths:
        keys = {f"{kind}/{name}" for p in paths for kind, name in named_files(load(p, plugins=settings.plugins))}
    lookup = FileLookup(lock.path.parent, tuple(settings.models_dirs))

    def present(kind: str, name: str) -> bool:
        try:
            lookup.path(kind, name)
            return True
        except (OSError, ValueError):
            return False

    target = Path(settings.models_dirs[0] if settings.models_dirs else
                  os.environ.get(MODELS_ENV, "").split(os.pathsep)[0] or lock.path.parent / "models")
    fetch, no_source = wanted(lock, target, present, keys)
    for item in fetch:
        download(item, progress)
    return lock.path, fetch, no_source


def estimate(steps: list["Step"], settings: Settings) -> tuple[float, list[str]]:
    """Estimated seconds for the steps that will run, from timings of earlier runs (and the node types
    that have none)."""
    from flowrun.execute import timings
    from flowrun.graph.plan import RUN

    data = timings.load(settings.local_cache_dir)
    return timings.estimate(data, [s.task for s in steps if s.action == RUN])


def plan(resolved: "Resolved", settings: Settings | None = None) -> tuple["Graph", list["Step"]]:
    """The merged graph of all cells and, for each node, whether it will run, come from the cache, or be skipped."""
    from flowrun.execute.resources import open_cache
    from flowrun.files import FileLookup
    from flowrun.graph.build import build
    from flowrun.graph.plan import plan as make_plan

    settings = settings or Settings()
    graph = build(resolved, FileLookup.for_workflow(resolved.file, settings), settings.device, settings.dtype)
    return graph, make_plan(graph, open_cache(settings))


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
    """What a run wrote: its manifest (run.json's content), the output folder and run.json's path."""

    manifest: dict[str, Any]
    out_dir: Path
    manifest_path: Path

    @property
    def files(self) -> list[Path]:
        """Every output file, in the manifest's order."""
        return [self.out_dir / f for n in self.manifest["nodes"] for f in n["outputs"]]


def run(resolved: "Resolved", settings: Settings | None = None, *, events: "Events | None" = None,
        memory: "MemoryCache | None" = None, models: "ModelPool | None" = None) -> RunResult:
    """Run a loaded workflow and write its outputs and run.json. Raises RunFailed if a node fails (run.json
    is written all the same, with the failure recorded). `memory` and `models`, kept by the caller, carry
    results and loaded models from one run to the next (flowrun watch)."""
    from flowrun.execute.executor import cells_of, make_executor
    from flowrun.execute.manifest import build_manifest, now, write_manifest
    from flowrun.execute.resources import open_cache, services
    from flowrun.graph.build import build
    from flowrun.graph.plan import plan as make_plan

    settings = settings or Settings()
    if settings.animate is not None:
        from flowrun.execute.animate import axis_problem

        problem = axis_problem(settings.animate, resolved.cells)
        if problem:
            raise UsageError(problem)
    out_dir = Path(settings.out_dir or default_out_dir(resolved.file))
    cache = open_cache(settings, memory)
    shared = services(resolved.file, settings, models)
    graph = build(resolved, shared.lookup, settings.device, settings.dtype)
    steps = make_plan(graph, cache)
    executor = make_executor(settings, graph, steps, cache, out_dir, shared, events)
    started, t0 = now(), time.perf_counter()
    status, error = "ok", None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        executor.run()
    except FlowrunError as exc:
        status, error = "failed", exc.render()
        raise
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    finally:
        manifest = build_manifest(graph, executor.records, status=status, started=started,
                                  seconds=time.perf_counter() - t0, error=error,
                                  cells=cells_of(executor), executor=settings.executor)
        if status == "ok" and settings.contact_sheets:
            from flowrun.execute.contact_sheet import write_sheets

            manifest["sheets"] = write_sheets(manifest, out_dir)
        if status == "ok" and settings.animate:
            from flowrun.execute.animate import write_animations

            zipped = set(resolved.spec.sweep.zip) if resolved.spec.sweep else set()
            partners = frozenset(zipped - {settings.animate}) if settings.animate in zipped else frozenset()
            manifest["animations"] = write_animations(manifest, out_dir, settings.animate, settings.animate_fps,
                                                      partners)
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
