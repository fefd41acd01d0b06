"""Train `flowrun-tiny-sun`, a textual-inversion embedding for flowrun-tiny: two token vectors that mean
"a yellow circle", learnt from images alone. It exists so that the embedding example has a real,
trained embedding to load (`embedding:flowrun-tiny-sun` in a prompt); it is saved as ComfyUI and A1111
save them (`emb_params`, safetensors).

Only the two vectors train; the UNet, VAE and text encoder stay frozen. Captions are "a <sun> on a white
background" / "... black background" for images of yellow circles. CPU, deterministic, under a minute.
Then it renders held-out seeds of "a embedding:flowrun-tiny-sun on a black background" and counts how
many the shape classifier (flowrun/diffusion/shapes.py) reads as a yellow circle.

    python tools/train_embedding.py [--steps 100] [--out flowrun/models/embeddings]
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from adapter_training import ROOT, NoisedBatches, arguments, deterministic, diffusion_loss

from flowrun.diffusion import shapes

NAME = "flowrun-tiny-sun"
VECTORS = 2
PLACEHOLDER = "thing"  # a word the captions never use: its token positions take the trained vectors


def main() -> None:
    ap = arguments(__doc__, ROOT / "flowrun" / "models" / "embeddings", 100)
    ap.add_argument("--evaluate", type=int, default=32, help="held-out renders to classify after training")
    args = ap.parse_args()
    deterministic(args.seed)

    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import END, tokenize

    model, clip, vae = load_bundle(args.ckpt, "base")
    unet, text = model.unet, clip.models[0]
    for p in (*unet.parameters(), *text.parameters(), *vae.model.parameters()):
        p.requires_grad_(False)
    table = text.get_input_embeddings()
    (placeholder,) = clip.tokenizer(PLACEHOLDER)["input_ids"][1:-1]
    start_from = table.weight[clip.tokenizer("circle")["input_ids"][1]].detach()
    vectors = torch.nn.Parameter(start_from.repeat(VECTORS, 1).clone())
    opt = torch.optim.AdamW([vectors], lr=5e-3, weight_decay=0.0)
    rng = np.random.default_rng(args.seed + 11)
    noised = NoisedBatches(model, vae, torch.Generator().manual_seed(args.seed))
    holder = text.text_model.embeddings if hasattr(text, "text_model") else text.embeddings
    started = time.time()

    def context_for(backgrounds: list[str]) -> torch.Tensor:
        words = " ".join([PLACEHOLDER] * VECTORS)
        ids = torch.tensor([[t for t, _ in tokenize(clip.tokenizer, f"a {words} on a {bg} background", END)[0]]
                            for bg in backgrounds])
        embeds = table(ids)
        where = ids == placeholder
        per_row = vectors.repeat(len(backgrounds), 1)
        embeds = embeds.masked_scatter(where.unsqueeze(-1), per_row)
        # the text encoder's own forward from these embeddings on (its table swapped for the call, as
        # flowrun.diffusion.clip does when it renders with an embedding)
        holder.token_embedding = _Given(embeds)
        try:
            return text(input_ids=ids).last_hidden_state
        finally:
            holder.token_embedding = table

    for step in range(args.steps):
        scenes = [replace(shapes.random_scene(rng), shape="circle", colour="yellow") for _ in range(args.batch)]
        batch = noised(np.stack([shapes.render(s) for s in scenes]))
        loss = diffusion_loss(unet, batch, context_for([s.background for s in scenes]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            print(f"[{time.time() - started:6.1f}s] embedding step {step + 1}/{args.steps}  loss {loss.item():.4f}",
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.safetensors"
    save_file({"emb_params": vectors.detach().half().contiguous()}, str(path),
              metadata={"flowrun": "textual inversion for flowrun-tiny: a yellow circle"})
    print(f"wrote {path} ({path.stat().st_size} bytes) in {(time.time() - started) / 60:.1f} min")
    if args.evaluate:
        evaluate(path, model, clip, vae, args.evaluate)


class _Given(torch.nn.Module):
    """A token table that returns embeddings computed beforehand, whatever the ids."""

    def __init__(self, embeds: torch.Tensor):
        super().__init__()
        self.embeds = embeds

    def forward(self, input_ids):
        return self.embeds


def evaluate(path: Path, model, clip, vae, n: int) -> None:
    """Render n held-out seeds of the embedding's prompt; count the yellow circles the classifier reads."""
    from flowrun.diffusion.clip import encode, read_embedding
    from flowrun.diffusion.ksampler import ksample
    from flowrun.diffusion.vae import decode
    from flowrun.values import Latent

    def lookup(name):
        return read_embedding(path, allow_pickle=False)

    hits = {"black": 0, "white": 0}
    negative = encode(clip, "")
    for background in hits:
        positive = encode(clip, f"a embedding:{NAME} on a {background} background", embeddings=lookup)
        for seed in range(1000, 1000 + n):
            latent = ksample(model, seed=seed, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal",
                             positive=positive, negative=negative, latent=Latent(torch.zeros(1, 4, 8, 8)))
            image = (decode(vae, latent.samples)[0] * 255).round().astype(np.uint8)
            seen = shapes.classify(image)
            hits[background] += seen.colour == "yellow" and seen.shape == "circle" and seen.background == background
    for background, count in hits.items():
        print(f"{background} background: {count}/{n} renders read as a yellow circle ({100 * count / n:.0f} %)")


if __name__ == "__main__":
    main()
