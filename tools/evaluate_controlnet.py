"""Measure whether flowrun-tiny follows flowrun-tiny-canny's hint, through flowrun itself.

For N held-out scenes (a seed the training never used): the scene's image goes through LoadImage -> Canny
-> ControlNetApplyAdvanced, its caption is the prompt, and the same seed renders with the control
(strength 1) and without it (strength 0). Each render is read back: the figure's centre (pixels far from
the background colour) against the scene's own, and its shape (flowrun.diffusion.shapes.classify). A
render follows the hint when its centre is within 4 pixels of the scene's and its shape is the scene's.

    python tools/evaluate_controlnet.py [--n 24] [--models-dir DIR] [--sheet docs/flowrun-tiny-canny-eval.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from flowrun.diffusion import shapes

STEPS, CFG, NEAR = 20, 7.0, 4.0  # the example's sampling; a centre within 4 pixels is in place

WORKFLOW = """\
version: 1
name: controlnet-eval
params: {{case: 0, control: 1.0, prompts: {prompts}}}
sweep:
  grid: {{case: {cases}, control: [0.0, 1.0]}}
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: flowrun-tiny}}}}
  pos: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: "{{{{ prompts[case] }}}}"}}}}
  neg: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: ""}}}}
  photo: {{type: LoadImage, with: {{image: "scene{{{{ case }}}}.png"}}}}
  edges: {{type: Canny, in: {{image: photo.image}}, with: {{low_threshold: 0.2, high_threshold: 0.5}}}}
  cnet: {{type: ControlNetLoader, with: {{control_net_name: flowrun-tiny-canny}}}}
  apply:
    type: ControlNetApplyAdvanced
    in: {{positive: pos, negative: neg, control_net: cnet, image: edges}}
    with: {{strength: "{{{{ control }}}}"}}
  latent: {{type: EmptyLatentImage, with: {{width: 64, height: 64}}}}
  sample:
    type: KSampler
    in: {{model: ckpt.model, positive: apply.positive, negative: apply.negative, latent_image: latent}}
    with: {{seed: "{{{{ 1000 + case }}}}", steps: {steps}, cfg: {cfg}, sampler_name: euler, scheduler: normal}}
  decode: {{type: VAEDecode, in: {{samples: sample, vae: ckpt.vae}}}}
  save: {{type: SaveImage, in: {{images: decode}}, with: {{filename_prefix: "case{{{{ case }}}}-control{{{{ control }}}}"}}}}
"""


def centre(image: np.ndarray, background: str) -> np.ndarray | None:
    """The mean position (x, y) of the pixels far from the background colour (None: no figure)."""
    bg = np.asarray(shapes.BACKGROUNDS[background], dtype=np.float64)
    mask = np.sqrt(((image.astype(np.float64) - bg) ** 2).sum(-1)) > 90
    if mask.sum() < 20:
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--models-dir", action="append", default=[])
    ap.add_argument("--sheet", type=Path, default=None)
    args = ap.parse_args()

    from PIL import Image

    from flowrun import api
    from flowrun.settings import Settings

    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="flowrun-cn-eval-"))
    scenes = [shapes.random_scene(rng) for _ in range(args.n)]
    for i, scene in enumerate(scenes):
        Image.fromarray(shapes.render(scene)).save(work / f"scene{i}.png")
    (work / "eval.yaml").write_text(WORKFLOW.format(prompts=json.dumps([s.caption for s in scenes]),
                                                    cases=list(range(args.n)), steps=STEPS, cfg=CFG))
    settings = Settings(out_dir=work / "out", use_cache=False, models_dirs=tuple(args.models_dir), device="cpu")
    api.run(api.load(work / "eval.yaml"), settings)
    follows, near, shaped = {0.0: 0, 1.0: 0}, {0.0: 0, 1.0: 0}, {0.0: 0, 1.0: 0}
    tiles = []
    for i, scene in enumerate(scenes):
        truth = shapes.render(scene)
        want = centre(truth, scene.background)
        row = [truth]
        for control in (0.0, 1.0):
            image = np.asarray(Image.open(work / "out" / f"case{i}-control{control}.png").convert("RGB"))
            row.append(image)
            got = centre(image, scene.background)
            is_near = got is not None and float(np.linalg.norm(got - want)) <= NEAR
            is_shaped = shapes.classify(image).shape == scene.shape
            near[control] += is_near
            shaped[control] += is_shaped
            follows[control] += is_near and is_shaped
        tiles.append(row)
    result = {"renders": args.n, "steps": STEPS, "cfg": CFG,
              **{f"{what}_{'with' if c else 'without'}": round(d[c] / args.n, 4)
                 for what, d in (("position", near), ("shape", shaped), ("both", follows)) for c in (0.0, 1.0)}}
    print(json.dumps(result, indent=1))
    if args.sheet:  # rows of: the scene, without the control, with it
        sheet = Image.new("RGB", (3 * 66 + 2, len(tiles) * 66 + 2), (128, 128, 128))
        for r, row in enumerate(tiles):
            for c, tile in enumerate(row):
                sheet.paste(Image.fromarray(tile), (2 + c * 66, 2 + r * 66))
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet, optimize=True)


if __name__ == "__main__":
    main()
