"""Whole-process time of `flowrun validate workflows/*.yaml`, next to a bare Python start-up.

Aim (issue 2): under 0.3 s on the 2-core development machine. Run: python benchmarks/validate_startup.py [--quick]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 15


def timed(cmd: list[str], runs: int = RUNS) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    runs = 2 if "--quick" in sys.argv[1:] else RUNS  # --quick: the test suite's check that this runs
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "workflows").glob("*.yaml"))]
    bare = timed([sys.executable, "-c", "pass"], runs)
    validate = timed([sys.executable, "-m", "flowrun", "validate", *files], runs)
    print(f"files: {len(files)}; median of {runs} runs each")
    print(f"python -c pass           {bare:.3f} s")
    print(f"flowrun validate (all)   {validate:.3f} s   ({validate / bare:.1f}x bare python; aim < 0.300 s: "
          f"{'met' if validate < 0.3 else 'NOT met'})")
    print(f"ratio validate / bare python: {validate / bare:.2f}")


if __name__ == "__main__":
    main()
