"""A full-size SD 1.5 single file (860 M UNet + CLIP-L + VAE, seeded random weights in the original key
layout, 4.3 GB of float32) loaded and rendered by flowrun and by diffusers' `from_single_file` +
StableDiffusionPipeline, in float32 and bfloat16, each in its own process:

- load: the checkpoint into memory (flowrun: load_bundle and every part built; diffusers:
  from_single_file), seconds after imports, and the process's peak memory;
- cold: a fresh process to its first image (64x64, 6 euler steps, cfg 7; flowrun with an empty cache,
  the file's fingerprint remembered as after any earlier run), and its peak memory;
- warm: a second image with another seed in the same process;
- the libraries' own memory: the peak of a process that imports what a render needs and loads nothing,
  so that a render's peak less this is its weights and activations, to set against the weights' size in
  their compute dtypes (issue 17's aim: at most 1.1x, plus activations).

Offline: diffusers reads its configs from a folder written here from flowrun's bundled ones.

    python benchmarks/fullsize_sd15.py [--quick]

--quick renders with the bundled flowrun-tiny checkpoint (toy size), float32 only, in about half a minute; the
full run writes the 4.3 GB file into a temporary folder (deleted at the end) and takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "a red circle on a white background"
WORKFLOW = """\
version: 1
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: bench}}}}
  pos: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: "{prompt}"}}}}
  neg: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: ""}}}}
  latent: {{type: EmptyLatentImage, with: {{width: 64, height: 64}}}}
  sample:
    type: KSampler
    in: {{model: ckpt.model, positive: pos, negative: neg, latent_image: latent}}
    with: {{seed: {seed}, steps: 6, cfg: 7.0, sampler_name: euler, scheduler: normal}}
  decode: {{type: VAEDecode, in: {{samples: sample, vae: ckpt.vae}}}}
  save: {{type: SaveImage, in: {{images: decode}}, with: {{filename_prefix: "bench-{seed}"}}}}
