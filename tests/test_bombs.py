"""Resource bombs stop quickly with a clear error and bounded memory.

Each bomb is validated by a separate `flowrun validate` process that reports its own peak memory, so a
bomb that expanded before being refused would show here, not only as a slow test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import TESTS

WALL_LIMIT_S = 10.0
MEMORY_LIMIT_MB = 300  # the interpreter with flowrun's light core uses about 40 MB

HEAD = "version: 1\nparams: {word: hello, n: 2}\n"
NODES = """nodes:
  a:
    type: Text
    with: {{text: "{text}", seed: "{{{{ n }}}}"}}
  out:
    type: WriteText
    in: {{text: a}}
"""


def _laughs() -> str:
    lines = ["version: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nnodes: {}\n"


def _template(text: str) -> str:
    return HEAD + NODES.format(text=text)


BOMBS = {
    "billion-laughs": (_laughs(), "more than 200,000 values"),
    "deep-nesting": ("version: 1\nnodes: " + "[" * 200_000 + "]" * 200_000 + "\n", "nesting depth"),
    "billion-cells": (HEAD + "sweep:\n  grid: {" + ", ".join(f"p{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" for i in range(9))
                      + ", n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n" + NODES.format(text="{{ word }}"),
                      "cells, more than the limit"),
    "range-axis": (HEAD + "sweep:\n  grid: {n: {range: [0, 1000000000000]}}\n" + NODES.format(text="{{ word }}"),
                   "more than"),
    "template-loops": (_template("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
                                 "{% endfor %}{% endfor %}{% endfor %}"), "loop iterations"),
    "template-list-loops": (_template("{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}x{% endfor %}"
                                      "{% endfor %}"), "template"),
    "template-doubling": (_template("{% set a = word * 100000 %}{% set b = a ~ a ~ a ~ a %}{% set c = b ~ b %}"
                                    "{% set d = c ~ c %}{{ d }}"), "concatenation"),
    "template-bigint": (_template("{% set a = 7 ** 30000 %}{{ a * a * a * a * a * a }}"), "bits"),
    "template-format": (_template("{{ '{:>999999999}'.format(word) }}"), "width of a million"),
    "template-recursion": (_template("{% macro f(k) %}{{ f(k + 1) ~ f(k + 1) }}{% endmacro %}{{ f(0) }}"),
                           "template"),
}


def _run(path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FLOWRUN_PLUGINS": "engine_nodes"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flowrun", "validate", str(path)], env=env,
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - start


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_stops_quickly_with_bounded_memory(name, tmp_path):
    text, fragment = BOMBS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code, output, wall = _run(path)
    assert code == 2, output
    assert fragment in output and "Traceback" not in output, output
    assert wall < WALL_LIMIT_S, f"{name} took {wall:.1f} s"


# The child reports its own peak resident memory (VmHWM is per address space, so unlike ru_maxrss it
# does not carry over the pytest process's memory through fork and exec).
_MEASURED = """
import sys
from flowrun.cli import main
try:
    main(["validate", sys.argv[1]])
finally:
    peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    sys.stderr.write("peak-kB " + peak.split()[1] + "\\n")
"""


def test_bombs_peak_memory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FLOWRUN_PLUGINS": "engine_nodes"}
    peaks = {}
    for name, (text, _) in BOMBS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        r = subprocess.run([sys.executable, "-c", _MEASURED, str(path)], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, (name, r.stderr)
        peaks[name] = int(r.stderr.rsplit("peak-kB ", 1)[1].split()[0]) / 1024
    assert max(peaks.values()) < MEMORY_LIMIT_MB, peaks


def test_enormous_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:  # a sparse 20 GB file: reading it all would take minutes and the memory
        fh.write(b"version: 1\n")
        fh.truncate(20 * 1024**3)
    code, output, wall = _run(path)
    assert code == 2 and "larger than 4 MiB" in output, output
    assert wall < WALL_LIMIT_S
