"""The command line: argument parsing and rendering only; the work is done by flowrun.api.

Exit codes: 0 success, 1 a node failed at run time, 2 invalid workflow or usage, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import click

from flowrun import __version__, api
from flowrun.errors import FlowrunError, UsageError, WorkflowInvalid
from flowrun.execute.events import Events
from flowrun.safepath import write_atomic
from flowrun.settings import DTYPES, Settings, cache_location, default_cache_dir, dtype_problem
from flowrun.spec.sweep import Overrides

_debug = bool(os.environ.get("FLOWRUN_DEBUG"))


def _overrides(sets, sweeps, max_cells) -> Overrides:
    return Overrides.parse(sets, sweeps, max_cells)


@contextmanager
def _as_click_usage():
    """Show the api's UsageError as click shows a bad argument: with the command's usage line."""
    try:
        yield
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


LOCK_META = "flowrun.lock"
DTYPE_META = "flowrun.dtype"


def sweep_options(fn):
    fn = click.option("--max-cells", type=click.IntRange(min=1), help="Allow a sweep of up to this many cells.")(fn)
    fn = click.option("--sweep", "sweeps", multiple=True, metavar="NAME=A,B,...", help="Sweep NAME over these values.")(fn)
    fn = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a param (pins a swept one).")(fn)
    fn = click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import node types from MODULE.")(fn)
    return fn


def lookup_options(fn):
    """Where the files a workflow names are looked up (run, plan, validate and test take the same)."""
    fn = click.option("--allow-pickle", is_flag=True,
                      help="Also load .ckpt/.pt checkpoints (weights only). Pickles can run code: trust the source.")(fn)
    fn = click.option("--models-dir", "models_dirs", multiple=True, type=click.Path(file_okay=False),
                      help="Folder with checkpoints/ and loras/, searched first (also: $FLOWRUN_MODELS).")(fn)
    return fn


def _lock_choice(ctx, param, value):
    """--lock PATH / --no-lock, kept on the context for _settings (every command with cache options takes them)."""
    if value is not None and value is not False:
        ctx.meta[LOCK_META] = None if value is True else str(value)
    return value


def lock_options(fn):
    fn = click.option("--no-lock", is_flag=True, default=None, expose_value=False, callback=_lock_choice,
                      help="Do not check the files against a flowrun.lock.")(fn)
    fn = click.option("--lock", type=click.Path(dir_okay=False), expose_value=False, callback=_lock_choice,
                      help="Check the files read against this lock (default: the nearest flowrun.lock in the "
                           "workflow's folder or above, up to the repository root).")(fn)
    return fn


def _dtype_choice(ctx, param, value):
    """--dtype, kept on the context for _settings (every command with cache options takes it)."""
    if value is not None:
        ctx.meta[DTYPE_META] = value
    return value


def render_options(fn):
    """The output folder and batching options that `run` and `watch` share."""
    fn = click.option("--max-batch", type=click.IntRange(min=1), metavar="N",
                      help="Batch at most N cells in one sampler call (default: all that can batch together).")(fn)
    fn = click.option("--no-batch", is_flag=True,
                      help="Sample each cell alone instead of batching cells that differ in seed/cfg.")(fn)
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                        help="Output folder (default: out/<workflow name>).")(fn)


def cache_options(fn):
    fn = click.option("--dtype", type=click.Choice(DTYPES), expose_value=False, callback=_dtype_choice,
                      help="Precision of the models (default: float32 on the CPU, float16 on CUDA). Part of the "
                           "cache keys and of the goldens' folder (cpu-bf16/...).")(fn)
    fn = click.option("--device", metavar="DEVICE", help="torch device for models (default: cuda if available, else cpu).")(fn)
    fn = lock_options(fn)
    fn = lookup_options(fn)
    fn = click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")(fn)
    fn = click.option("--cache-dir", metavar="DIR|URL",
                      help=f"Cache folder, or an fsspec URL such as s3://bucket/flowrun for a cache shared over the "
                           f"network (default: $FLOWRUN_CACHE_DIR or {default_cache_dir()}).")(fn)
    return fn


def _settings(cache_dir, no_cache, out=None, plugins=(), models_dirs=(), allow_pickle=False, device=None) -> Settings:
    s = Settings(out_dir=out, use_cache=not no_cache, plugins=tuple(plugins), models_dirs=tuple(models_dirs),
                 allow_pickle=allow_pickle, device=device)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and LOCK_META in ctx.meta:
        s.lock = ctx.meta[LOCK_META]
    if ctx is not None and DTYPE_META in ctx.meta:
        s.dtype = ctx.meta[DTYPE_META]
        why = dtype_problem(device, s.dtype)
        if why:
            raise click.BadParameter(why, param_hint="'--dtype'")
    if cache_dir is not None:
        s.cache_dir = cache_location(str(cache_dir))
    return s


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowrun")
@click.option("--debug", is_flag=True, help="Show tracebacks for failures.")
def cli(debug: bool) -> None:
    """flowrun: reproducible latent-diffusion workflows from YAML."""
    global _debug
    _debug = debug or bool(os.environ.get("FLOWRUN_DEBUG"))


class ConsoleEvents(Events):
    """Node-by-node progress on stderr, with step counts inside long nodes on a terminal."""

    def __init__(self, quiet: bool = False, cell_names=None):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.cell_names = cell_names or []

    def node_start(self, task, index, total):
        cells = ""
        if len(self.cell_names) > 1:
            first = self.cell_names[task.cells[0]]
            cells = f" {first}" + (f" +{len(task.cells) - 1}" if len(task.cells) > 1 else "")
        self.label = f"[{index}/{total}] {task.node_id} ({task.type_name}){cells}"

    def node_step(self, task, step, total):
        if self.tty and not self.quiet:
            sys.stderr.write(f"\r{self.label} step {step}/{total}")
            sys.stderr.flush()

    def cells_done(self, done, total, labels, worker, seconds):
        if not self.quiet:
            shown = labels[0] + (f" +{len(labels) - 1}" if len(labels) > 1 else "")
            sys.stderr.write(f"[cells {done}/{total}] {shown} on {worker} {seconds:.2f}s\n")

    def warn(self, message):
        if not self.quiet:
            sys.stderr.write(f"warning: {message}\n")

    def node_end(self, task, status, seconds):
        if not self.quiet:
            sys.stderr.write(f"\r{self.label} {status} {seconds:.2f}s\x1b[K\n" if self.tty
                             else f"{self.label} {status} {seconds:.2f}s\n")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@sweep_options
@cache_options
@render_options
@click.option("--json", "as_json", is_flag=True, help="Print the run manifest as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where cells render: this process, or actors on a Ray cluster (pip install 'flowrun[ray]').")
@click.option("--address", metavar="auto|ray://HOST:PORT",
              help="Ray cluster to join (default: start one on this machine for the run).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Ray workers (default: one per CPU of the cluster, or per --gpus-per-worker GPUs).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0, metavar="N",
              help="GPUs each Ray worker reserves (fractions share a GPU).")
@click.option("--keep-going", is_flag=True,
              help="When a node fails, finish the other cells; the manifest lists every failure (exit 1).")
@click.option("--animate", metavar="AXIS",
              help="Also write the cells along sweep axis AXIS as one animated PNG per output node and per "
                   "combination of the other axes (animation-<node>[_<others>].png), frames in axis order.")
@click.option("--fps", type=click.FloatRange(min=0.01, max=1000.0), default=6.0, show_default=True,
              help="Frames per second of --animate's animations.")
def run(file, sets, sweeps, max_cells, plugins, cache_dir, no_cache, models_dirs, allow_pickle, device, out, as_json,
        quiet, no_batch, executor, address, workers, gpus_per_worker, max_batch, keep_going, animate, fps):
    """Run a workflow: every cell of its sweep, reusing cached nodes."""
    resolved = api.load(file, _overrides(sets, sweeps, max_cells), plugins=plugins)
    settings = _settings(cache_dir, no_cache, out, plugins, models_dirs, allow_pickle, device)
    settings.batch = not no_batch
    settings.keep_going = keep_going
    settings.max_batch = max_batch
    settings.executor = executor
    settings.animate, settings.animate_fps = animate, fps
    if executor == "ray":
        settings.ray_options = api.RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    elif address or workers or gpus_per_worker:
        raise UsageError("--address, --workers and --gpus-per-worker go with --executor ray")
    result = api.run(resolved, settings, events=ConsoleEvents(quiet or as_json, [c.label for c in resolved.cells]))
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
    elif not quiet:
        counts = {}
        for n in result.manifest["nodes"]:
            counts[n["status"]] = counts.get(n["status"], 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        click.echo(f"{len(result.files)} file(s) in {result.out_dir} ({summary}); manifest: {result.manifest_path}")
    return 0


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@sweep_options
@cache_options
@render_options
@click.option("-q", "--quiet", is_flag=True, help="No node-by-node progress, only a line per save.")
@click.option("--keep-going", is_flag=True, help="When a node fails, finish the other cells.")
@click.option("--serve", type=click.IntRange(0, 65535), is_flag=False, flag_value=0, default=None, metavar="[PORT]",
              help="Also serve a page on 127.0.0.1:PORT (alone or 0: a free port) showing the sweep grid, updated "
                   "as outputs land, with latent previews while sampling.")
def watch(file, sets, sweeps, max_cells, plugins, cache_dir, no_cache, models_dirs, allow_pickle, device, out, quiet,
          no_batch, max_batch, keep_going, serve):
    """Render a workflow, then again on every save, in one process that keeps its models loaded: only what
    changed re-runs; an invalid save shows its error and keeps the last outputs. Ctrl-C stops."""
    settings = _settings(cache_dir, no_cache, out, plugins, models_dirs, allow_pickle, device)
    settings.batch, settings.max_batch, settings.keep_going = not no_batch, max_batch, keep_going
    click.echo(f"watching {file} (Ctrl-C to stop)", err=True)

    def report(outcome) -> None:
        stamp = time.strftime("%H:%M:%S")
        if outcome.status in ("invalid", "failed"):
            click.echo(outcome.message, err=True)
            what = "invalid" if outcome.status == "invalid" else "a node failed"
            click.echo(f"[{stamp}] {file}: {what}; the last outputs stay; waiting for the next save", err=True)
        elif outcome.status == "unchanged":
            click.echo(f"[{stamp}] nothing changed (every node's cache key is the same): nothing re-ran")
        else:
            click.echo(f"[{stamp}] {_ran(outcome.executed)}, {outcome.cached} cached, in {outcome.seconds:.2f} s; "
                       f"{len(outcome.files)} file(s) in {outcome.out_dir}")

    api.watch(file, report, _overrides(sets, sweeps, max_cells), settings,
              events=ConsoleEvents(quiet), serve=serve, served=lambda url: click.echo(f"serving {url}", err=True))
    return 0


def _ran(executed) -> str:
    """The nodes a run executed, once per node id with its cells and seconds added up: "re-ran sample x4 1.20 s"."""
    if not executed:
        return "re-ran no node"
    seconds: dict[str, float] = {}
    count: dict[str, int] = {}
    for n in executed:
        seconds[n.node] = seconds.get(n.node, 0.0) + n.seconds
        count[n.node] = count.get(n.node, 0) + 1
    parts = [f"{node}{f' x{count[node]}' if count[node] > 1 else ''} {t:.2f} s" for node, t in seconds.items()]
    return f"re-ran {len(executed)} node(s): " + ", ".join(parts)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--by", required=True, metavar="SCORE", help="A score the run recorded: clip_score, clip_similarity, "
              "or the id of a scoring node.")
@click.option("--top", type=click.IntRange(min=1), metavar="N", help="Only the N best cells.")
@click.option("--copy", "copy_to", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Copy the ranked cells' files into DIR, named <rank>-<file>.")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
def rank(run_dir, by, top, copy_to, as_json):
    """List a run's cells by a score its scoring nodes recorded (CLIPScore...), best first."""
    ranked = api.rank(run_dir, by, top, copy_to)
    if as_json:
        click.echo(json.dumps([{"rank": r.rank, "cell": r.label, "score": r.score, "files": list(r.files)}
                               for r in ranked], indent=2))
        return 0
    for r in ranked:
        click.echo(f"{r.rank:>3}  {r.score:8.4f}  {r.label}  {' '.join(r.files)}")
    if copy_to is not None:
        click.echo(f"copied the files of {len(ranked)} cell(s) to {copy_to}")
    return 0


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@sweep_options
@lookup_options
@click.option("--no-file-check", is_flag=True,
              help="Check the workflow only, not that the models and inputs it names exist (e.g. in a CI job "
                   "that lints workflows without the models).")
