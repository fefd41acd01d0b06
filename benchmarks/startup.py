"""Cold start: README's first command (`flowrun run workflows/txt2img.yaml`, the bundled flowrun-tiny model,
an empty cache) as a whole process, against a bare `python -c "import torch"` on the same machine, in
alternating rounds; and where flowrun's time went (its nodes' seconds from run.json; the rest is start-up
and imports).

A third process measures the floor the libraries set: it imports only the diffusers and transformers
modules that command needs (the UNet, VAE, CLIP text model and tokenizer, the single-file key maps), the
cheapest way flowrun knows (flowrun.diffusion.diffusers_models), and does nothing else. flowrun's own
share of the cold run is the difference.

Aim (issue 17): at most 2x the bare torch import.

    python benchmarks/startup.py [--rounds 5] [--quick]
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

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


FLOOR = ("import flowrun.diffusion.offline, flowrun.diffusion.diffusers_models; "
         "import transformers.models.clip.modeling_clip, transformers.models.clip.tokenization_clip; "
         "import diffusers.loaders.single_file_utils; "
         "import os; os._exit(0)")  # leaves as flowrun does, without tearing the interpreter down


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one round (the test suite's check that this runs)")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bare, floor, cold, nodes = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="flowrun-startup-") as tmp:
        for r in range(rounds):
            bare.append(timed([sys.executable, "-c", "import torch"], env))
            floor.append(timed([sys.executable, "-c", FLOOR], env))
            out, cache = Path(tmp) / f"out{r}", Path(tmp) / f"cache{r}"  # a new, empty cache each round
            cold.append(timed([sys.executable, "-m", "flowrun", "run", "workflows/txt2img.yaml", "--cache-dir",
                               str(cache), "--out", str(out), "-q"], env))
            manifest = json.loads((out / "run.json").read_text())
            nodes.append({n["id"]: n["seconds"] for n in manifest["nodes"]})
    b, f, c = statistics.median(bare), statistics.median(floor), statistics.median(cold)
    in_nodes = statistics.median(sum(n.values()) for n in nodes)
    per_node = {k: statistics.median(n[k] for n in nodes) for k in nodes[0]}
    print(f"README's first command against a bare torch import, whole processes, median of {rounds} round(s):")
    print(f"  python -c 'import torch'                   {b:6.2f} s")
    print(f"  the libraries' modules it needs, imported  {f:6.2f} s   (the floor: {f / b:.2f}x import torch)")
    print(f"  flowrun run workflows/txt2img.yaml (cold)  {c:6.2f} s   (flowrun's own share: {c - f:.2f} s)")
    print(f"    in nodes {in_nodes:.2f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in per_node.items() if v >= 0.01))
    print(f"    start-up, imports and the rest {c - in_nodes:.2f} s")
    print(f"ratio cold run / import torch: {c / b:.2f}   (aim <= 2.00: {'met' if c / b <= 2 else 'NOT met'}; "
          f"cold run / floor: {c / f:.2f})")


if __name__ == "__main__":
    main()
