"""Execute a plan: load what is cached, run what is not, write output files atomically, record everything."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowrun.cache.tiers import FILES, NodeCache
from flowrun.errors import NodeError, RunFailed
from flowrun.execute.context import RunContext, Services
from flowrun.execute.events import Events
from flowrun.graph.build import Graph, Task
from flowrun.graph.plan import RUN, Step
from flowrun.graph.plan import SKIP as SKIP_STEP
from flowrun.safepath import inside, write_atomic

EXECUTED, CACHED, SKIPPED, FAILED = "executed", "cached", "skipped", "failed"
BLOCKED = "blocked"  # not run because a node it needs failed (with --keep-going)
INTERRUPTED = "interrupted"  # was running when the run was interrupted (Ctrl-C)
PREVIEWS = "previews"  # the folder of the run's output folder where preview nodes' files go


@dataclass
class NodeRecord:
    task: Task
    status: str = SKIPPED
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    batched: int = 1  # cells computed together in one batched call
    error: str | None = None
    worker: str | None = None  # which cluster worker ran it (the Ray executor)
    score: float | None = None  # a scoring node's `score` (NodeDef.metric), recorded in run.json


class Runner:
    def __init__(self, graph: Graph, steps: list[Step], cache: NodeCache | None, out_dir: Path, services: Services,
                 events: Events | None = None, batch: bool = True, keep_going: bool = False,
                 max_batch: int | None = None):
        self.graph, self.steps, self.cache = graph, steps, cache
        self.out_dir = Path(out_dir)
        self.services = services
        self.events = events or Events()
        self.records: dict[str, NodeRecord] = {s.task.key: NodeRecord(s.task) for s in steps}
        self.live: dict[str, dict[str, Any]] = {}
        # how many not-yet-run consumers still need each value; at zero it is released
        self.pending: dict[str, int] = {}
        for s in steps:
            if s.action == RUN:
                for up, _ in s.task.inputs.values():
                    self.pending[up] = self.pending.get(up, 0) + 1
        self._started = 0
        from flowrun.graph.batching import batch_groups

        self.groups = batch_groups(steps, max_batch) if batch else {}
        self.prefetched: dict[str, dict[str, Any]] = {}  # results of batch members, until they are reached
        self.keep_going = keep_going
        self.failures: list[RunFailed] = []
        self.failed: dict[str, RunFailed] = {}  # task key -> the failure that stops it (its own or upstream)

    def run(self) -> dict[str, NodeRecord]:
        """Run every step. The first failure stops the run, unless keep_going: then each failure is
        recorded, what depends on it is marked blocked, the rest finishes, and RunFailed lists them all."""
        self.events.run_start(self.steps)
        for step in self.steps:
            if step.action == RUN or (step.task.node_def.sink and step.action != SKIP_STEP):
                try:
                    self._ensure(step.task.key)
                except RunFailed:
                    if not self.keep_going:
                        raise
        if self.failures:
            raise RunFailed.many(self.failures)
        return self.records

    def _fail(self, key: str, exc: RunFailed, started: float) -> RunFailed:
        record = self.records[key]
        record.status, record.error = FAILED, exc.render().removeprefix("error: ")
        record.seconds = time.perf_counter() - started
        self.failures.append(exc)
        self.failed[key] = exc
        return exc

    def _block(self, key: str, upstream: str) -> RunFailed:
        exc = self.failed[upstream]
        record = self.records[key]
        record.status, record.error = BLOCKED, f"not run: node '{self.graph.tasks[upstream].node_id}' failed"
        self.failed[key] = exc
        return exc

    def _ensure(self, key: str) -> dict[str, Any]:
        """The outputs of task `key`: from this run, from the cache, or by running it (and, recursively,
        whatever it needs). A cache entry that turns out unreadable is simply recomputed."""
        if key in self.live:
            return self.live[key]
        if key in self.failed:
            raise self.failed[key]
        task = self.graph.tasks[key]
        record = self.records[key]
        started = time.perf_counter()
        if key in self.prefetched:  # computed with the rest of its batch
            value = self.prefetched.pop(key)
            self._announce(task)
            if self.pending.get(key, 0) > 0:
                self.live[key] = value
            self.events.node_end(task, record.status, record.seconds)
            return value
        value = self.cache.load(key, task.out_types) if self.cache is not None else None
        if value is not None:
            self._announce(task)
            record.status = CACHED
        else:
            inputs = {}
            for name, (up, out) in task.inputs.items():
                try:
                    inputs[name] = self._ensure(up)[out]
                except RunFailed:
                    raise self._block(key, up) from None
            self._announce(task)
            try:
                if key in self.groups:
                    batched = self._try_batch(key, task, inputs, started)
                    if batched is not None:
                        return batched
                value = self._compute(key, task, inputs, started)
            except KeyboardInterrupt:
                record.status, record.seconds = INTERRUPTED, time.perf_counter() - started
                raise
            for up, _ in task.inputs.values():
                self._release(up)
        if task.node_def.output:
            record.files = self._publish(task, value[FILES])
        elif self.pending.get(key, 0) > 0:
            self.live[key] = value
        if task.node_def.metric:
            record.score = float(value["score"])
        record.seconds = time.perf_counter() - started
        self.events.node_end(task, record.status, record.seconds)
        return value

    def _try_batch(self, key: str, task: Task, inputs: dict[str, Any], started: float) -> dict[str, Any] | None:
        """The batched result for `key`, or None when the batch failed and its cells go one by one: a failed
        batch (out of memory, say) is retried cell by cell, so one cell's fault or the batch's size does
        not fail the others."""
        try:
            return self._execute_batch(key, inputs, started)
        except RunFailed as exc:
            group = self.groups[key]
            if len(group) == 1:
                raise self._fail(key, exc, started) from exc
            self.events.warn(f"node '{task.node_id}': batch of {len(group)} failed ({exc.message}); "
                             "retrying its cells one by one")
            for member in group:
                self.groups.pop(member, None)
            return None

    def _compute(self, key: str, task: Task, inputs: dict[str, Any], started: float) -> dict[str, Any]:
        """Run one task under its cache lock, unless another process published it meanwhile."""
        record = self.records[key]
        try:
            with self._locked([key], task):
                value = self._computed_meanwhile(key, task)
                if value is not None:
                    record.status = CACHED
                    return value
                value = self._execute(task, inputs)
                record.status = EXECUTED
                self._store(key, task, value)
                return value
        except RunFailed as exc:
            raise self._fail(key, exc, started) from exc

    def _locked(self, keys: list[str], task: Task):
        return self.cache.locked(keys, task.out_types) if self.cache is not None else nullcontext()

    def _computed_meanwhile(self, key: str, task: Task) -> dict[str, Any] | None:
        """Under the lock: the entry another process published while this one waited, if any."""
        if self.cache is None or self.cache.disk is None:
            return None
        return self.cache.load(key, task.out_types)

    def _store(self, key: str, task: Task, value: dict[str, Any]) -> None:
        if self.cache is not None and not task.node_def.preview:
            self.cache.store(key, value, task.out_types,
                             {"node": task.node_id, "type": task.type_name, "cells": self.graph.cell_labels(task)})

    def _execute_batch(self, key: str, inputs: dict[str, Any], started: float) -> dict[str, Any]:
        """Run the whole group of `key` in one call; keep the other members' results until they are reached."""
        group = [k for k in self.groups[key] if self.records[k].status == SKIPPED and k not in self.prefetched]
        with self._locked(group, self.graph.tasks[key]):
            members = []
            for k in group:
                value = self._computed_meanwhile(k, self.graph.tasks[k])
                if value is None:
                    members.append(k)
                else:
                    self.records[k].status = CACHED
                    self.prefetched[k] = value
            if members:
                self._compute_batch(members, inputs, started)
        for up, _ in self.graph.tasks[key].inputs.values():
            for _ in group:
                self._release(up)
        value = self.prefetched.pop(key)
        if self.pending.get(key, 0) > 0:
            self.live[key] = value
        self.events.node_end(self.graph.tasks[key], self.records[key].status, self.records[key].seconds)
        return value

    def _compute_batch(self, members: list[str], inputs: dict[str, Any], started: float) -> None:
        tasks = [self.graph.tasks[k] for k in members]
        nd = tasks[0].node_def
        cells = sorted({c for t in tasks for c in self.graph.cell_labels(t)})
        port_values = {k: v for k, v in inputs.items() if k in nd.inputs}
        try:
            params = [nd.params.model_validate({**t.literals, **{k: v for k, v in inputs.items() if k not in nd.inputs}})
                      for t in tasks]
            results = nd.call_batch(params, self._context(tasks[0], cells, [self.graph.cell_labels(t) for t in tasks]),
                                    **port_values)
        except NodeError as exc:
            raise RunFailed(tasks[0].node_id, nd.type_name, cells, str(exc)) from exc
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise RunFailed(tasks[0].node_id, nd.type_name, cells, _describe(exc)) from exc
        seconds = (time.perf_counter() - started) / len(tasks)
        out_name = next(iter(nd.outputs))
        for k, task, result in zip(members, tasks, results):
            value = {out_name: result}
            record = self.records[k]
            record.status, record.seconds, record.batched = EXECUTED, seconds, len(tasks)
            self._store(k, task, value)
            self.prefetched[k] = value

    def _context(self, task: Task, cells: list[str], blocks: list[list[str]] | None = None) -> RunContext:
        """The node's door to the world: the run's services, its files' fingerprints, its outputs. `blocks`:
        for a batch, the cells of each member in the order of its rows (for previews)."""
        blocks = blocks or [cells]
        return RunContext.for_node(self.services, fingerprints=task.fingerprints, suffix=task.output_suffix,
                                   provenance=task.provenance, cells=cells,
                                   progress=lambda step, total: self.events.node_step(task, step, total),
                                   warn=lambda message: self.events.warn(f"node '{task.node_id}': {message}"),
                                   preview=(lambda step, total, denoised, fmt: self.events.node_preview(
                                       task, blocks, step, total, denoised, fmt))
                                   if self.events.wants_previews else None)

    def _announce(self, task: Task) -> None:
        self._started += 1
        self.events.node_start(task, self._started, sum(1 for s in self.steps if s.action != "skip"))

    def _release(self, key: str) -> None:
        self.pending[key] = self.pending.get(key, 1) - 1
        if self.pending[key] <= 0:
            self.live.pop(key, None)

    def _execute(self, task: Task, inputs: dict[str, Any]) -> dict[str, Any]:
        nd = task.node_def
        cells = self.graph.cell_labels(task)
        widget_values = {k: v for k, v in inputs.items() if k not in nd.inputs}
        port_values = {k: v for k, v in inputs.items() if k in nd.inputs}
        try:
            params = nd.params.model_validate({**task.literals, **widget_values})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = err["loc"][0] if err["loc"] else "?"
            raise RunFailed(task.node_id, nd.type_name, cells,
                            f"value for '{name}' from its link is invalid: {err['msg']} (got {err.get('input')!r})") from None
        ctx = self._context(task, cells)
        try:
            result = nd(params, ctx, **port_values)
        except NodeError as exc:
            raise RunFailed(task.node_id, nd.type_name, cells, str(exc)) from exc
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise RunFailed(task.node_id, nd.type_name, cells, _describe(exc)) from exc
        if nd.output:
            return {FILES: ctx.outputs.saved}
        outs = list(nd.outputs)
        if len(outs) == 1 and not (isinstance(result, dict) and set(result) == set(outs)):
            return {outs[0]: result}
        if not isinstance(result, dict) or set(result) != set(outs):
            raise RunFailed(task.node_id, nd.type_name, cells,
                            f"implementation returned {type(result).__name__}, expected outputs {outs}")
        return result

    def _publish(self, task: Task, files: dict[str, bytes]) -> list[str]:
        written = []
        for name, data in files.items():
            if task.node_def.preview:
                name = f"{PREVIEWS}/{name}"
            try:
                path = inside(self.out_dir, name)
            except ValueError as exc:
                raise RunFailed(task.node_id, task.type_name, self.graph.cell_labels(task), str(exc)) from None
            write_atomic(path, data)
            written.append(name)
        return written


def _describe(exc: BaseException) -> str:
    """A failure's message; out-of-memory errors (Python's or torch's) say what to try."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        text += " (out of memory: try a smaller size or --no-batch, or free memory for the run)"
    return text
