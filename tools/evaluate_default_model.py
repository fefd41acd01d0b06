"""Measure how well flowrun-tiny draws what it is asked, through flowrun itself.

Renders every colour x shape prompt on each background with 4 fixed seeds (25 euler steps, cfg 5) as one
flowrun sweep, reads each image back with flowrun.diffusion.shapes.classify, and prints: VAE PSNR on
held-out images, background right, shape colour right, shape right, all three right. Writes a contact
sheet of the renders.

    python tools/evaluate_default_model.py [--ckpt flowrun-tiny] [--models-dir DIR] [--sheet docs/flowrun-tiny-eval.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from flowrun.diffusion import shapes

SEEDS = [1, 2, 3, 4]
STEPS, CFG = 25, 5.0

WORKFLOW = """\
version: 1
name: flowrun-tiny-eval
params: {{colour: red, shape: circle, background: white, seed: 1}}
sweep:
  grid:
    colour: {colours}
    shape: {shapes}
    background: {backgrounds}
    seed: {seeds}
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: {ckpt}}}}}
  pos:
    type: CLIPTextEncode
    in: {{clip: ckpt.clip}}
    with: {{text: "a {{{{ colour }}}} {{{{ shape }}}} on a {{{{ background }}}} background"}}
  neg: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: ""}}}}
  latent: {{type: EmptyLatentImage, with: {{width: 64, height: 64}}}}
  sample:
    type: KSampler
    in: {{model: ckpt.model, positive: pos, negative: neg, latent_image: latent}}
    with: {{seed: "{{{{ seed }}}}", steps: {steps}, cfg: {cfg}, sampler_name: euler, scheduler: normal}}
  decode: {{type: VAEDecode, in: {{samples: sample, vae: ckpt.vae}}}}
  save:
    type: SaveImage
    in: {{images: decode}}
    with: {{filename_prefix: "{{{{ background }}}}-{{{{ colour }}}}-{{{{ shape }}}}-{{{{ seed }}}}"}}
"""


def vae_psnr(ckpt: str, models_dirs: tuple[str, ...], n: int = 256, seed: int = 12345) -> float:
    """PSNR (dB) of VAE reconstructions of n held-out images (a seed the training never used)."""
    import torch

    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.files import FileLookup
    from flowrun.diffusion.vae import decode, encode

    _, _, vae = load_bundle(FileLookup(Path.cwd(), tuple(models_dirs)).path("checkpoints", ckpt), "eval")
    images, _ = shapes.batch(np.random.default_rng(seed), n)
    x = images.astype(np.float32) / 255.0
    with torch.no_grad():
        rec = decode(vae, encode(vae, x))
    mse = float(np.mean((np.clip(rec, 0, 1) - x) ** 2))
    return 10 * np.log10(1.0 / mse)


def contact_sheet(out: Path, files: dict[tuple, Path], path: Path) -> None:
    """Rows: background x colour; columns: shape x seed."""
    from PIL import Image

    rows = [(bg, c) for bg in shapes.BACKGROUNDS for c in shapes.COLOURS]
    cols = [(s, seed) for s in shapes.SHAPES for seed in SEEDS]
    sheet = Image.new("RGB", (len(cols) * 66 + 2, len(rows) * 66 + 2), (128, 128, 128))
    for r, (bg, colour) in enumerate(rows):
        for c, (shape, seed) in enumerate(cols):
            sheet.paste(Image.open(files[(bg, colour, shape, seed)]), (2 + c * 66, 2 + r * 66))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default="flowrun-tiny")
    ap.add_argument("--models-dir", action="append", default=[])
    ap.add_argument("--sheet", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from PIL import Image

    from flowrun import api
    from flowrun.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="flowrun-eval-"))
    wf = work / "eval.yaml"
    wf.write_text(WORKFLOW.format(colours=list(shapes.COLOURS), shapes=list(shapes.SHAPES),
                                  backgrounds=list(shapes.BACKGROUNDS), seeds=SEEDS, ckpt=args.ckpt,
                                  steps=STEPS, cfg=CFG))
    settings = Settings(out_dir=work / "out", use_cache=False, models_dirs=tuple(args.models_dir), device="cpu")
    api.run(api.load(wf), settings)
    files, right = {}, {"background": 0, "colour": 0, "shape": 0, "all": 0}
    for bg in shapes.BACKGROUNDS:
        for colour in shapes.COLOURS:
            for shape in shapes.SHAPES:
                for seed in SEEDS:
                    f = work / "out" / f"{bg}-{colour}-{shape}-{seed}.png"
                    files[(bg, colour, shape, seed)] = f
                    seen = shapes.classify(np.asarray(Image.open(f).convert("RGB")))
                    ok = (seen.background == bg, seen.colour == colour, seen.shape == shape)
                    right["background"] += ok[0]
                    right["colour"] += ok[1]
                    right["shape"] += ok[2]
                    right["all"] += all(ok)
    total = len(files)
    result = {"images": total, "vae_psnr_db": round(vae_psnr(args.ckpt, tuple(args.models_dir)), 2),
              **{f"{k}_right": round(v / total, 4) for k, v in right.items()}}
    if args.sheet:
        contact_sheet(work / "out", files, args.sheet)
    if args.json:
        print(json.dumps(result))
        return
    print(f"renders: {total} ({len(shapes.COLOURS)} colours x {len(shapes.SHAPES)} shapes x "
          f"{len(shapes.BACKGROUNDS)} backgrounds x {len(SEEDS)} seeds), {STEPS} euler steps, cfg {CFG}")
    print(f"VAE PSNR on 256 held-out images  {result['vae_psnr_db']:6.2f} dB   (aim >= 24)")
    print(f"background right                 {100 * result['background_right']:6.1f} %   (aim >= 95)")
    print(f"shape colour right               {100 * result['colour_right']:6.1f} %   (aim >= 90)")
    print(f"shape right                      {100 * result['shape_right']:6.1f} %   (aim >= 60)")
    print(f"all three right                  {100 * result['all_right']:6.1f} %   (aim >= 50)")


if __name__ == "__main__":
    main()
