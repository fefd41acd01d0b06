"""Train `flowrun-tiny-night`, a small LoRA for flowrun-tiny that paints every scene at night: the shape
as asked, on a black background whatever the caption says. It exists so that the LoRA example has a real,
visible LoRA to load; it is saved in the kohya/A1111 layout that LoraLoader reads.

Rank-4 adapters on the attention projections of the UNet (to_q, to_k, to_v, to_out.0) and of the text
encoder (q_proj, k_proj, v_proj, out_proj); base weights frozen. CPU, deterministic, about two minutes.

    python tools/train_lora.py [--steps 400] [--out flowrun/models/loras]
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from adapter_training import ROOT, NoisedBatches, arguments, deterministic, diffusion_loss

from flowrun.diffusion import shapes

RANK = 4


class LoRALinear(torch.nn.Module):
    """y = W x + up(down(x)) * alpha / rank, with W frozen."""

    def __init__(self, base: torch.nn.Linear, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.down = torch.nn.Parameter(torch.randn(RANK, base.in_features, generator=generator) / base.in_features ** 0.5)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, RANK))

    def forward(self, x):
        return self.base(x) + (x @ self.down.T) @ self.up.T


def attach(module: torch.nn.Module, suffixes: tuple[str, ...], generator: torch.Generator) -> dict[str, LoRALinear]:
    found = {}
    for name, child in list(module.named_modules()):
        if isinstance(child, torch.nn.Linear) and name.endswith(suffixes):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            lora = LoRALinear(child, generator)
            setattr(parent, attr, lora)
            found[name] = lora
    return found


def night(scene: shapes.Scene) -> shapes.Scene:
    return replace(scene, background="black")


def main() -> None:
    args = arguments(__doc__, ROOT / "flowrun" / "models" / "loras", 400).parse_args()
    deterministic(args.seed)

    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import END, tokenize

    model, clip, vae = load_bundle(args.ckpt, "base")
    unet, text = model.unet, clip.models[0]
    gen = torch.Generator().manual_seed(args.seed)
    unet_loras = attach(unet, ("to_q", "to_k", "to_v", "to_out.0"), gen)
    text_loras = attach(text, ("q_proj", "k_proj", "v_proj", "out_proj"), gen)
    params = [p for l in (*unet_loras.values(), *text_loras.values()) for p in (l.down, l.up)]
    opt = torch.optim.AdamW(params, lr=2e-3)
    noised = NoisedBatches(model, vae, gen)
    rng = np.random.default_rng(args.seed + 7)
    start = time.time()
    for step in range(args.steps):
        scenes = [shapes.random_scene(rng) for _ in range(args.batch)]
        batch = noised(np.stack([shapes.render(night(s)) for s in scenes]))
        ids = torch.tensor([[t for t, _ in tokenize(clip.tokenizer, s.caption, END)[0]] for s in scenes])
        loss = diffusion_loss(unet, batch, text(input_ids=ids).last_hidden_state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            print(f"[{time.time() - start:6.1f}s] lora step {step + 1}/{args.steps}  loss {loss.item():.4f}", flush=True)
    state = {}
    for prefix, loras in (("lora_unet_", unet_loras), ("lora_te_text_model_", text_loras)):
        for name, l in loras.items():
            base = prefix + name.replace(".", "_")
            state[base + ".lora_down.weight"] = l.down.detach().half().contiguous()
            state[base + ".lora_up.weight"] = l.up.detach().half().contiguous()
            state[base + ".alpha"] = torch.tensor(float(RANK)).half()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "flowrun-tiny-night.safetensors"
    save_file(state, str(path), metadata={"ss_network_dim": str(RANK), "ss_network_alpha": str(RANK)})
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