def validate(files, sets, sweeps, max_cells, plugins, models_dirs, allow_pickle, no_file_check):
    """Check workflows and the files they name without running anything (imports no torch)."""
    settings = Settings(plugins=tuple(plugins), models_dirs=tuple(models_dirs), allow_pickle=allow_pickle)
    failed = 0
    for f in files:
        try:
            resolved = api.load(f, _overrides(sets, sweeps, max_cells), plugins=plugins,
                                files=None if no_file_check else settings)
        except WorkflowInvalid as exc:
            failed += 1
            click.echo(exc.render(), err=True)
            continue
        n = len(resolved.cells)
        click.echo(f"ok {f}: {len(resolved.spec.nodes)} nodes, {n} cell{'s' if n != 1 else ''}")
    return 2 if failed else 0


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@sweep_options
@cache_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(file, sets, sweeps, max_cells, plugins, cache_dir, no_cache, models_dirs, allow_pickle, device, as_json):
    """Show the cells and, node by node in execution order, whether it runs or comes from the cache."""
    resolved = api.load(file, _overrides(sets, sweeps, max_cells), plugins=plugins)
    settings = _settings(cache_dir, no_cache, plugins=plugins, models_dirs=models_dirs, allow_pickle=allow_pickle,
                         device=device)
    graph, steps = api.plan(resolved, settings)
    seconds, unknown = api.estimate(steps, settings)
    all_cells = len(resolved.cells)

    def cells_of(task):
        labels = graph.cell_labels(task)
        return "all" if len(labels) == all_cells and all_cells > 1 else ",".join(labels)

    if as_json:
        click.echo(json.dumps({
            "cells": [{"index": c.index, "label": c.label, "values": c.values} for c in resolved.cells],
            "nodes": [{"id": s.task.node_id, "type": s.task.type_name, "key": s.task.key, "action": s.action,
                       "reason": s.reason, "cells": graph.cell_labels(s.task)} for s in steps],
            "unused": graph.unused,
            "estimated_seconds": round(seconds, 3), "no_timings_for": unknown,
        }, indent=2))
        return 0
    click.echo(f"{file}: {all_cells} cell{'s' if all_cells != 1 else ''}")
    for c in resolved.cells:
        click.echo(f"  {c.index:>3}  {c.label}")
    click.echo("nodes, in execution order:")
    width = max((len(s.task.node_id) for s in steps), default=4)
    for s in steps:
        click.echo(f"  {s.action:<6}  {s.task.node_id:<{width}}  {s.task.type_name:<20} cells: {cells_of(s.task):<16} {s.reason}")
    counts = {a: sum(1 for s in steps if s.action == a) for a in ("run", "cached", "skip")}
    click.echo(f"{len(steps)} nodes: {counts['run']} to run, {counts['cached']} cached, {counts['skip']} not needed")
    if counts["run"]:
        note = f" (no earlier timings for {', '.join(unknown)})" if unknown else ""
        click.echo(f"estimated time: {seconds:.1f} s from earlier runs{note}")
    if graph.unused:
        click.echo(f"not connected to any output (never run): {', '.join(graph.unused)}")
    return 0


