"""Sweeps, measured side by side on the bundled flowrun-tiny model (64x64, 20 euler steps):

1. a 4 seeds x 2 cfg sweep: flowrun (checkpoint already in memory, as the pipeline below) against 8 calls
   of a diffusers StableDiffusionPipeline, and against the same script batching the 4 seeds of each cfg by
   hand (2 calls), in one process, alternating;
2. a no-op re-run of that sweep (everything cached) against its cold run, whole process;
3. peak memory (max RSS) of a 64-cell sweep against a single cell, whole process.

    python benchmarks/sweep.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
PROMPT = "a red circle on a white background"

SWEEP = """\
version: 1
name: bench-sweep
params: {{seed: 1, cfg: 7.0}}
sweep:
  grid: {{seed: {seeds}, cfg: {cfgs}}}
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: flowrun-tiny}}}}
  pos: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: "{prompt}"}}}}
  neg: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: ""}}}}
  latent: {{type: EmptyLatentImage, with: {{width: 64, height: 64}}}}
  sample:
    type: KSampler
    in: {{model: ckpt.model, positive: pos, negative: neg, latent_image: latent}}
    with: {{seed: "{{{{ seed }}}}", steps: 20, cfg: "{{{{ cfg }}}}", sampler_name: euler, scheduler: normal}}
  decode: {{type: VAEDecode, in: {{samples: sample, vae: ckpt.vae}}}}
  save: {{type: SaveImage, in: {{images: decode}}, with: {{filename_prefix: "s{{{{ seed }}}}-c{{{{ cfg }}}}"}}}}
"""

def write(work: Path, name: str, seeds: list[int], cfgs: list[float]) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(SWEEP.format(seeds=seeds, cfgs=cfgs, prompt=PROMPT))
    return path


def in_process(work: Path, rounds: int) -> None:
    import torch

    from flowrun import api
    from common import euler_pipeline, loaded_bundle

    from flowrun.cache.memory import MemoryCache
    from flowrun.settings import Settings

    memory = MemoryCache()
    warm = write(work, "warm", [999], [7.0])
    api.run(api.load(warm), Settings(out_dir=work / "warm", cache_dir=work / "c-warm"), memory=memory)
    model, clip, vae = loaded_bundle(memory)
    pipe = euler_pipeline(model, clip, vae)
    cfgs = [4.0, 7.0]

    def eight_calls(base: int) -> float:
        t0 = time.perf_counter()
        for cfg in cfgs:
            for s in range(4):
                pipe(PROMPT, negative_prompt="", height=64, width=64, num_inference_steps=20, guidance_scale=cfg,
                     generator=torch.Generator("cpu").manual_seed(base + s), output_type="pil")
        return time.perf_counter() - t0

    def hand_batched(base: int) -> float:
        t0 = time.perf_counter()
        for cfg in cfgs:
            pipe([PROMPT] * 4, negative_prompt=[""] * 4, height=64, width=64, num_inference_steps=20,
                 guidance_scale=cfg, generator=[torch.Generator("cpu").manual_seed(base + s) for s in range(4)],
                 output_type="pil")
        return time.perf_counter() - t0

    def flowrun_sweep(base: int) -> float:
        wf = write(work, f"sweep{base}", [base + s for s in range(4)], cfgs)
        t0 = time.perf_counter()
        api.run(api.load(wf), Settings(out_dir=work / f"o{base}", cache_dir=work / f"c{base}"), memory=memory)
        return time.perf_counter() - t0

    a, b, c = [], [], []
    for r in range(rounds):
        base = 100 * (r + 1)
        a.append(eight_calls(base))
        b.append(hand_batched(base))
        c.append(flowrun_sweep(base))
    ea, eb, ec = statistics.median(a), statistics.median(b), statistics.median(c)
    print(f"4 seeds x 2 cfg, {rounds} rounds (medians), checkpoint in memory for all three:")
    print(f"  diffusers, 8 calls            {ea:7.2f} s   1.00")
    print(f"  diffusers, batched by hand    {eb:7.2f} s   {eb / ea:.2f}")
    print(f"  flowrun run                   {ec:7.2f} s   {ec / ea:.2f}   (aim <= 0.40 and <= hand batching)")
    print(f"ratio flowrun / 8 diffusers calls: {ec / ea:.2f}")


def whole_process(work: Path, quick: bool = False) -> None:
    from common import peak_rss_kib

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wf = write(work, "noop", [1, 2, 3, 4], [4.0, 7.0])

    def timed(args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flowrun", *args], check=True, capture_output=True, env=env)
        return time.perf_counter() - t0

    cache = work / "noop-cache"
    cold = timed(["run", str(wf), "--cache-dir", str(cache), "--out", str(work / "noop-a"), "-q"])
    noop = statistics.median(timed(["run", str(wf), "--cache-dir", str(cache), "--out", str(work / "noop-b"), "-q"])
                             for _ in range(1 if quick else 3))
    print(f"no-op re-run against cold run (whole process): {noop:.2f} s / {cold:.2f} s = {noop / cold:.3f}   (aim <= 0.1)")

    def max_rss(path: Path) -> int:
        return peak_rss_kib([sys.executable, "-m", "flowrun", "run", str(path), "--no-cache", "--out",
                             str(work / f"rss-{path.stem}"), "-q", "--max-cells", "100"], env)

    one = max_rss(write(work, "one", [1], [7.0]))
    many = max_rss(write(work, "many", list(range(4 if quick else 16)), [3.0, 5.0, 7.0, 9.0]))
    print(f"peak memory, {16 if quick else 64}-cell sweep against one cell: "
          f"{many / 1024:.0f} MiB / {one / 1024:.0f} MiB = "
          f"{many / one:.2f}   (aim <= 1.5)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one round, fewer re-runs and cells (the test suite's check "
                    "that this runs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
    work = Path(tempfile.mkdtemp(prefix="flowrun-sweep-bench-"))
    print(f"machine: {os.cpu_count()} CPUs, torch threads default; {json.dumps(sys.version.split()[0])}")
    try:
        in_process(work, args.rounds)
        whole_process(work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
