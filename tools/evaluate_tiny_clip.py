"""Measure flowrun-tiny-clip's zero-shot accuracy on flowrun-tiny's renders, through flowrun itself.

Renders every colour x shape prompt on each background with 4 seeds the examples do not use (25 euler
steps, cfg 5: tools/evaluate_default_model.py's sweep) and picks, for each render, the caption among the 24
colour x shape x background captions with the highest CLIP similarity. Prints the accuracy against the
prompt (flowrun-tiny itself sometimes draws another shape, so this is capped by its own accuracy) and
against what the pixel classifier (flowrun.diffusion.shapes.classify) reads in the render, on the renders
where it reads all three; also the mean CLIPScore of the right caption and of the best wrong one.

    python tools/evaluate_tiny_clip.py [--clip flowrun-tiny-clip] [--models-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from evaluate_default_model import CFG, STEPS, WORKFLOW

from flowrun.diffusion import shapes

SEEDS = [101, 102, 103, 104]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default="flowrun-tiny")
    ap.add_argument("--clip", default="flowrun-tiny-clip")
    ap.add_argument("--models-dir", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from PIL import Image

    from flowrun import api
    from flowrun.diffusion.clip_judge import load
    from flowrun.files import FileLookup
    from flowrun.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="flowrun-clip-eval-"))
    wf = work / "eval.yaml"
    wf.write_text(WORKFLOW.format(colours=list(shapes.COLOURS), shapes=list(shapes.SHAPES),
                                  backgrounds=list(shapes.BACKGROUNDS), seeds=SEEDS, ckpt=args.ckpt,
                                  steps=STEPS, cfg=CFG))
    settings = Settings(out_dir=work / "out", use_cache=False, models_dirs=tuple(args.models_dir), device="cpu")
    api.run(api.load(wf), settings)

    lookup = FileLookup(work, tuple(args.models_dir))
    judge = load(lookup.path("clip_score", args.clip), "eval")
    keys = list(itertools.product(shapes.BACKGROUNDS, shapes.COLOURS, shapes.SHAPES))
    captions = [shapes.caption(c, s, b) for b, c, s in keys]
    text = judge.text_embeds(captions)
    renders, asked, seen = [], [], []
    for b, c, s in keys:
        for seed in SEEDS:
            img = np.asarray(Image.open(work / "out" / f"{b}-{c}-{s}-{seed}.png").convert("RGB"))
            renders.append(img.astype(np.float32) / 255.0)
            asked.append(captions.index(shapes.caption(c, s, b)))
            r = shapes.classify(img)
            seen.append(captions.index(shapes.caption(r.colour, r.shape, r.background)) if r.colour and r.shape else -1)
    cos = judge.image_embeds(np.stack(renders)) @ text.T  # [renders, 24]
    picked = cos.argmax(-1).numpy()
    asked, seen = np.asarray(asked), np.asarray(seen)
    readable = seen >= 0
    right = cos[np.arange(len(asked)), asked]
    wrong = cos.clone()
    wrong[np.arange(len(asked)), asked] = -2
    result = {
        "renders": len(asked),
        "accuracy_vs_prompt": round(float((picked == asked).mean()), 4),
        "accuracy_vs_pixel_reading": round(float((picked[readable] == seen[readable]).mean()), 4),
        "readable_renders": int(readable.sum()),
        "flowrun_tiny_draws_prompt": round(float((seen == asked).mean()), 4),
        "mean_clip_score_prompt": round(float(2.5 * right.clamp(min=0).mean()), 4),
        "mean_clip_score_best_wrong": round(float(2.5 * wrong.max(-1).values.clamp(min=0).mean()), 4),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"renders: {result['renders']} (24 prompts x {len(SEEDS)} seeds {SEEDS}), {STEPS} euler steps, cfg {CFG}")
    print(f"zero-shot right (vs the prompt)              {100 * result['accuracy_vs_prompt']:6.1f} %   (aim >= 90)")
    print(f"zero-shot right (vs what the pixels show)    {100 * result['accuracy_vs_pixel_reading']:6.1f} %   "
          f"({result['readable_renders']} renders the pixel classifier reads)")
    print(f"flowrun-tiny drew the prompt                 {100 * result['flowrun_tiny_draws_prompt']:6.1f} %")
    print(f"mean CLIPScore: prompt {result['mean_clip_score_prompt']:.3f}, best wrong caption "
          f"{result['mean_clip_score_best_wrong']:.3f}")


if __name__ == "__main__":
    main()