@cli.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@cache_options
@click.option("--update", is_flag=True, help="Write or rewrite the goldens from these renders, listing each change.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/flowrun-test"),
              show_default=True, help="Folder for the renders and the HTML, JUnit and JSON reports.")
@click.option("--accept", "accept", multiple=True, metavar="CASE[/CELL]",
              help="Rewrite the goldens of this case (or one cell of it) that differ, and no others.")
@click.option("--accept-env-drift", is_flag=True,
              help="Rewrite the goldens that differ only because the environment changed (same graph).")
@click.option("--changed-since", metavar="REV",
              help="Only the cases a change since this git revision can alter (graph keys differ, or the goldens "
                   "were rendered in another environment).")
@click.option("--backend", help="Golden set to compare with (default: cuda on a GPU, else cpu).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import node types from MODULE.")
def test_cmd(paths, cache_dir, no_cache, models_dirs, allow_pickle, device, update, accept, accept_env_drift,
             changed_since, report_dir, backend, plugins):
    """Render regression cases and compare them with their golden images (default path: workflows/)."""
    settings = _settings(cache_dir, no_cache, None, plugins, models_dirs, allow_pickle, device)
    tested = api.run_tests(paths, settings, report_dir, update=update, backend=backend, accept=accept,
                           accept_env_drift=accept_env_drift, changed_since=changed_since)
    if changed_since is not None:
        for wf, why in tested.selected:
            click.echo(f"testing {wf}: {why}")
        if not tested.results:
            click.echo(f"no case can render differently since {changed_since}")
            return 0
    if not tested.results:
        click.echo(f"no workflows found in {', '.join(map(str, tested.paths))}", err=True)
        return 2
    for r in tested.results:
        if r.error:
            click.echo(f"ERROR {r.workflow}:\n{r.error}", err=True)
        for o in r.outcomes:
            click.echo(f"{o.grade.upper():4}  {o.case} [{', '.join(o.cells)}] {o.file}: {o.message}")
            if o.grade != "pass" and o.golden is not None:
                click.echo(f"      accept with: flowrun test {o.workflow} --accept {o.accept_token}")
    for change in tested.changes:
        click.echo(f"golden {change}")
    c = tested.counts
    click.echo(f"{c['pass']} pass, {c['warn']} warn, {c['fail']} fail, {c['error']} error; report: {tested.html_report}")
    return tested.exit_code


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@sweep_options
@click.option("--cell", help="Export only this cell (by label).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the JSON files.")
def export(file, sets, sweeps, max_cells, plugins, cell, out):
    """Write ComfyUI's API format: one JSON file per sweep cell (or --cell)."""
    resolved = api.load(file, _overrides(sets, sweeps, max_cells), plugins=plugins)
    with _as_click_usage():
        graphs = api.export_comfyui(resolved, cell)
    single = len(resolved.cells) == 1
    for label, graph in graphs.items():
        path = out / (f"{file.stem}.json" if single else f"{file.stem}-{label}.json")
        write_atomic(path, (json.dumps(graph, indent=2) + "\n").encode())
        click.echo(f"wrote {path}")
    return 0


