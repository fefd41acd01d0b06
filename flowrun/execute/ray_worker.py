"""The Ray worker: a `CellWorker` actor renders units of cells with the same Runner as a local run.

Each actor holds the graph (fetched once per run), a memory cache that keeps loaded checkpoints between
units, and the shared disk cache; it renders a unit into a private folder and returns the files and the
node records for the driver (execute/ray_driver.py) to write and merge. It refuses to render where its
library versions or machine type differ from the driver's: those are part of the cache keys.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from flowrun import __version__
from flowrun.errors import RunFailed
from flowrun.execute.resources import open_cache, services
from flowrun.execute.runner import SKIPPED
from flowrun.graph.build import Graph, environment_info


class CellWorker:
    """Lives in a Ray actor: renders units of cells of one graph."""

    def __init__(self, settings, env: dict[str, str], threads: int, expected: dict[str, Any]):
        import sys

        os.environ.update(env)
        for entry in env.get("PYTHONPATH", "").split(os.pathsep):  # plugin modules the graph refers to
            if entry and entry not in sys.path:
                sys.path.append(entry)
        # torch uses as many threads as the CPUs the worker reserved. On the CPU, results depend on the
        # thread count by float rounding (at most one 8-bit level), as a local run's do.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        from flowrun.diffusion.offline import go_offline

        go_offline()
        self.settings = settings
        self.cache = open_cache(settings)
        self.graph: Graph | None = None
        self.graph_id = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.mismatch = _environment_mismatch(expected, settings.device, settings.dtype)

    def _use_graph(self, boxed_ref: list) -> None:
        # the graph comes by reference with each call (boxed, so Ray does not fetch it every time): an
        # actor that Ray restarted after a crash fetches it again on its first call
        import ray

        (ref,) = boxed_ref
        if self.graph_id != ref.hex():
            self.graph, self.graph_id = ray.get(ref), ref.hex()
            self.services = services(self.graph.resolved.file, self.settings)

    def render(self, boxed_graph: list, targets: list[str]) -> dict[str, Any]:
        """Render the steps that `targets` (task keys) need; the files, records and failures, as plain data."""
        from flowrun.execute.runner import Runner
        from flowrun.graph.plan import plan

        if self.mismatch:
            return {"worker": self.name, "fatal": f"worker {self.name} {self.mismatch}"}
        self._use_graph(boxed_graph)
        steps = plan(self.graph, self.cache, set(targets))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="flowrun-worker-") as tmp:
            runner = Runner(self.graph, steps, self.cache, Path(tmp), self.services, None, batch=self.settings.batch,
                            keep_going=self.settings.keep_going, max_batch=self.settings.max_batch)
            try:
                runner.run()
            except RunFailed:
                pass  # each failure is in runner.failures, sent back below
            files = {name: (Path(tmp) / name).read_bytes() for r in runner.records.values() for name in r.files}
        records = {key: {"status": r.status, "seconds": r.seconds, "files": r.files, "batched": r.batched,
                         "error": r.error, "score": r.score}
                   for key, r in runner.records.items() if r.status != SKIPPED}
        failures = [(f.node, f.node_type, list(f.cells), f.message) for f in runner.failures]
        return {"worker": self.name, "seconds": time.perf_counter() - started, "records": records, "files": files,
                "failures": failures}


def environment(device: str | None, dtype: str | None = None) -> dict[str, Any]:
    """What driver and workers must share: flowrun's version and code, the libraries' versions, the
    machine type."""
    from flowrun.cache.code_identity import package_identity

    return {"flowrun": __version__, "code": package_identity(), **environment_info(device, dtype)}


def _environment_mismatch(expected: dict[str, Any], device: str | None, dtype: str | None = None) -> str | None:
    """Why this worker may not render for the driver: cache keys carry the driver's code, library versions
    and machine type, so results from other versions would be stored under keys that do not describe them."""
    here = environment(device, dtype)
    diffs = [f"{k} {here.get(k)!r} (driver: {v!r})" for k, v in expected.items() if k != "versions" and here.get(k) != v]
    diffs += [f"{k} {here['versions'].get(k)} (driver: {v})" for k, v in expected["versions"].items()
              if here["versions"].get(k) != v]
    return "has " + ", ".join(diffs) + "; install the driver's versions on every worker" if diffs else None
