"""Peak memory of ImageUpscaleWithModel: a 1024x1024 image upscaled x4 on the CPU by a real-size
upscale model, RealESRGAN's realesr-general-x4v3 architecture (SRVGGNetCompact, 64 features, 32
convolutions, x4; 1.2 M parameters) with seeded weights, loaded by UpscaleModelLoader through spandrel.

Each measurement runs in a fresh child process (the node as a run calls it) and reads its peak RSS
(getrusage ru_maxrss): once in the node's tiles (512 pixels overlapping by 32, ComfyUI's), and once with
the whole image in a single tile, for comparison. The 4096x4096 float32 result alone is 192 MiB.
Needs spandrel (pip install 'flowrun[upscale]').

    python benchmarks/upscale_memory.py [--size 1024] [--limit-gb 2] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import resource, sys, time
import numpy as np
from flowrun.diffusion import offline  # before spandrel
import torch
from flowrun.diffusion import upscale
from flowrun.execute.context import DevicePolicy, NodeFiles, RunContext
from flowrun.files import FileLookup
from flowrun.nodes.registry import NoParams
from flowrun.nodes.upscale_models import UpscaleModelLoaderParams, image_upscale_with_model, upscale_model_loader

models, size, tile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(2)
ctx = RunContext(device=DevicePolicy("cpu"), files=NodeFiles(FileLookup(models, (models,)), {"model_name": "x"}))
model = upscale_model_loader(UpscaleModelLoaderParams(model_name="bench-x4"), ctx)
image = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if tile:
    upscale.TILE = tile  # the whole image in one tile: what tiling saves
out = image_upscale_with_model(NoParams(), ctx, upscale_model=model, image=image)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"RESULT {out.shape} {before} {peak} {seconds:.1f}")
"""


def write_model(models: Path) -> None:
    """realesr-general-x4v3's architecture with seeded weights, as a safetensors state dict."""
    import torch
    from safetensors.torch import save_file

    from flowrun.diffusion import offline  # noqa: F401  (before spandrel)
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4)
    (models / "upscale_models").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(models / "upscale_models" / "bench-x4.safetensors"))


def measure(models: Path, size: int, tile: int) -> tuple[str, float, float, float]:
    env_path = str(ROOT)
    r = subprocess.run([sys.executable, "-c", CHILD, str(models), str(size), str(tile)], capture_output=True,
                       text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(r.stdout + r.stderr)
    shape, before, peak, seconds = line[len("RESULT "):].rsplit(" ", 3)
    return shape, int(before) / 1024, int(peak) / 1024, float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--limit-gb", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="a 256x256 image (the test suite's check that this runs)")
    args = ap.parse_args()
    if args.quick:
        args.size = 256
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        write_model(models)
        tiled = measure(models, args.size, 0)
        whole = measure(models, args.size, 2 * args.size)
    for label, (shape, before, peak, seconds) in (("tiled (512, overlap 32)", tiled), ("one tile", whole)):
        print(f"{label}: {args.size}x{args.size} -> {shape}, peak RSS {peak:.0f} MiB "
              f"({before:.0f} MiB before upscaling: Python, torch, spandrel, the model), {seconds:.1f} s")
    print(f"ratio tiled / one tile, peak memory: {tiled[2] / whole[2]:.2f}")
    ok = tiled[2] < args.limit_gb * 1024
    print(f"tiled peak {tiled[2] / 1024:.2f} GiB: {'under' if ok else 'OVER'} the {args.limit_gb:g} GiB aim")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
