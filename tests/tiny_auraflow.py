"""Toy AuraFlow-shaped models with seeded random weights: the MMDiT (one joint and one single block), SDXL-type
4-channel VAE and a Pile-T5-type UMT5 encoder, written as fal's single file and as split files, with their
configs in sidecars. Also fal's original key layout (diffusers only converts from it)."""

from __future__ import annotations

from pathlib import Path

from flowrun.diffusion import offline  # noqa: F401  (before diffusers and transformers)
from tiny_sd3 import save

TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [16, 16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64, "scaling_factor": 0.13025,
}
TINY_AURA = {
    "sample_size": 16, "patch_size": 2, "in_channels": 4, "num_mmdit_layers": 1, "num_single_dit_layers": 1,
    "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 48, "caption_projection_dim": 32,
    "out_channels": 4, "pos_embed_max_size": 256,
}
TINY_PILE_T5 = {"vocab_size": 32128, "d_model": 48, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
                "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False, "use_cache": False,
                "pad_token_id": 1, "eos_token_id": 2}
SIDECAR = {"family": "auraflow", "unet": TINY_AURA, "vae": TINY_VAE, "text_encoders": [TINY_PILE_T5]}

# diffusers name -> fal's name, per joint block and per single block (convert_auraflow_transformer_checkpoint_to_
# diffusers read backwards)
_JOINT = [("ff.linear_1.", "mlpX.c_fc1."), ("ff.linear_2.", "mlpX.c_fc2."), ("ff.out_projection.", "mlpX.c_proj."),
          ("ff_context.linear_1.", "mlpC.c_fc1."), ("ff_context.linear_2.", "mlpC.c_fc2."),
          ("ff_context.out_projection.", "mlpC.c_proj."), ("norm1.linear.", "modX.1."),
          ("norm1_context.linear.", "modC.1."), ("attn.to_q.", "attn.w2q."), ("attn.to_k.", "attn.w2k."),
          ("attn.to_v.", "attn.w2v."), ("attn.to_out.0.", "attn.w2o."), ("attn.add_q_proj.", "attn.w1q."),
          ("attn.add_k_proj.", "attn.w1k."), ("attn.add_v_proj.", "attn.w1v."), ("attn.to_add_out.", "attn.w1o.")]
_SINGLE = [("ff.linear_1.", "mlp.c_fc1."), ("ff.linear_2.", "mlp.c_fc2."), ("ff.out_projection.", "mlp.c_proj."),
           ("norm1.linear.", "modCX.1."), ("attn.to_q.", "attn.w1q."), ("attn.to_k.", "attn.w1k."),
           ("attn.to_v.", "attn.w1v."), ("attn.to_out.0.", "attn.w1o.")]
_TOP = {"register_tokens": "register_tokens", "time_step_proj.linear_1.weight": "t_embedder.mlp.0.weight",
        "time_step_proj.linear_1.bias": "t_embedder.mlp.0.bias",
        "time_step_proj.linear_2.weight": "t_embedder.mlp.2.weight",
        "time_step_proj.linear_2.bias": "t_embedder.mlp.2.bias", "context_embedder.weight": "cond_seq_linear.weight",
        "proj_out.weight": "final_linear.weight", "pos_embed.pos_embed": "positional_encoding",
        "pos_embed.proj.weight": "init_x_linear.weight", "pos_embed.proj.bias": "init_x_linear.bias"}


def transformer_to_fal(state: dict, prefix: str = "") -> dict:
    """diffusers AuraFlowTransformer2DModel weights -> fal's original keys (works on meta tensors)."""
    import torch

    out = {}
    for key, value in state.items():
        if key in _TOP:
            out[prefix + _TOP[key]] = value
        elif key == "norm_out.linear.weight":  # diffusers keeps (scale, shift), fal (shift, scale)
            scale, shift = value.chunk(2, dim=0)
            out[prefix + "modF.1.weight"] = torch.cat([shift, scale], dim=0)
        else:
            kind, index, rest = key.split(".", 2)
            joint = kind == "joint_transformer_blocks"
            table, head = (_JOINT, "double_layers") if joint else (_SINGLE, "single_layers")
            new = next(old + rest[len(d):] for d, old in table if rest.startswith(d))
            out[prefix + f"{head}.{index}.{new}"] = value
    return out


def build(seed: int = 0):
    """(transformer, vae, pile_t5) with weights drawn from `seed`."""
    import torch
    from diffusers import AuraFlowTransformer2DModel, AutoencoderKL
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer = AuraFlowTransformer2DModel(**TINY_AURA).eval()
    with torch.no_grad():  # random init leaves the output faint: make it do visible work, and let the prompt show
        transformer.proj_out.weight.mul_(8.0)
        transformer.context_embedder.weight.mul_(8.0)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_VAE).eval()
    torch.manual_seed(seed + 2)
    pile_t5 = UMT5EncoderModel(UMT5Config(**TINY_PILE_T5)).eval()
    return transformer, vae, pile_t5


def write(models_dir: Path, seed: int = 0, name: str = "tiny-auraflow") -> dict[str, Path]:
    """The toy AuraFlow as ComfyUI users have it: checkpoints/{name}.safetensors (fal's single file: transformer
    under `model.`, VAE under `vae.`, Pile-T5 under `text_encoders.pile_t5xl.transformer.`) and the split files
    diffusion_models/{name}-fal (original layout), diffusion_models/{name}-transformer (diffusers layout),
    text_encoders/{name}-pile-t5 and vae/{name}-vae, each with its sidecar."""
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    transformer, vae, pile_t5 = build(seed)
    root = Path(models_dir)
    fal = transformer_to_fal(transformer.state_dict())
    ldm_vae = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae.state_dict(), TINY_VAE).items()}
    t5_state = {k: v for k, v in pile_t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    single = {**{"model." + k: v for k, v in fal.items()}, **{"vae." + k: v for k, v in ldm_vae.items()},
              **{"text_encoders.pile_t5xl.transformer." + k: v for k, v in t5_state.items()}}
    return {
        "single": save(single, root / "checkpoints" / f"{name}.safetensors", SIDECAR),
        "fal": save(fal, root / "diffusion_models" / f"{name}-fal.safetensors", SIDECAR),
        "transformer": save(transformer.state_dict(), root / "diffusion_models" / f"{name}-transformer.safetensors",
                            SIDECAR),
        "pile_t5": save(t5_state, root / "text_encoders" / f"{name}-pile-t5.safetensors", SIDECAR),
        "vae": save(ldm_vae, root / "vae" / f"{name}-vae.safetensors", {"vae": TINY_VAE}),
    }


COMFYUI_NAMES = {  # the file names ComfyUI users' AuraFlow graphs carry (tests/comfyui/auraflow*.json)
    "single": "checkpoints/aura_flow_0.3", "fal": "diffusion_models/aura_flow_0.3_transformer",
    "pile_t5": "text_encoders/pile_t5xl", "vae": "vae/sdxl_vae",
}


def write_as_comfyui(models_dir: Path, seed: int = 0) -> None:
    """The toy AuraFlow's files under the names of tests/comfyui/auraflow*.json (sidecars beside them)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = write(Path(tmp), seed)
        for part, name in COMFYUI_NAMES.items():
            target = Path(models_dir) / f"{name}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[part], target)
            shutil.copyfile(files[part].with_suffix(".json"), target.with_suffix(".json"))
