"""A tiny SD1-shaped model with seeded random weights, saved as a single file and as a diffusers folder."""

from __future__ import annotations

from pathlib import Path

from flowrun.diffusion import offline  # noqa: F401  (before diffusers and transformers: see torchvision_compat)

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


def build(seed: int = 0, in_channels: int = 4):
    """(config, unet, vae, text_encoder) with weights drawn from `seed`; `in_channels` 9 makes an inpainting
    UNet (mask and masked image beside the latent), 8 an instruct-pix2pix one."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from flowrun.diffusion.configs import ModelConfig

    unet_config = {**TINY_UNET, "in_channels": in_channels}
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config).eval()
    vae = AutoencoderKL(**TINY_VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).eval()
    with torch.no_grad():  # random init leaves the output near zero; make the model do visible work
        unet.conv_out.weight.mul_(4.0)
    config = ModelConfig("sd1", unet_config, TINY_VAE, [TINY_CLIP], "epsilon", "tiny")
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


def write_inpaint(models_dir: Path, name: str = "tiny-inpainting", seed: int = 0, in_channels: int = 9) -> Path:
    """models_dir/checkpoints/{name}.safetensors: the tiny model with a 9-channel (inpainting) or 8-channel
    (instruct-pix2pix) UNet, in the original layout."""
    from flowrun.diffusion.export import save_single_file

    config, unet, vae, text = build(seed, in_channels)
    return save_single_file(Path(models_dir) / "checkpoints" / f"{name}.safetensors", config, unet, vae, text)


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


def write_embedding(models_dir: Path, name: str, seed: int = 2, vectors: int = 2) -> Path:
    """A textual-inversion embedding for the tiny model (`emb_params`, the tiny text encoder's width)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    path = Path(models_dir) / "embeddings" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, TINY_CLIP["hidden_size"], generator=generator) * 0.02}, str(path))
    return path


def write_upscale_model(models_dir: Path, name: str, seed: int = 3, features: int = 4, convs: int = 1,
                        scale: int = 2) -> Path:
    """A toy upscale model in RealESRGAN's compact layout (SRVGGNetCompact's `body.N` convolutions and
    PReLUs), which spandrel detects; written with plain torch, so the fixture needs no spandrel."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    widths = [(3, features)] + [(features, features)] * convs + [(features, 3 * scale * scale)]
    state = {}
    for i, (cin, cout) in enumerate(widths):
        state[f"body.{2 * i}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator) * 0.1
        state[f"body.{2 * i}.bias"] = torch.randn(cout, generator=generator) * 0.01
        if i < len(widths) - 1:
            state[f"body.{2 * i + 1}.weight"] = torch.full((cout,), 0.25)  # PReLU slopes, torch's default
    path = Path(models_dir) / "upscale_models" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_family(models_dir: Path, family: str, seed: int = 0) -> Path:
    """A tiny SD2-shaped (OpenCLIP text tower, v-prediction), SDXL-shaped (two text encoders, size
    conditioning) or SDXL-refiner-shaped (OpenCLIP-bigG alone, aesthetic score) checkpoint in the original key layout, with its configs in the sidecar JSON."""
    import json

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import _text_model
    from flowrun.diffusion.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    torch.manual_seed(seed)
    open_clip = {**TINY_CLIP, "hidden_size": 48, "projection_dim": 48, "hidden_act": "gelu"}
    if family == "sd2":
        unet_cfg = {**TINY_UNET, "cross_attention_dim": 48, "use_linear_projection": True, "attention_head_dim": [2, 4]}
        texts_cfg = [open_clip]
        prediction = "v_prediction"
    elif family == "sdxl_refiner":  # OpenCLIP-bigG alone; time ids end with an aesthetic score (5 numbers)
        unet_cfg = {**TINY_UNET, "cross_attention_dim": 48, "use_linear_projection": True,
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
                    "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                    "projection_class_embeddings_input_dim": 48 + 5 * 8}
        texts_cfg = [open_clip]
        prediction = "epsilon"
    else:
        unet_cfg = {**TINY_UNET, "cross_attention_dim": 32 + 48, "use_linear_projection": True,
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
                    "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                    "projection_class_embeddings_input_dim": 48 + 6 * 8}
        texts_cfg = [TINY_CLIP, open_clip]
        prediction = "epsilon"
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**TINY_VAE)
    texts = [_text_model(c, projection=(family == "sdxl" and i == 1) or family == "sdxl_refiner")
             for i, c in enumerate(texts_cfg)]
    for t in texts:  # _text_model builds on the current device; give it real random weights
        t.to_empty(device="cpu")
        for p in t.parameters():
            torch.nn.init.normal_(p, std=0.05)
    state = {**unet_to_ldm(unet.state_dict(), unet_cfg), **vae_to_ldm(vae.state_dict(), TINY_VAE)}
    if family == "sd2":
        state.update(open_clip_to_ldm(texts[0].state_dict(), "cond_stage_model.model."))
    elif family == "sdxl_refiner":
        state.update(open_clip_to_ldm(texts[0].state_dict(), "conditioner.embedders.0.model."))
    else:
        state.update({k.replace("cond_stage_model.", "conditioner.embedders.0."): v
                      for k, v in clip_to_ldm(texts[0].state_dict()).items()})
        state.update(open_clip_to_ldm(texts[1].state_dict(), "conditioner.embedders.1.model."))
    path = Path(models_dir) / "checkpoints" / f"tiny-{family}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"family": family, "prediction_type": prediction, "unet": unet_cfg,
                                                     "vae": TINY_VAE, "text_encoders": texts_cfg}))
    return path


def build_controlnet(unet, seed: int = 3, scale: float = 0.3):
    """A ControlNetModel copied from `unet` (diffusers' from_unet) whose zero-initialised convolutions are
    given seeded weights, so that it changes what the UNet predicts."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return controlnet


SDXL_UNET = {**TINY_UNET, "cross_attention_dim": 80, "use_linear_projection": True,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
             "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 48 + 6 * 8}


def write_controlnet(models_dir: Path, name: str, *, family: str = "sd1", layout: str = "diffusers",
                     seed: int = 3, config_in_file: bool = True) -> Path:
    """models_dir/controlnet/{name}.safetensors: a toy ControlNet for the tiny SD1 model (or an SDXL-shaped
    one), in diffusers' or the original (`control_model.*`) layout, its config in the file's metadata."""
    import json

    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from flowrun.diffusion.export import CONFIG_KEY
    from flowrun.diffusion.ldm_layout import controlnet_to_ldm

    if family == "sd1":
        _, unet, _, _ = build(0)
    else:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SDXL_UNET)
    controlnet = build_controlnet(unet, seed)
    config = dict(controlnet.config)
    state = {k: v.contiguous() for k, v in controlnet.state_dict().items()}
    if layout == "ldm":
        state = controlnet_to_ldm(state, config)
    path = Path(models_dir) / "controlnet" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {CONFIG_KEY: json.dumps({"family": family, "controlnet": {k: v for k, v in config.items()
                                                                         if not k.startswith("_")}})}
    save_file(state, str(path), metadata=metadata if config_in_file else None)
    return path