@cli.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Workflow file to write (default: stdout).")
def import_cmd(source, out):
    """Convert a ComfyUI graph (API or UI format, .json or a PNG's text chunks) into a flowrun workflow."""
    text = api.import_comfyui(source)
    if out is None:
        click.echo(text, nl=False)
        return 0
    write_atomic(out, text.encode())
    click.echo(f"wrote {out}", err=True)
    return 0


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@cache_options
@click.option("--workflow-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where relative file names in the image's workflow resolve (default: the image's folder).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the new render.")
def reproduce(image, cache_dir, no_cache, models_dirs, allow_pickle, device, workflow_dir, out):
    """Render an image again from the workflow flowrun stored in it; exit 0 if identical, 1 if not."""
    settings = _settings(cache_dir, no_cache, out, (), models_dirs, allow_pickle, device)
    r = api.reproduce(image, settings, workflow_dir)
    click.echo(f"{image}: {r.message} (new render: {r.new})")
    return 0 if r.identical else 1


@cli.command("diff")
@click.argument("args", nargs=-1, required=True)
@cache_options
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import node types from MODULE.")
@click.option("--render", "render", is_flag=True, help="Render both sides (cached) and write an HTML page of the "
                                                        "output cells that change.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/flowrun-diff"),
              show_default=True, help="Folder for --render's renders and page.")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def diff_cmd(args, cache_dir, no_cache, models_dirs, allow_pickle, device, plugins, render, out, as_json):
    """What changes between two workflows (A.yaml B.yaml) or two versions of one (REV [REV2] -- FILE): the
    text's meaning, and which output cells would render differently. Exit 0 if none would, 1 if some would."""
    settings = _settings(cache_dir, no_cache, None, plugins, models_dirs, allow_pickle, device)
    left, right = api.diff_sides(list(args), plugins)
    result, page = api.diff(left, right, settings, out if render else None)
    if as_json:
        click.echo(json.dumps({"left": left.label, "right": right.label, "changes": result.text,
                               "outputs": [{"node": n, "cell": c, "status": s} for n, c, s in result.outputs]},
                              indent=2))
    else:
        click.echo(f"{left.label} -> {right.label}")
        for line in result.text:
            click.echo(f"  {line}")
        for node, cell, status in result.changed_outputs:
            click.echo(f"  output {node} [{cell}]: {status}")
        click.echo(f"{len(result.changed_outputs)} of {len(result.outputs)} output cells change"
                   + (f"; both sides rendered: {page}" if page else ""))
    return 1 if result.changed_outputs else 0


