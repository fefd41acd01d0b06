"""Local executor against the Ray executor (2 workers) on a 16-cell sweep, side by side in one run.

Each round runs both as whole `flowrun run` processes with empty caches, alternating which goes first:
the local one in a single process (its batches use every core), the Ray one starting a local cluster
of 2 workers with one CPU each. Prints wall times, their ratio, and how the Ray run spent its time
(starting the cluster and the workers, rendering units).

    python benchmarks/ray_sweep.py [--rounds 3] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "sweep-2x2.yaml"
SEEDS = "seed=" + ",".join(str(s) for s in range(1, 9))  # 8 seeds x the 2 cfg values: 16 cells


def run(args: list[str], tmp: Path, name: str, seeds: str = SEEDS) -> tuple[float, dict]:
    out, cache = tmp / f"{name}-out", tmp / f"{name}-cache"
    cmd = [sys.executable, "-m", "flowrun", "run", str(WORKFLOW), "--sweep", seeds, "--out", str(out),
           "--cache-dir", str(cache), "-q", *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FLOWRUN_PLUGINS": ""})
    wall = time.perf_counter() - start
    if r.returncode:
        sys.exit(f"{name} failed:\n{r.stderr}")
    return wall, json.loads((out / "run.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round of 4 cells (the test suite's check that this runs)")
    args = ap.parse_args()
    seeds = "seed=1,2" if args.quick else SEEDS
    if args.quick:
        args.rounds = 1
    local_t, ray_t, ray_inside = [], [], []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            order = [("local", []), ("ray", ["--executor", "ray", "--workers", str(args.workers)])]
            for name, extra in order if i % 2 == 0 else order[::-1]:
                wall, manifest = run(extra, tmp, f"{name}{i}", seeds)
                if name == "local":
                    local_t.append(wall)
                else:
                    ray_t.append(wall)
                    units = {c["unit"]: (c["worker"], c["seconds"]) for c in manifest["cells"]}
                    per_worker: dict[str, float] = {}
                    for worker, seconds in units.values():
                        per_worker[worker] = per_worker.get(worker, 0.0) + seconds
                    ray_inside.append((manifest["seconds"], len(units), sorted(per_worker.values())))
        print(f"round {i + 1}: local {local_t[-1]:.2f} s, ray {ray_t[-1]:.2f} s "
              f"(ray run {ray_inside[-1][0]:.2f} s inside the process, {ray_inside[-1][1]} units, "
              f"worker busy {', '.join(f'{s:.2f}' for s in ray_inside[-1][2])} s)")
    lm, rm = statistics.median(local_t), statistics.median(ray_t)
    print(f"median wall: local {lm:.2f} s, ray ({args.workers} workers) {rm:.2f} s")
    print(f"ratio ray / local: {rm / lm:.2f}")


if __name__ == "__main__":
    main()
