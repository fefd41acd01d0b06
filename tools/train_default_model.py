"""Train flowrun's default model, `flowrun-tiny`, on the CPU, deterministically, from nothing.

SD 1.x architecture at toy width: a diffusers AutoencoderKL, a UNet2DConditionModel and a transformers
CLIPTextModel read through the real CLIP tokenizer. Data: coloured shapes on plain backgrounds with
captions ("a red circle on a white background"), drawn procedurally from a seed (flowrun.diffusion.shapes).

Two stages:
1. the VAE (64x64 RGB <-> 8x8x4), MSE + a small KL term;
2. the UNet and the text encoder together, epsilon prediction on SD's scaled-linear schedule, on latents
   of a fixed image bank encoded once, 10 % of captions dropped for classifier-free guidance, EMA weights.

Writes the model as one .safetensors in the original SD key layout plus its sidecar config, the format
users' checkpoints come in, so it loads through the same path. Losses are printed as it goes.

    python tools/train_default_model.py                     # the shipped model (see the model card for time)
    python tools/train_default_model.py --quick --out /tmp/m  # seconds: a smoke run on tiny settings
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from flowrun.diffusion import offline  # noqa: F401  (before diffusers/transformers)
from flowrun.diffusion import shapes

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "flowrun" / "models" / "checkpoints"

VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [16, 32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64, "act_fn": "silu",
}
UNET_CONFIG = {  # 8x8 latents: plain resnets at 8x8, cross-attention at 4x4 and in the middle (speed on 2 cores)
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [64, 128], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 64,
    "attention_head_dim": 8, "norm_num_groups": 16,
}
TEXT_CONFIG = {
    "vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 64, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
QUICK = {"vae_steps": 3, "unet_steps": 3, "bank": 64, "batch_vae": 4, "batch_unet": 8}
FULL = {"vae_steps": 2000, "unet_steps": 6500, "bank": 24000, "batch_vae": 16, "batch_unet": 64}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1.0


def train_vae(cfg: dict, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    steps = cfg["vae_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    recent = []
    for step in range(steps):
        images, _ = shapes.batch(rng, cfg["batch_vae"])
        x = to_tensor(images)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(rec, x)
        kl = dist.kl().mean() / x[0].numel()
        loss = mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        recent.append(mse.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"vae step {step + 1}/{steps}  mse {np.mean(recent):.5f}  kl {kl.item():.3f}")
            recent = []
    return vae.eval().requires_grad_(False)


def encode_bank(vae, cfg: dict, seed: int):
    rng = np.random.default_rng(seed + 1)
    latents, captions = [], []
    with torch.no_grad():
        for start in range(0, cfg["bank"], 256):
            images, scenes = shapes.batch(rng, min(256, cfg["bank"] - start))
            latents.append(vae.encode(to_tensor(images)).latent_dist.mean)
            captions += [s.caption for s in scenes]
    latents = torch.cat(latents)
    return latents, captions


def token_table(captions: list[str]):
    """Token ids of each distinct caption (and of the empty prompt), exactly as flowrun encodes prompts."""
    from flowrun.diffusion.checkpoint import tokenizer
    from flowrun.diffusion.clip import END, tokenize

    tok = tokenizer()
    distinct = sorted(set(captions)) + [""]
    ids = torch.tensor([[t for t, _ in tokenize(tok, c, END)[0]] for c in distinct])
    index = {c: i for i, c in enumerate(distinct)}
    return ids, index


def train_unet(latents, captions, cfg: dict, seed: int):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from flowrun.diffusion.model import ModelSampling

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_text = {k: v.detach().clone() for k, v in text.state_dict().items()}
    ids, index = token_table(captions)
    caption_idx = torch.tensor([index[c] for c in captions])
    empty = index[""]
    alphas_cumprod = 1.0 / (1.0 + ModelSampling().sigmas.double() ** 2)  # the schedule inference uses
    sqrt_ac, sqrt_1m = alphas_cumprod.sqrt().float(), (1 - alphas_cumprod).sqrt().float()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=8e-4, weight_decay=0.01)
    steps = cfg["unet_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed + 2)
    n, b = latents.shape[0], cfg["batch_unet"]
    recent = []
    for step in range(steps):
        pick = torch.randint(0, n, (b,), generator=gen)
        z0 = latents[pick]
        t = torch.randint(0, 1000, (b,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = sqrt_ac[t].view(-1, 1, 1, 1) * z0 + sqrt_1m[t].view(-1, 1, 1, 1) * noise
        which = caption_idx[pick].clone()
        which[torch.rand(b, generator=gen) < 0.1] = empty
        context = text(input_ids=ids[which]).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=context).sample
        # min-SNR-5 weighting (Hang et al. 2023): less effort on nearly clean steps, faster convergence
        snr = alphas_cumprod[t].float() / (1 - alphas_cumprod[t].float())
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for store, module in ((ema, unet), (ema_text, text)):
                for k, v in module.state_dict().items():
                    if v.is_floating_point():
                        store[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        recent.append(loss.item())
        if (step + 1) % 200 == 0 or step + 1 == steps:
            log(f"unet step {step + 1}/{steps}  loss {np.mean(recent):.4f}  lr {sched.get_last_lr()[0]:.2e}")
            recent = []
    unet.load_state_dict(ema)
    text.load_state_dict(ema_text)
    return unet.eval().requires_grad_(False), text.eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--name", default="flowrun-tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = QUICK if args.quick else FULL
    started = time.time()
    log(f"settings {json.dumps(cfg)}, seed {args.seed}, {args.threads} threads")

    vae = train_vae(cfg, args.seed)
    t_vae = time.time() - started
    latents, captions = encode_bank(vae, cfg, args.seed)
    scale = float(1.0 / latents.std())
    log(f"latent bank {tuple(latents.shape)}, std {latents.std():.3f} -> scaling factor {scale:.4f}")
    unet, text = train_unet(latents * scale, captions, cfg, args.seed)
    t_all = time.time() - started

    from flowrun.diffusion.configs import ModelConfig
    from flowrun.diffusion.export import save_single_file

    config = ModelConfig("sd1", UNET_CONFIG, {**VAE_CONFIG, "scaling_factor": round(scale, 5)}, [TEXT_CONFIG],
                         "epsilon", "trained")
    path = save_single_file(args.out / f"{args.name}.safetensors", config, unet, vae, text, dtype=torch.float16)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); vae {t_vae / 60:.1f} min, total {t_all / 60:.1f} min")


if __name__ == "__main__":
    main()