@cli.command("lock")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@lookup_options
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import node types from MODULE.")
@click.option("--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The lock to write (default: the nearest flowrun.lock in the first workflow's folder or above, "
                   "else a new one beside it).")
def lock_cmd(files, models_dirs, allow_pickle, plugins, lock_path):
    """Pin every file these workflows read (all sweep cells) by sha256 in flowrun.lock; run and test then
    refuse files that differ."""
    settings = Settings(plugins=tuple(plugins), models_dirs=tuple(models_dirs), allow_pickle=allow_pickle)
    path, entries = api.lock_files(files, settings, lock_path)
    for status, key, sha in entries:
        if status != "unchanged":
            click.echo(f"{status:<9} {key}  sha256 {sha[:16]}")
    counts = {s: sum(1 for e in entries if e[0] == s) for s in ("added", "changed", "unchanged")}
    click.echo(f"wrote {path}: {counts['added']} added, {counts['changed']} changed, {counts['unchanged']} unchanged")
    return 0


@cli.group()
def models() -> None:
    """Models pinned by flowrun.lock."""


@models.command("pull")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--models-dir", "models_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Models folder to fetch into (the first given) and to look in (default: $FLOWRUN_MODELS, else "
                   "models/ beside the lock).")
@click.option("--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The lock to read (default: the nearest flowrun.lock in the first workflow's folder, or the "
                   "current one, or above).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import node types from MODULE.")
