"""Train `flowrun-tiny-x2`, a x2 upscale model for flowrun-tiny's world: RealESRGAN's compact architecture
(SRVGGNetCompact, as spandrel builds it) at toy width, learnt to undo a 2x2 box downscale of the
procedural shape images (flowrun/diffusion/shapes.py). It exists so that the upscale example has a real,
trained model that spandrel detects; it is saved as a plain state dict (safetensors, float32).

CPU, deterministic, a couple of minutes. Then it measures PSNR against bicubic interpolation on held-out
images. Needs spandrel (pip install 'flowrun[upscale]').

    python tools/train_upscale_model.py [--steps 2000] [--out flowrun/models/upscale_models]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowrun.diffusion import offline  # noqa: F401  (before spandrel, which imports torchvision)
from flowrun.diffusion import shapes

ROOT = Path(__file__).resolve().parent.parent
NAME = "flowrun-tiny-x2"
FEATURES, CONVS, SCALE = 16, 4, 2
BANK, HELD_OUT = 4096, 256


def images(seed: int, n: int) -> torch.Tensor:
    """n shape images [n, 3, 64, 64] in 0..1, deterministic from `seed`."""
    pixels, _ = shapes.batch(np.random.default_rng(seed), n)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).movedim(-1, 1)


def downscale(hr: torch.Tensor) -> torch.Tensor:
    """The degradation the model learns to undo: the mean of each 2x2 block."""
    return F.avg_pool2d(hr, SCALE)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / F.mse_loss(a.clamp(0, 1), b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "flowrun" / "models" / "upscale_models")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)

    from safetensors.torch import save_file
    from spandrel import ImageModelDescriptor, ModelLoader
    from spandrel.architectures.Compact import Compact

    started = time.time()
    bank, held_out = images(args.seed + 1, BANK), images(args.seed + 2, HELD_OUT)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=FEATURES, num_conv=CONVS, upscale=SCALE)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.05)
    rng = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        hr = bank[torch.randint(len(bank), (args.batch,), generator=rng)]
        if torch.rand((), generator=rng) < 0.5:  # the shapes are symmetric under flips; twice the data
            hr = hr.flip(-1)
        # squared error: with L1 the network settled on a zero residual (nearest upscaling), the best answer
        # for the flat pixels that are most of every image
        loss = F.mse_loss(net(downscale(hr)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}: MSE {loss.item():.6f} ({time.time() - started:.0f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))

    model = ModelLoader().load_from_file(path)  # what flowrun loads: spandrel must detect it
    assert isinstance(model, ImageModelDescriptor) and model.scale == SCALE, model
    lr = downscale(held_out)
    with torch.inference_mode():
        ours = torch.cat([model(lr[i:i + 1]) for i in range(len(lr))])
    bicubic = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)
    nearest = F.interpolate(lr, scale_factor=SCALE, mode="nearest")
    print(f"{path} ({path.stat().st_size} bytes, {model.architecture.name}, x{model.scale}), "
          f"{time.time() - started:.0f} s")
    print(f"PSNR on {HELD_OUT} held-out images (32x32 -> 64x64): model {psnr(ours, held_out):.2f} dB, "
          f"bicubic {psnr(bicubic, held_out):.2f} dB, nearest {psnr(nearest, held_out):.2f} dB")


if __name__ == "__main__":
    main()
