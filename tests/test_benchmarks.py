"""Every script in benchmarks/ runs to its end in its quick mode and prints its ratio line.

Marked slow: the eight scripts in quick mode take about 160 s together (sweep 41, fullsize_sd15 27, ray_sweep 26,
startup 19, watch 17, upscale_memory 16, render_overhead 11, validate_startup 1) on the 2-core development
machine (each starts whole flowrun processes, Ray a cluster), more than the default suite can spend.
Run them with `pytest -m slow tests/test_benchmarks.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")


def _clean_env() -> dict:
    """The environment of a person running the script: without the test session's FLOWRUN_* settings
    (its plugins, its cache folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRUN_")}
    return {**env, "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    """The default suite leaves these out; `-m slow` runs them."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("slow: run with `pytest -m slow tests/test_benchmarks.py`")


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_to_its_end_in_quick_mode(script):
    if script == "ray_sweep.py":
        pytest.importorskip("ray")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=_clean_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert re.search(r"^ratio [^:\n]+: .*\d+\.\d+", r.stdout, re.M), r.stdout
