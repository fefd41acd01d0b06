"""Iterating on a workflow: `flowrun watch` against starting `flowrun run` again, on README's first workflow
(workflows/txt2img.yaml: the bundled flowrun-tiny, 64x64, 20 euler steps), whole processes:

1. cold: `flowrun run` of the workflow with an empty cache, as a new process (median of --rounds);
2. watch: one `flowrun watch` process; after its first render the prompt is changed and the file saved,
   and the time from the save to the new PNG on disk is taken (median of --edits saves).

The issue's aim: a save-to-PNG time of at most 0.1 of the cold run. Ctrl-C ends the watch process, which
must leave with 130 as `flowrun run` does.

    python benchmarks/watch.py [--rounds 3] [--edits 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a white background"
PNG = "txt2img-seed42.png"


def cold_run(work: Path, workflow: Path, index: int) -> float:
    """Seconds of `flowrun run` in a new process with an empty cache."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flowrun", "run", str(workflow), "--cache-dir", str(work / f"cold-cache{index}"),
                    "--out", str(work / f"cold{index}"), "-q"], check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def _wait_for_new(path: Path, old: bytes | None, timeout: float = 120.0) -> bytes:
    """The file's bytes once they differ from `old` (the file is replaced atomically, so never half written)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None and data != old:
            return data
        time.sleep(0.002)
    raise TimeoutError(f"{path} did not change within {timeout:.0f} s")


def _default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal, even when this script runs in the background (a shell starts
    background jobs with SIGINT ignored, and Python then installs no handler for it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def watch_edits(work: Path, workflow: Path, edits: int) -> tuple[float, list[float], list[str]]:
    """(seconds from start to the first PNG, seconds from each save to its new PNG, watch's output lines)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = work / "watch-out"
    text = workflow.read_text()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flowrun", "watch", str(workflow), "--cache-dir",
                             str(work / "watch-cache"), "--out", str(out), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        png = _wait_for_new(out / PNG, None)
        first = time.perf_counter() - t0
        time.sleep(0.5)  # the watch starts once the first render is reported
        times = []
        for i in range(edits):
            changed = text.replace(f"prompt: {PROMPT}", f"prompt: {PROMPT}, take {i + 1}")
            assert changed != text, "the workflow's prompt line was not found"
            saved = time.perf_counter()
            workflow.write_text(changed)
            png = _wait_for_new(out / PNG, png)
            times.append(time.perf_counter() - saved)
            time.sleep(0.3)  # let the step report before the next save
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError("flowrun watch did not leave within 60 s of Ctrl-C") from None
    if proc.returncode != 130:
        raise RuntimeError(f"flowrun watch left with {proc.returncode}, not 130:\n{err[-2000:]}")
    return first, times, lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3, help="cold runs (median)")
    ap.add_argument("--edits", type=int, default=5, help="saves while watching (median)")
    ap.add_argument("--quick", action="store_true", help="one cold run and one save (a smoke run)")
    args = ap.parse_args()
    rounds, edits = (1, 1) if args.quick else (args.rounds, args.edits)
    work = Path(tempfile.mkdtemp(prefix="flowrun-watch-bench-"))
    workflow = work / "txt2img.yaml"
    workflow.write_text((ROOT / "workflows" / "txt2img.yaml").read_text())
    print(f"machine: {os.cpu_count()} CPUs; workflows/txt2img.yaml (flowrun-tiny, 64x64, 20 euler steps)")
    cold = statistics.median(cold_run(work, workflow, i) for i in range(rounds))
    first, times, lines = watch_edits(work, workflow, edits)
    save = statistics.median(times)
    rows = [(f"cold `flowrun run`, empty cache (median of {rounds})", cold, "1.00"),
            ("`flowrun watch`: start to first PNG", first, f"{first / cold:.2f}"),
            (f"`flowrun watch`: save of a new prompt to its PNG (median of {len(times)})", save,
             f"{save / cold:.3f}   (aim <= 0.1)")]
    for what, seconds, ratio in rows:
        print(f"  {what:<66} {seconds:6.2f} s   {ratio}")
    print("  saves: " + ", ".join(f"{t:.2f} s" for t in times))
    reran = [line.strip() for line in lines if "re-ran" in line]
    if reran:
        print(f"  watch's last line: {reran[-1]}")
    print(f"ratio watch save to PNG / cold run: {save / cold:.3f}   (aim <= 0.1: {'met' if save / cold <= 0.1 else 'NOT met'})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
