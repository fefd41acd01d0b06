"""Train `flowrun-tiny-clip`, a small transformers CLIPModel on the procedural shapes of flowrun-tiny, so
that CLIPScore and the semantic regression checks work out of the box: it tells the 24 captions "a red
circle on a white background" apart on flowrun-tiny's renders.

Images: 64x64 renders of flowrun/diffusion/shapes.py, a quarter of them passed through flowrun-tiny's VAE (so
the model has seen the softness of decoded images), plus mild pixel noise. Captions: the shapes' captions,
tokenised with the CLIP tokenizer flowrun bundles. Loss: cross-entropy of each image against the 24
captions and of each caption against the batch's images (every image with that caption a positive; the
captions repeat within a batch, so plain CLIP's one-positive loss would push matching pairs apart).
CPU, one thread, seeded, a few minutes.

    python tools/train_tiny_clip.py [--steps 1500] [--out flowrun/models/clip_score/flowrun-tiny-clip]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion import shapes

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "flowrun" / "models" / "clip_score" / "flowrun-tiny-clip"
CKPT = ROOT / "flowrun" / "models" / "checkpoints" / "flowrun-tiny.safetensors"
CAPTIONS = [shapes.caption(c, s, b) for b, c, s in itertools.product(shapes.BACKGROUNDS, shapes.COLOURS, shapes.SHAPES)]


def clip_config():
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(image_size=shapes.SIZE, patch_size=16, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def image_bank(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n renders (uint8) and their caption indices; every fourth one round-tripped through the VAE."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.vae import decode, encode

    rng = np.random.default_rng(seed)
    images, scenes = shapes.batch(rng, n)
    labels = np.asarray([CAPTIONS.index(s.caption) for s in scenes])
    _, _, vae = load_bundle(CKPT, "train")
    with torch.no_grad():
        for start in range(0, n, 512):
            idx = np.arange(start, min(n, start + 512), 4)
            rec = decode(vae, encode(vae, images[idx].astype(np.float32) / 255.0))
            images[idx] = np.clip(np.rint(rec * 255), 0, 255).astype(np.uint8)
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bank", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    # one thread: the model is so small that a second thread mostly waits at barriers (measured: 28 ms a
    # step alone, over a second with two threads on two busy cores)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from transformers import CLIPModel

    from flowrun.diffusion.checkpoint import tokenizer
    from flowrun.diffusion.clip_judge import OPENAI_MEAN, OPENAI_STD

    start = time.time()
    images, labels = image_bank(args.bank, args.seed + 1)
    print(f"[{time.time() - start:6.1f}s] rendered {len(images)} images", flush=True)
    model = CLIPModel(clip_config())
    # 16 tokens hold every caption; under the causal mask the pooled (end-of-text) output is the same as at 77
    tok = tokenizer()(CAPTIONS, padding="max_length", max_length=16, return_tensors="pt")
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch,), generator=gen)
        x = torch.from_numpy(images[idx.numpy()]).float().permute(0, 3, 1, 2) / 255.0
        x = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)  # robustness to sampling noise
        y = torch.from_numpy(labels[idx.numpy()])
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=(x - mean) / std).pooler_output, dim=-1)
        txt = torch.nn.functional.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T  # [batch, 24]
        loss_img = torch.nn.functional.cross_entropy(logits, y)
        present = torch.unique(y)
        positives = (y[None, :] == present[:, None]).float()
        loss_txt = -(torch.log_softmax(logits[:, present].T, dim=-1) * positives / positives.sum(-1, keepdim=True)).sum(-1).mean()
        loss = (loss_img + loss_txt) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if (step + 1) % 100 == 0:
            acc = (logits.argmax(-1) == y).float().mean().item()
            print(f"[{time.time() - start:6.1f}s] step {step + 1}/{args.steps}  loss {loss.item():.4f}  "
                  f"batch accuracy {acc:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(args.out, safe_serialization=True)
    (args.out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": shapes.SIZE},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": shapes.SIZE, "width": shapes.SIZE},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD), "do_convert_rgb": True}, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
