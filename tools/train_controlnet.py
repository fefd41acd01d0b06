"""Train `flowrun-tiny-canny`, a ControlNet for flowrun-tiny that takes the Canny edge map of a scene as its
hint: the shape is drawn where, and as, the edges say. It exists so that the ControlNet example has a real
control to apply; it is saved in diffusers' layout with its config in the file's metadata.

The ControlNet starts as a copy of the UNet's encoder (diffusers' ControlNetModel.from_unet) with its
zero convolutions at zero; the UNet, VAE and text encoder stay frozen. The hint is flowrun's Canny (the
Canny node's) of the training image at the example's thresholds. 10 % of captions are dropped, as the
model's own training did, so classifier-free guidance still works with the control. The loss weighs each
sample's noise error by sigma^2 (kept within 1..25): layout is decided at high noise, where the plain noise
loss hardly counts. CPU (one thread), deterministic.

    flock /tmp/flowrun-cpu.lock python tools/train_controlnet.py [--steps 900] [--batch 16] [--out flowrun/models/controlnet]
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from adapter_training import ROOT, NoisedBatches, arguments, deterministic

from flowrun.diffusion import shapes

LOW, HIGH = 0.2, 0.5  # Canny thresholds of the hint (workflows/controlnet.yaml uses the same)
HINT_CHANNELS = (16, 32, 64, 64)  # the hint embedding: 64x64 image -> 8x8 latent in three stride-2 convolutions
DROP_CAPTION = 0.1
MAX_WEIGHT = 25.0  # cap of the sigma^2 loss weight (its floor is 1: the plain loss at low noise)


def hints(images: np.ndarray) -> torch.Tensor:
    """Canny edge maps [batch, 3, h, w] in {0, 1} of uint8 images [batch, h, w, 3]."""
    from flowrun.diffusion.canny import canny

    edges = canny(torch.from_numpy(images.copy()).float().permute(0, 3, 1, 2) / 255.0, LOW, HIGH)
    return edges.repeat(1, 3, 1, 1)


def main() -> None:
    ap = arguments(__doc__, ROOT / "flowrun" / "models" / "controlnet", 900)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--save-every", type=int, default=0, help="also save every N steps, under OUT/stepN/")
    ap.set_defaults(batch=16)
    args = ap.parse_args()
    deterministic(args.seed)
    torch.set_num_threads(1)  # the two cores are shared with other work: two threads thrash when they are busy

    from diffusers import ControlNetModel

    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import END, tokenize

    model, clip, vae = load_bundle(args.ckpt, "base")
    unet, text = model.unet, clip.models[0]
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS).train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    noised = NoisedBatches(model, vae, gen)
    rng = np.random.default_rng(args.seed + 11)
    with torch.no_grad():
        empty = text(input_ids=torch.tensor([[t for t, _ in tokenize(clip.tokenizer, "", END)[0]]])).last_hidden_state
    start, running = time.time(), []
    for step in range(args.steps):
        scenes = [shapes.random_scene(rng) for _ in range(args.batch)]
        images = np.stack([shapes.render(s) for s in scenes])
        zt, t, noise = noised(images)
        ids = torch.tensor([[t for t, _ in tokenize(clip.tokenizer, s.caption, END)[0]] for s in scenes])
        with torch.no_grad():
            context = text(input_ids=ids).last_hidden_state
            drop = torch.from_numpy(rng.random(args.batch) < DROP_CAPTION).view(-1, 1, 1)
            context = torch.where(drop, empty.expand_as(context), context)
        down, mid = controlnet(zt, t, encoder_hidden_states=context, controlnet_cond=hints(images), return_dict=False)
        pred = unet(zt, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        # the noise-prediction error weighted by sigma^2 (capped): the error of the clean image it implies.
        # Where and what the shape is gets decided at high noise, where the plain noise loss hardly counts.
        sigma2 = (1 - noised.alphas_cumprod[t]) / noised.alphas_cumprod[t]
        weight = sigma2.clamp(min=1.0, max=MAX_WEIGHT).float().view(-1, 1, 1, 1)
        loss = (weight * (pred - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if (step + 1) % 100 == 0:
            print(f"[{time.time() - start:6.1f}s] controlnet step {step + 1}/{args.steps}  "
                  f"loss {np.mean(running[-100:]):.4f}", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save(controlnet, model.family, args.out / f"step{step + 1}")
    path = save(controlnet, model.family, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {(time.time() - start) / 60:.1f} min")


def save(controlnet, family: str, folder):
    """folder/flowrun-tiny-canny.safetensors: float16 weights in diffusers' layout, the config in the metadata."""
    from safetensors.torch import save_file

    from flowrun.diffusion.export import CONFIG_KEY

    config = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
    state = {k: v.detach().half().contiguous() for k, v in controlnet.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flowrun-tiny-canny.safetensors"
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps({"family": family, "controlnet": config})})
    return path


if __name__ == "__main__":
    main()
