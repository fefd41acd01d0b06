"""flowrun's render time against a plain diffusers StableDiffusionPipeline, side by side in one process.

Same tiny checkpoint, prompt, sampler (euler / EulerDiscreteScheduler linspace), steps, cfg and size; each
iteration renders a new seed, so flowrun re-runs the sampler, the decoder and SaveImage while the loaded
checkpoint (and the prompt encodings) stay in its memory cache, as in a sweep. Measurements alternate
between the two so that machine noise hits both alike. Also prints the fraction of flowrun's render time
spent inside model forward passes (UNet, VAE, text encoder).

    python benchmarks/render_overhead.py [--steps 20] [--size 64] [--rounds 12] [--device cpu] [--quick]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

WORKFLOW = """\
version: 1
params: {{seed: 0}}
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: {ckpt}}}}}
  pos: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: "{prompt}"}}}}
  neg: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: ""}}}}
  latent: {{type: EmptyLatentImage, with: {{width: {size}, height: {size}}}}}
  sample:
    type: KSampler
    in: {{model: ckpt.model, positive: pos, negative: neg, latent_image: latent}}
    with: {{seed: "{{{{ seed }}}}", steps: {steps}, cfg: 7.0, sampler_name: euler, scheduler: normal}}
  decode: {{type: VAEDecode, in: {{samples: sample, vae: ckpt.vae}}}}
  save: {{type: SaveImage, in: {{images: decode}}, with: {{filename_prefix: "s{{{{ seed }}}}"}}}}
"""


class ForwardTimer:
    """Wall time spent inside the forward passes of some modules (outermost calls only)."""

    def __init__(self, modules):
        self.total = 0.0
        self.depth = 0
        for m in modules:
            m.register_forward_pre_hook(self._enter)
            m.register_forward_hook(self._leave)

    def _enter(self, *args):
        if self.depth == 0:
            self.t0 = time.perf_counter()
        self.depth += 1

    def _leave(self, *args):
        self.depth -= 1
        if self.depth == 0:
            self.total += time.perf_counter() - self.t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ckpt", default=None, help="checkpoint name on the model search path (default: a tiny one)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 4 steps (the test suite's check that this runs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 4

    import torch

    from flowrun import api
    from common import euler_pipeline, loaded_bundle

    from flowrun.cache.memory import MemoryCache
    from flowrun.settings import Settings
    from flowrun.spec.sweep import Overrides

    torch.set_num_threads(torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="flowrun-bench-"))
    atexit.register(shutil.rmtree, work, True)
    models = work / "models"
    ckpt = args.ckpt
    if ckpt is None:
        import tiny_model

        tiny_model.write(models, "tiny")
        ckpt = "tiny"
    prompt = "a red circle on a white background"
    wf = work / "bench.yaml"
    wf.write_text(WORKFLOW.format(ckpt=ckpt, prompt=prompt, size=args.size, steps=args.steps))
    memory = MemoryCache()

    def flowrun_render(seed: int) -> float:
        resolved = api.load(wf, Overrides.parse(sets=[f"seed={seed}"]))
        # a fresh disk cache per render: only the memory tier (the loaded checkpoint, the prompts) is reused
        settings = Settings(out_dir=work / "out", cache_dir=work / f"cache-{seed}", models_dirs=(str(models),),
                            device=args.device)
        t0 = time.perf_counter()
        api.run(resolved, settings, memory=memory)
        return time.perf_counter() - t0

    flowrun_render(10_000)  # load the checkpoint into the memory cache, warm up
    model, clip, vae = loaded_bundle(memory)
    timer = ForwardTimer([model.unet, vae.model, *clip.models])
    pipe = euler_pipeline(model, clip, vae)

    def diffusers_render(seed: int) -> float:
        t0 = time.perf_counter()
        pipe(prompt, negative_prompt="", height=args.size, width=args.size, num_inference_steps=args.steps,
             guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0].save(
            work / f"d{seed}.png")
        return time.perf_counter() - t0

    diffusers_render(10_000)
    ours, theirs, forward_fraction = [], [], []
    for i in range(args.rounds):
        theirs.append(diffusers_render(i))
        before = timer.total
        t = flowrun_render(i)
        ours.append(t)
        forward_fraction.append((timer.total - before) / t)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"device {args.device}, {args.size}x{args.size}, {args.steps} euler steps, cfg 7, {args.rounds} rounds (medians)")
    print(f"diffusers StableDiffusionPipeline  {b * 1000:8.1f} ms/image")
    print(f"flowrun run (model in memory)      {a * 1000:8.1f} ms/image")
    print(f"ratio flowrun / diffusers: {a / b:.3f}   (overhead {100 * (a / b - 1):+.1f}%; aim < +5%)")
    print(f"fraction of flowrun's render inside model forward passes: {statistics.median(forward_fraction):.3f}")


if __name__ == "__main__":
    main()
