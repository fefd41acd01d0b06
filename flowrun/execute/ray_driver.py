"""Run a planned workflow on a Ray cluster: the driver's side, which schedules units of cells on workers.

The driver plans as on one machine, cuts the plan into units (execute/partition.py) and hands them to
a pool of `CellWorker` actors (execute/ray_worker.py), which keep their models loaded between units and
return each unit's files and node records. The driver writes the files into its output folder
(atomically, each once) and merges the records into run.json with the worker and time of each cell.

Scheduling: a worker that finishes a unit gets the next unit that needs the models it already holds,
else the next in the graph's order. A worker that dies mid-unit (its process killed, its machine gone)
loses nothing that was published: the unit goes to another worker, which finds in the shared cache
whatever the dead one had finished, and its files are written by the driver only once.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from flowrun.errors import RunFailed, UsageError
from flowrun.execute.partition import Unit, partition
from flowrun.execute.ray_options import RayOptions, require_ray
from flowrun.execute.ray_worker import CellWorker, environment
from flowrun.execute.runner import NodeRecord
from flowrun.graph.batching import batch_groups
from flowrun.graph.build import Graph
from flowrun.graph.plan import Step
from flowrun.safepath import inside, write_atomic

MAX_ATTEMPTS = 3  # a unit whose worker died is tried on this many workers in all
# environment the workers need to see as the driver does (plugins, model folders, test switches)
FORWARDED_ENV = ("FLOWRUN_", "HF_", "TRANSFORMERS_", "PYTHONPATH", "CUBLAS_WORKSPACE_CONFIG")
# when two units report the same node, the record that says most wins (a failure over a cache hit)
_RANK = {"skipped": 0, "cached": 1, "blocked": 2, "executed": 3, "interrupted": 4, "failed": 5}


class RayExecutor:
    """The Runner's counterpart on a cluster: same `run()`, same `records`, plus `cells` (who rendered
    each cell and how long its unit took)."""

    def __init__(self, graph: Graph, steps: list[Step], settings, out_dir: Path, events, options: RayOptions):
        self.graph, self.steps, self.settings = graph, steps, settings
        self.out_dir = Path(out_dir)
        self.events = events
        self.options = options
        self.records: dict[str, NodeRecord] = {s.task.key: NodeRecord(s.task) for s in steps}
        self.cells: dict[int, dict[str, Any]] = {}
        self.written: set[str] = set()
        self.failures: list[RunFailed] = []

    def run(self) -> dict[str, NodeRecord]:
        ray = require_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)
        try:
            n = self._pool_size(ray)
            if self.settings.batch and self.settings.max_batch is None:
                # spread each batch over the workers: a 16-seed sweep on 2 workers batches 8 on each
                groups = batch_groups(self.steps)
                largest = max((len(g) for g in groups.values()), default=1)
                self.settings = replace(self.settings, max_batch=max(1, math.ceil(largest / n)))
            units = partition(self.graph, self.steps, batch=self.settings.batch, max_batch=self.settings.max_batch)
            self._schedule(ray, units, min(n, len(units)))
        finally:
            if started_here:
                ray.shutdown()
        if self.failures:
            raise RunFailed.many(self.failures)
        return self.records

    def _pool_size(self, ray) -> int:
        opts = self.options
        resources = ray.cluster_resources()
        if opts.workers:
            return opts.workers
        if opts.gpus_per_worker:
            n = int(resources.get("GPU", 0) // opts.gpus_per_worker)
            if n < 1:
                raise UsageError(f"--gpus-per-worker {opts.gpus_per_worker:g}: the cluster has "
                                 f"{resources.get('GPU', 0):g} GPU(s)")
            return n
        return max(1, int(resources.get("CPU", 1) // opts.cpus_per_worker))

    def _pool(self, ray, n: int) -> list:
        opts = self.options
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        actor = ray.remote(num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker, max_restarts=MAX_ATTEMPTS,
                           max_task_retries=0)(CellWorker)
        self.graph_ref = ray.put(self.graph)  # kept for the whole run: restarted actors fetch it again
        threads = max(1, int(opts.cpus_per_worker))
        expected = environment(self.settings.device, self.settings.dtype)
        return [actor.remote(self.settings, env, threads, expected) for _ in range(n)]

    def _schedule(self, ray, units: list[Unit], n_workers: int) -> None:
        from ray.exceptions import RayActorError, WorkerCrashedError

        workers = self._pool(ray, n_workers)
        pending = list(units)
        attempts = {u.index: 0 for u in units}
        holds: dict[int, frozenset] = {}  # worker index -> the models it loaded last
        running: dict[Any, tuple[int, Unit]] = {}
        total, done = sum(len(u.cells) for u in units), 0
        failed_stop = False

        def submit(w: int) -> None:
            unit = next((u for u in pending if u.affinity and u.affinity == holds.get(w)), pending[0])
            pending.remove(unit)
            attempts[unit.index] += 1
            running[workers[w].render.remote([self.graph_ref], unit.targets)] = (w, unit)

        idle = list(range(len(workers)))
        while pending or running:
            while idle and pending and not failed_stop:
                submit(idle.pop(0))
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            w, unit = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (RayActorError, WorkerCrashedError) as exc:
                if attempts[unit.index] >= MAX_ATTEMPTS:
                    raise RunFailed("(worker)", "ray", [self.graph.resolved.cells[c].label for c in unit.cells],
                                    f"its worker died {MAX_ATTEMPTS} times: {type(exc).__name__}") from None
                self.events.warn(f"worker {w} died rendering {self._labels(unit)}; trying the cells on another worker")
                pending.insert(0, unit)
                idle.append(w)  # Ray restarts the actor; the unit goes to the next idle worker first
                idle.sort(key=lambda i: i == w)
                continue
            if "fatal" in result:
                raise RunFailed("(worker)", "ray", self._labels(unit), result["fatal"])
            holds[w] = unit.affinity
            idle.append(w)
            self._merge(unit, result)
            done += len(unit.cells)
            self.events.cells_done(done, total, self._labels(unit), result["worker"], result["seconds"])
            self.failures += [RunFailed(*f) for f in result["failures"]]
            if result["failures"] and not self.settings.keep_going:
                failed_stop = True
                pending.clear()

    def _labels(self, unit: Unit) -> list[str]:
        return [self.graph.resolved.cells[c].label for c in unit.cells]

    def _merge(self, unit: Unit, result: dict[str, Any]) -> None:
        for key, rec in result["records"].items():
            record = self.records.get(key)
            if record is None or _RANK[rec["status"]] < _RANK.get(record.status, 0):
                continue
            record.status, record.seconds, record.batched = rec["status"], rec["seconds"], rec["batched"]
            record.error = rec["error"]
            record.worker = result["worker"]
            record.score = rec.get("score")
            if rec["files"]:
                record.files = rec["files"]
        for name, data in result["files"].items():
            if name not in self.written:  # a unit retried after its worker died writes nothing twice
                write_atomic(inside(self.out_dir, name), data)
                self.written.add(name)
        for c in unit.cells:
            self.cells[c] = {"worker": result["worker"], "seconds": round(result["seconds"], 4),
                             "unit": unit.index}
