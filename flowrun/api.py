"""What the command line and Python users call: load → plan → run, and the commands around it.

The pipeline itself lives in flowrun.pipeline; this module is the one door to it and to what builds on
it: ComfyUI export and import, reproducing an image, regression tests, node descriptions, the workflow
schema, and looking after the cache folder. Each function imports its heavy modules only when called,
so that `flowrun validate` stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from flowrun.cache.housekeeping import MAX_SIZE_ENV
from flowrun.errors import UsageError
from flowrun.execute.ray_options import RayOptions
from flowrun.pipeline import RunResult, Side, diff, diff_sides, estimate, load, lock_files, plan, pull_models, registry, run
from flowrun.settings import Settings, cache_location, default_cache_dir
from flowrun.spec.schema import SCHEMA_PATH
from flowrun.spec.sweep import Overrides

if TYPE_CHECKING:
    import threading

    from flowrun.cache.disk import DiskStore
    from flowrun.execute.events import Events
    from flowrun.execute.ranking import RankedCell
    from flowrun.graph.resolve import Resolved
    from flowrun.interop.reproduce import Reproduction
    from flowrun.regress.run import RegressionRun
    from flowrun.watch.session import Outcome

__all__ = [
    "MAX_SIZE_ENV", "RayOptions", "RunResult", "SCHEMA_PATH", "Side", "diff", "diff_sides", "cache_clear", "cache_folder", "cache_info",
    "cache_prune", "describe_nodes", "estimate", "export_comfyui", "import_comfyui", "load", "lock_files", "plan", "pull_models", "rank",
    "registry", "reproduce", "run", "run_tests", "schema_is_current", "schema_text", "watch", "write_schema",
]


def export_comfyui(resolved: "Resolved", cell: str | None = None) -> dict[str, dict[str, Any]]:
    """ComfyUI API-format graphs of a loaded workflow, one per cell (or only the cell labelled `cell`),
    keyed by cell label. UsageError for an unknown cell or a node type ComfyUI does not have."""
    from flowrun.interop.comfyui import export_cells

    try:
        return export_cells(resolved, cell)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def import_comfyui(source: str | os.PathLike, plugins: Iterable[str] = ()) -> str:
    """A flowrun workflow (YAML text) from a ComfyUI graph: API or UI format, a .json file or a PNG's text
    chunks."""
    from flowrun.interop.comfy_import import from_api, load_graph

    source, reg = Path(source), registry(plugins)
    return from_api(load_graph(source, reg), reg, name=source.stem)


def reproduce(image: str | os.PathLike, settings: Settings | None = None,
              workflow_dir: str | os.PathLike | None = None) -> "Reproduction":
    """Render `image` again from the workflow flowrun stored in it, and say whether it is identical.
    Relative file names in that workflow resolve against workflow_dir (default: the image's folder)."""
    from flowrun.interop.reproduce import reproduce as reproduce_image

    return reproduce_image(Path(image), settings or Settings(), Path(workflow_dir) if workflow_dir else None)


def rank(run_dir: str | os.PathLike, by: str, top: int | None = None,
         copy_to: str | os.PathLike | None = None) -> list["RankedCell"]:
    """The cells of a finished run ordered by the score `by` names (a metric such as clip_score, or a
    scoring node's id), best first, at most `top`; with `copy_to`, their files are copied there too."""
    from flowrun.execute.ranking import copy_ranked, rank as rank_cells

    ranked = rank_cells(run_dir, by, top)
    if copy_to is not None:
        copy_ranked(run_dir, ranked, copy_to)
    return ranked


def run_tests(paths: Iterable[str | os.PathLike] = (), settings: Settings | None = None,
              report_dir: str | os.PathLike = "out/flowrun-test", *, update: bool = False,
              backend: str | None = None, accept: Iterable[str] = (), accept_env_drift: bool = False,
              changed_since: str | None = None) -> "RegressionRun":
    """Render the regression cases under `paths` (default: workflows/) and compare them with their goldens
    (or rewrite the goldens: all with update; those of the `accept`ed CASE or CASE/CELL that differ; those
    that differ by environment alone with accept_env_drift); the renders and the HTML, JUnit and JSON
    reports go to report_dir. With changed_since (a git revision), only the cases a change since then can
    alter are rendered."""
    from flowrun.regress.run import run_suite

    return run_suite([Path(p) for p in paths], settings or Settings(), Path(report_dir), update=update,
                     backend=backend, accept=frozenset(accept), accept_env_drift=accept_env_drift,
                     changed_since=changed_since)


def watch(path: str | os.PathLike, report: "Callable[[Outcome], None]", overrides: Overrides | None = None,
          settings: Settings | None = None, *, events: "Events | None" = None, serve: int | None = None,
          served: "Callable[[str], None] | None" = None, stop: "threading.Event | None" = None) -> None:
    """Render the workflow at `path`, then again on every save of it (or of an input file it reads), in
    this process, keeping models and results in memory; each step's Outcome (ran, unchanged, invalid,
    failed) goes to `report`. With `serve` (a port, 0 for a free one), a page on 127.0.0.1 shows the
    sweep grid and the samplers' previews; `served` gets its URL. Until `stop` is set or Ctrl-C."""
    from flowrun.watch.loop import watch_file
    from flowrun.watch.session import Session

    session = Session(path, overrides, settings or Settings(), events)
    watch_file(session, report, serve=serve, served=served, stop=stop)


def describe_nodes(types: Iterable[str] = (), plugins: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Node types (default: all) as plain data: inputs, outputs, and fields with defaults and ranges.
    UsageError naming any type that does not exist."""
    from flowrun.spec.node_info import describe_node

    reg = registry(plugins)
    names = list(types) or reg.names()
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise UsageError(f"unknown node type(s): {', '.join(unknown)}")
    return [describe_node(reg.nodes[n]) for n in names]


def schema_text(plugins: Iterable[str] = ()) -> str:
    """The JSON Schema of workflow files (for editors' YAML language server), with plugins' node types."""
    from flowrun.spec.schema import schema_text as make_schema_text

    return make_schema_text(registry(plugins))


def write_schema(path: str | os.PathLike = SCHEMA_PATH, plugins: Iterable[str] = ()) -> Path:
    """Write the JSON Schema of workflow files to `path`; returns the path."""
    from flowrun.safepath import write_atomic

    write_atomic(path, schema_text(plugins).encode())
    return Path(path)


def schema_is_current(path: str | os.PathLike = SCHEMA_PATH, plugins: Iterable[str] = ()) -> bool:
    """Whether the schema file at `path` is what write_schema would write now."""
    path = Path(path)
    return (path.read_text() if path.exists() else "") == schema_text(plugins)


def _disk_store(cache_dir: str | os.PathLike | None) -> "DiskStore":
    from flowrun.cache.disk import DiskStore

    location = cache_location(str(cache_dir)) if cache_dir else default_cache_dir()
    if isinstance(location, str):
        raise UsageError(f"`flowrun cache` looks after a cache folder on this machine, not {location}; "
                         "use the storage's own tools for a cache at a URL")
    return DiskStore(location)


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder that the cache_* functions look after: `cache_dir`, else $FLOWRUN_CACHE_DIR or the
    user cache. UsageError for a cache at a URL."""
    return _disk_store(cache_dir).root


def cache_info(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Entries, bytes, size limit, oldest and newest use, and temporary folders left by interrupted writes."""
    from flowrun.cache import housekeeping

    return housekeeping.info(_disk_store(cache_dir), housekeeping.default_max_bytes())


def cache_prune(cache_dir: str | os.PathLike | None = None, max_size: str | int | None = None,
                older_than_days: float | None = None) -> tuple[int, int]:
    """Evict least recently used entries down to `max_size` (bytes, or text such as '5G'; default: the
    limit, $FLOWRUN_CACHE_MAX_SIZE or 20G), and those unused for older_than_days. Returns (entries
    removed, bytes freed)."""
    from flowrun.cache import housekeeping

    try:
        limit = (housekeeping.default_max_bytes() if max_size is None
                 else max_size if isinstance(max_size, int) else housekeeping.parse_size(max_size))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    older_than = older_than_days * 86400 if older_than_days is not None else None
    return housekeeping.prune(_disk_store(cache_dir), limit, older_than)


def cache_clear(cache_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """Remove every entry of the cache folder. Returns (entries removed, bytes freed)."""
    from flowrun.cache import housekeeping

    return housekeeping.clear(_disk_store(cache_dir))