@click.option("-q", "--quiet", is_flag=True, help="No progress.")
def models_pull(files, models_dirs, lock_path, plugins, quiet):
    """Fetch the models the lock pins and the models folder lacks (those FILES read, or all), from each
    entry's source; resumable, checked against the pinned sha256."""
    tty = sys.stderr.isatty() and not quiet

    def progress(key, have, total):
        if tty:
            share = f" {100 * have / total:5.1f}%" if total else ""
            sys.stderr.write(f"\r{key}{share} {have / 1e6:.1f}/{(total or 0) / 1e6:.1f} MB\x1b[K")
            sys.stderr.flush()

    settings = Settings(plugins=tuple(plugins), models_dirs=tuple(models_dirs))
    try:
        path, fetched, no_source = api.pull_models(files, settings, lock_path, progress)
    finally:
        if tty:
            sys.stderr.write("\n")
    for item in fetched:
        click.echo(f"fetched {item.key} -> {item.target}")
    for key in no_source:
        click.echo(f"missing {key}: no source in {path}; add one (a URL or hf:OWNER/REPO@REVISION:PATH)", err=True)
    click.echo(f"{len(fetched)} fetched, {len(no_source)} missing without a source ({path})")
    return 2 if no_source else 0


@cli.command()
@click.argument("types", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import node types from MODULE.")
def nodes(types, as_json, plugins):
    """List node types with their inputs, outputs, defaults and ranges."""
    api.registry(plugins)  # a plugin that fails to load is its own error, not a bad argument
    with _as_click_usage():
        described = api.describe_nodes(types, plugins)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return 0
    for d in described:
        click.echo(f"{d['type']}  [{d['category']}]  {d['description']}")
        for name, i in d["inputs"].items():
            click.echo(f"    in    {name}: {i['type']}{' (optional)' if i['optional'] else ''}")
        for name, f in d["fields"].items():
            extra = "".join(f", {k} {v}" for k, v in f.items() if k in ("minimum", "maximum") and v is not None)
            choices = f", one of: {', '.join(map(str, f['enum']))}" if f.get("enum") else ""
            default = f" = {f['default']!r}" if "default" in f else " (required)"
            click.echo(f"    with  {name}: {f['type']}{default}{extra}{choices}")
        for name, t in d["outputs"].items():
            click.echo(f"    out   {name}: {t}")
    return 0


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write (default: schemas/workflow.schema.json).")
@click.option("--check", is_flag=True, help="Exit 1 if the file is not current, write nothing.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Include node types from MODULE.")
def schema(out, check, plugins):
    """Write the JSON Schema of workflow files (for editors' YAML language server)."""
    path = out or Path(api.SCHEMA_PATH)
    if check:
        if not api.schema_is_current(path, plugins):
            click.echo(f"{path} is out of date; run `flowrun schema`", err=True)
            return 1
        click.echo(f"{path} is current")
        return 0
    api.write_schema(path, plugins)
    click.echo(f"wrote {path}")
    return 0


@cli.group()
def cache() -> None:
    """Look after the disk cache: its size, eviction, clearing."""


_cache_dir_option = click.option("--cache-dir", help="Cache folder (default: $FLOWRUN_CACHE_DIR or the user cache).")


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _size(n: float) -> str:
    """Bytes in binary units, as people read them: 512 B, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _removed(removed: int, freed: int) -> str:
    return f"removed {removed} entr{'y' if removed == 1 else 'ies'}, {_size(freed)} freed"


@cache.command("info")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def cache_info(cache_dir, as_json):
    """Entries, size, limit and last use of the disk cache."""
    data = api.cache_info(cache_dir)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return 0
    limit = _size(data["max_bytes"]) if data["max_bytes"] else "none"
    click.echo(f"cache: {data['path']}\nentries: {data['entries']}\nsize: {_size(data['bytes'])} "
               f"(limit {limit}, set with ${api.MAX_SIZE_ENV})\nused: {_when(data['oldest_use'])} .. "
               f"{_when(data['newest_use'])}")
    if data["stale_temporary"]:
        click.echo(f"left by interrupted writes: {data['stale_temporary']} temporary folder(s) (`flowrun cache prune`)")
    return 0


@cache.command("prune")
@_cache_dir_option
@click.option("--max-size", metavar="SIZE", help="Evict least recently used entries down to SIZE (e.g. 5G); "
              "default: the limit ($FLOWRUN_CACHE_MAX_SIZE or 20G).")
@click.option("--older-than", metavar="DAYS", type=click.FloatRange(min=0), help="Also evict entries unused for DAYS.")
def cache_prune(cache_dir, max_size, older_than):
    """Evict least recently used entries to bring the cache under a size."""
    click.echo(_removed(*api.cache_prune(cache_dir, max_size, older_than)))
    return 0


@cache.command("clear")
@_cache_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir, yes):
    """Remove every entry of the disk cache."""
    if not yes and not click.confirm(f"remove every entry in {api.cache_folder(cache_dir)}?"):
        return 1
    click.echo(_removed(*api.cache_clear(cache_dir)))
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turning every failure into a message and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="flowrun", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        code = 130
    except FlowrunError as exc:
        if _debug and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        click.echo(exc.render(), err=True)
        code = exc.exit_code
    except Exception as exc:  # a bug in flowrun or a library: say so plainly, traceback with --debug
        if _debug:
            traceback.print_exc()
        click.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        code = 1
    if argv is None and "torch" in sys.modules:
        # As a command, after torch was loaded: skip the interpreter's teardown of torch, diffusers and
        # transformers (0.7 s here), so Ctrl-C leaves at once. Every output, cache entry and run.json is
        # already written, closed and renamed into place by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code or 0)