"""


# ---- the checkpoint and diffusers' offline configs -------------------------------------------------------

def write_full_checkpoint(path: Path) -> None:
    """SD 1.5's layout with seeded random weights (N(0, 0.02), norms' scales 1), float32."""
    import torch
    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import _text_model
    from flowrun.diffusion.configs import SD1, ModelConfig
    from flowrun.diffusion.diffusers_models import AutoencoderKL, UNet2DConditionModel
    from flowrun.diffusion.export import file_metadata
    from flowrun.diffusion.ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm

    cfg = ModelConfig.default(SD1)
    with torch.device("meta"):  # the real key layout, without memory
        unet, vae = UNet2DConditionModel(**cfg.unet), AutoencoderKL(**cfg.vae)
        text = _text_model(cfg.text_encoders[0], False)
    layout = {**unet_to_ldm(unet.state_dict(), cfg.unet), **vae_to_ldm(vae.state_dict(), cfg.vae),
              **clip_to_ldm(text.state_dict())}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key in sorted(layout):
        meta = layout[key]
        if not meta.is_floating_point():
            state[key] = torch.arange(meta.shape[-1]).expand(meta.shape).contiguous()  # position ids
        elif meta.ndim == 1 and "norm" in key and key.endswith("weight"):
            state[key] = torch.ones(meta.shape)
        else:
            state[key] = torch.randn(meta.shape, generator=gen) * 0.02
    save_file(state, str(path), metadata={k: v for k, v in file_metadata(cfg).items() if k != "flowrun.config"})


def write_diffusers_configs(folder: Path, config) -> None:
    """A diffusers pipeline folder holding only configs (no weights): what from_single_file reads offline."""
    import torch
    from diffusers import EulerDiscreteScheduler
    from transformers.models.clip.configuration_clip import CLIPTextConfig

    from flowrun.diffusion.checkpoint import TOKENIZER_DIR
    from flowrun.diffusion.diffusers_models import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        UNet2DConditionModel(**config.unet).save_config(folder / "unet")
        AutoencoderKL(**config.vae).save_config(folder / "vae")
    CLIPTextConfig(**config.text_encoders[0]).save_pretrained(folder / "text_encoder")
    (folder / "tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / name, folder / "tokenizer" / name)
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           timestep_spacing="linspace", steps_offset=1).save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))


# ---- the measured children -----------------------------------------------------------------------------

def child(args) -> None:
    """One measurement in this process; prints a JSON line (epoch times and seconds)."""
    result: dict = {}
    t0 = time.perf_counter()
    if args.child == "libraries":  # what a flowrun render imports, nothing loaded
        import flowrun.diffusion.offline  # noqa: F401
        import diffusers.loaders.single_file_utils  # noqa: F401
        import transformers.models.clip.modeling_clip  # noqa: F401
        import transformers.models.clip.tokenization_clip  # noqa: F401

        import flowrun.diffusion.diffusers_models  # noqa: F401
        from flowrun import api  # noqa: F401
        print(json.dumps({"peak": peak_rss_gib()}))
        return
    if args.child.startswith("flowrun"):
        from flowrun import api
        from flowrun.cache.memory import MemoryCache
        from flowrun.diffusion.checkpoint import load_bundle
        from flowrun.settings import Settings
    else:
        import flowrun.diffusion.offline  # noqa: F401  (the hub offline and torchvision importable, as for flowrun)
        import torch
        from diffusers import StableDiffusionPipeline
    result["imports"] = time.perf_counter() - t0  # flowrun imports diffusers and transformers on first use
    work = Path(args.work)
    ckpt = work / "models" / "checkpoints" / "bench.safetensors"
    if args.child == "flowrun-load":
        # what the load needs imported first, as diffusers' side imports its pipeline before it is timed
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: F401
        from transformers.models.clip.modeling_clip import CLIPTextModel  # noqa: F401

        import flowrun.diffusion.diffusers_models  # noqa: F401
        t1 = time.perf_counter()
        model, clip, vae = load_bundle(ckpt, "bench", device="cpu", dtype=args.dtype)
        model.unet, clip.models, vae.model  # noqa: B018  (build every part)
        result["load"] = time.perf_counter() - t1
    elif args.child == "flowrun":
        memory = MemoryCache(64 * 1024**3)
        for seed, name in ((1, "first"), (2, "warm")):
            wf = work / f"wf-{seed}.yaml"
            wf.write_text(WORKFLOW.format(prompt=PROMPT, seed=seed))
            t1 = time.perf_counter()
            api.run(api.load(wf), Settings(out_dir=work / f"out-{args.dtype}", cache_dir=work / args.cache,
                                           models_dirs=(str(work / "models"),), device="cpu", dtype=args.dtype),
                    memory=memory)
            result[name] = time.perf_counter() - t1
            if name == "first":
                result["first_done"] = time.time()
    else:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        t1 = time.perf_counter()
        pipe = StableDiffusionPipeline.from_single_file(str(ckpt), config=str(work / "diffusers-configs"),
                                                        local_files_only=True, torch_dtype=dtype,
                                                        safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        result["load"] = time.perf_counter() - t1
        if args.child == "diffusers":
            for seed, name in ((1, "first"), (2, "warm")):
                t1 = time.perf_counter()
                pipe(PROMPT, negative_prompt="", height=64, width=64, num_inference_steps=6, guidance_scale=7.0,
                     generator=torch.Generator("cpu").manual_seed(seed), output_type="pil")
                result[name] = time.perf_counter() - t1
                if name == "first":
                    result["first_done"] = time.time()
    result["peak"] = peak_rss_gib()
    print(json.dumps(result))


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss, which Linux keeps across
    exec: a child would report its parent's peak (the parent held the 4.3 GB state dict it wrote)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark measures memory on Linux)")


def measure(kind: str, dtype: str, work: Path, cache: str = "") -> dict:
    """Run one child: its result (with `peak`, its peak resident memory in GiB) and, for the runs that
    render, `cold`: seconds from the process's launch to its first image."""
    cmd = [sys.executable, __file__, "--child", kind, "--dtype", dtype, "--work", str(work), "--cache", cache]
    launched = time.time()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{kind} {dtype} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "first_done" in result:
        result["cold"] = result["first_done"] - launched
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the bundled toy checkpoint instead of a full-size one")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from flowrun.cache.fingerprints import file_sha256
    from flowrun.diffusion.checkpoint import read_header
    from flowrun.diffusion.configs import SD1, ModelConfig

    with tempfile.TemporaryDirectory(prefix="flowrun-fullsize-", dir=os.environ.get("FLOWRUN_BENCH_TMP")) as tmp:
        work = Path(tmp)
        ckpt = work / "models" / "checkpoints" / "bench.safetensors"
        ckpt.parent.mkdir(parents=True)
        t0 = time.perf_counter()
        if args.quick:
            bundled = ROOT / "flowrun" / "models" / "checkpoints" / "flowrun-tiny.safetensors"
            shutil.copy(bundled, ckpt)
            shutil.copy(bundled.with_suffix(".json"), ckpt.with_suffix(".json"))
            config = ModelConfig.from_sidecar(ckpt.with_suffix(".json"), SD1)
        else:
            write_full_checkpoint(ckpt)
            config = ModelConfig.default(SD1)
        size = ckpt.stat().st_size / 1e9
        write_diffusers_configs(work / "diffusers-configs", config)
        read_header(ckpt)
        made = time.perf_counter() - t0
        file_sha256(ckpt, work / "fingerprints-only")  # hashed once, remembered, as after any earlier run
        print(f"checkpoint: {'bundled flowrun-tiny (toy size)' if args.quick else 'full-size SD 1.5, seeded random'}"
              f", {size:.2f} GB float32, made in {made:.0f} s")
        rows = []
        dtypes = ("float32",) if args.quick else ("float32", "bfloat16")
        for dtype in dtypes:
            for kind in ("flowrun", "diffusers"):
                # --quick leaves out the separate load processes (the toy model loads in no time)
                loaded = {"load": float("nan"), "peak": float("nan")} if args.quick else measure(
                    f"{kind}-load", dtype, work)
                cache = f"cache-{kind}-{dtype}"
                shutil.copytree(work / "fingerprints-only", work / cache)
                ran = measure(kind, dtype, work, cache)
                rows.append((kind, dtype, loaded["load"], loaded["peak"], ran["cold"], ran["warm"], ran["peak"],
                             ran["imports"], ran["first"]))
        print(f"{'':22}{'load s':>8}{'load peak GiB':>15}{'cold s':>8}{'warm s':>8}{'run peak GiB':>14}"
              f"   (cold: imports s + first image s)")
        for kind, dtype, load, peak, cold, warm, run_peak, imports, first in rows:
            print(f"{kind + ' ' + dtype:22}{load:8.2f}{peak:15.2f}{cold:8.2f}{warm:8.2f}{run_peak:14.2f}"
                  f"   ({imports:.2f} + {first:.2f})")
        by = {(k, d): r for k, d, *r in rows}  # (load, load peak, cold, warm, run peak, imports, first)
        for dtype in dtypes:
            f, d = by[("flowrun", dtype)], by[("diffusers", dtype)]
            print(f"ratio flowrun / diffusers, {dtype}: cold {f[2] / d[2]:.2f}, warm {f[3] / d[3]:.2f}, "
                  f"load {f[0] / d[0]:.2f}, load peak {f[1] / d[1]:.2f}, run peak {f[4] / d[4]:.2f}")
        if args.quick:
            return
        base = measure("libraries", "float32", work)["peak"]
        shapes = read_header(ckpt).shapes
        unet_numel = sum(math.prod(v) for k, v in shapes.items() if k.startswith("model.diffusion_model."))
        rest_numel = sum(math.prod(v) for k, v in shapes.items()) - unet_numel  # CLIP and VAE: float32 on the CPU
        for dtype, width in (("float32", 4), ("bfloat16", 2)):
            weights = (unet_numel * width + rest_numel * 4) / 1024**3
            beyond = by[("flowrun", dtype)][4] - base
            print(f"ratio flowrun {dtype} run peak beyond the libraries' {base:.2f} GiB / weights {weights:.2f} GiB: "
                  f"{beyond / weights:.2f}   (aim <= 1.1 plus activations)")
        f32, b16 = by[("flowrun", "float32")], by[("flowrun", "bfloat16")]
        print(f"ratio flowrun bfloat16 / float32: cold {b16[2] / f32[2]:.2f}, warm {b16[3] / f32[3]:.2f}, "
              f"load {b16[0] / f32[0]:.2f}, load peak {b16[1] / f32[1]:.2f}, run peak {b16[4] / f32[4]:.2f}")


if __name__ == "__main__":
    main()
