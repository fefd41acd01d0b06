"""Write the toy SDXL base and refiner checkpoints that workflows/sdxl-refiner.yaml renders with.

No SDXL pair small enough to ship exists, and training one is beyond a CPU; these have the real layouts
(two text encoders and size conditioning for the base, OpenCLIP-bigG alone and an aesthetic score for the
refiner, in the original single-file key layout with their configs in a sidecar) at toy width, with
weights drawn from fixed seeds. Their images are not pictures of anything: the example shows the graph
and guards the SDXL code paths (dual encoders, time ids, refiner hand-over) against regressions.

    python tools/make_toy_sdxl.py [--out workflows/models]

The files are float16 and deterministic for the same torch version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from flowrun.diffusion.checkpoint import _text_model
from flowrun.diffusion.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

ROOT = Path(__file__).resolve().parent.parent
TIME_EMBED = 8
CLIP_L = {"vocab_size": 49408, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
          "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
          "projection_dim": 8, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
CLIP_G = {**CLIP_L, "hidden_size": 16, "intermediate_size": 32, "projection_dim": 16, "hidden_act": "gelu"}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
       "block_out_channels": [16, 16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64, "scaling_factor": 0.13025}


def _unet(context: int, pooled: int, time_ids: int) -> dict:
    return {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": context,
            "attention_head_dim": [2, 4], "norm_num_groups": 8, "use_linear_projection": True,
            "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_EMBED,
            "projection_class_embeddings_input_dim": pooled + time_ids * TIME_EMBED}


def write(out: Path, family: str, name: str, seed: int) -> Path:
    """out/checkpoints/NAME.safetensors (+ .json): a toy `family` ("sdxl" or "sdxl_refiner") checkpoint."""
    torch.manual_seed(seed)
    if family == "sdxl":
        unet_cfg, texts_cfg = _unet(CLIP_L["hidden_size"] + CLIP_G["hidden_size"], CLIP_G["projection_dim"], 6), [CLIP_L, CLIP_G]
    else:
        unet_cfg, texts_cfg = _unet(CLIP_G["hidden_size"], CLIP_G["projection_dim"], 5), [CLIP_G]
    unet, vae = UNet2DConditionModel(**unet_cfg), AutoencoderKL(**VAE)
    with torch.no_grad():  # random init leaves the output near zero; make the model do visible work
        unet.conv_out.weight.mul_(4.0)
    texts = [_text_model(c, projection=(c is CLIP_G)) for c in texts_cfg]
    for t in texts:  # _text_model builds on the meta device; give it real random weights
        t.to_empty(device="cpu")
        for p in t.parameters():
            torch.nn.init.normal_(p, std=0.05)
    state = {**unet_to_ldm(unet.state_dict(), unet_cfg), **vae_to_ldm(vae.state_dict(), VAE)}
    if family == "sdxl":
        state.update({k.replace("cond_stage_model.", "conditioner.embedders.0."): v
                      for k, v in clip_to_ldm(texts[0].state_dict()).items()})
        state.update(open_clip_to_ldm(texts[1].state_dict(), "conditioner.embedders.1.model."))
    else:
        state.update(open_clip_to_ldm(texts[0].state_dict(), "conditioner.embedders.0.model."))
    path = out / "checkpoints" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"family": family, "prediction_type": "epsilon", "unet": unet_cfg,
                                                     "vae": VAE, "text_encoders": texts_cfg}, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "workflows" / "models")
    args = parser.parse_args()
    for family, name, seed in (("sdxl", "toy-sdxl-base", 11), ("sdxl_refiner", "toy-sdxl-refiner", 12)):
        path = write(args.out, family, name, seed)
        print(f"{path} {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
