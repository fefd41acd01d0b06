"""A tiny SD1-shaped model with seeded random weights, saved as a single file and as a diffusers folder."""

from __future__ import annotations

from pathlib import Path

TINY_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [16, 16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 64, "scaling_factor": 0.18215,
}
TINY_CLIP = {
    "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 32, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}


def build(seed: int = 0):
    """(config, unet, vae, text_encoder) with weights drawn from `seed`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from flowrun.diffusion.configs import ModelConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    vae = AutoencoderKL(**TINY_VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).eval()
    with torch.no_grad():  # random init leaves the output near zero; make the model do visible work
        unet.conv_out.weight.mul_(4.0)
    config = ModelConfig("sd1", TINY_UNET, TINY_VAE, [TINY_CLIP], "epsilon", "tiny")
    return config, unet, vae, text


def write(models_dir: Path, name: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """models_dir/checkpoints/{name}.safetensors (+ .json) and models_dir/checkpoints/{name}-diffusers/."""
    from diffusers import EulerDiscreteScheduler

    from flowrun.diffusion.export import save_single_file

    config, unet, vae, text = build(seed)
    ckpt_dir = Path(models_dir) / "checkpoints"
    single = save_single_file(ckpt_dir / f"{name}.safetensors", config, unet, vae, text)
    folder = ckpt_dir / f"{name}-diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(
        folder / "scheduler")
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}\n')
    return {"single": single, "folder": folder}


def write_lora(models_dir: Path, name: str, seed: int = 1, rank: int = 4, scale: float = 0.5) -> Path:
    """A kohya-layout LoRA for the tiny model: attention projections of the UNet and the text encoder."""
    import torch
    from safetensors.torch import save_file

    _, unet, _, text = build(0)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    targets = [("lora_unet_", unet, ("to_q", "to_k", "to_v", "to_out.0")),
               ("lora_te_text_model_", text, ("q_proj", "k_proj", "v_proj", "out_proj"))]
    for prefix, module, suffixes in targets:
        for mod_name, mod in module.named_modules():
            if isinstance(mod, torch.nn.Linear) and mod_name.endswith(suffixes):
                base = prefix + mod_name.replace(".", "_")
                state[base + ".lora_down.weight"] = torch.randn(rank, mod.in_features, generator=generator) * scale
                state[base + ".lora_up.weight"] = torch.randn(mod.out_features, rank, generator=generator) * scale
                state[base + ".alpha"] = torch.tensor(float(rank))
    path = Path(models_dir) / "loras" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
