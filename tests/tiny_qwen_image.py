"""Toy Qwen-Image-shaped models with seeded random weights: the MMDiT (one block), the 16-channel causal VAE
(Wan 2.1's structure at a narrow width) and a Qwen2.5-VL with a tiny text model and vision tower, written as
ComfyUI's split files (transformer, qwen_2.5_vl_7b-type text encoder, Wan-layout VAE) with sidecars. Also the
inverse of diffusers' convert_wan_vae_to_diffusers (diffusers only converts from Wan's layout)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from flowrun.diffusion import offline  # noqa: F401  (before diffusers and transformers)
from tiny_sd3 import save

TINY_TRANSFORMER = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 32, "guidance_embeds": False, "axes_dims_rope": [4, 6, 6],
}
# the converter knows Wan's structure only (four levels, two residual blocks each): keep it, narrow
TINY_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": [False, True, True], "latent_channels": 16}
TINY_TEXT = {
    "vocab_size": 151936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
}
TINY_VISION = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
               "fullatt_block_indexes": [0]}
SIDECAR = {"family": "qwen_image", "unet": TINY_TRANSFORMER, "vae": TINY_VAE, "text_encoders": [TINY_TEXT]}


def build(seed: int = 0):
    """(transformer, vae, Qwen2_5_VLForConditionalGeneration) with weights drawn from `seed`."""
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(**TINY_TRANSFORMER).eval()
    with torch.no_grad():  # random init leaves the output faint: make it do visible work, and let the prompt show
        transformer.proj_out.weight.mul_(8.0)
        transformer.txt_in.weight.mul_(8.0)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(**{k: v for k, v in TINY_VAE.items() if k != "latent_channels"}).eval()
    torch.manual_seed(seed + 2)
    config = Qwen2_5_VLConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, tie_word_embeddings=False)
    qwen = Qwen2_5_VLForConditionalGeneration(config).eval()
    return transformer, vae, qwen


def qwen_to_comfy(state: dict) -> dict:
    """Qwen2_5_VLForConditionalGeneration weights (transformers 5 names) -> the checkpoint's names, as
    qwen_2.5_vl_7b.safetensors holds them: `model.*` (text), `visual.*`, `lm_head.*`."""
    out = {}
    for key, value in state.items():
        key = key.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        out[key] = value
    return out


def _wan_tables() -> dict[str, str]:
    """diffusers name -> Wan name of the converter's fixed tables (middle, attention, head, quant), read off its
    source: it keeps them in local variables."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    pairs = re.findall(r'"([\w.]+)": "([\w.]+)"', inspect.getsource(convert_wan_vae_to_diffusers))
    return {new: old for old, new in pairs}


_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
             "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
             "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def vae_to_wan(state: dict) -> dict:
    """AutoencoderKLQwenImage weights -> Wan 2.1's original names (as ComfyUI's qwen_image_vae.safetensors);
    convert_wan_vae_to_diffusers read backwards. Works on meta tensors."""
    tables = _wan_tables()
    out = {}
    for key, value in state.items():
        if key in tables:
            new = tables[key]
        elif key.startswith(("encoder.conv_in.", "decoder.conv_in.")):
            new = key.replace("conv_in", "conv1")
        elif key.startswith("encoder.down_blocks."):
            head, index, rest = key.split(".", 3)[1:]
            new = f"encoder.downsamples.{index}." + _RESIDUAL.get(rest, rest)
        elif ".resnets." in key and key.startswith("decoder.up_blocks."):
            _, _, block, _, resnet, rest = key.split(".", 5)
            new = f"decoder.upsamples.{int(block) * 4 + int(resnet)}." + _RESIDUAL[rest]
        elif ".upsamplers.0." in key:
            block, rest = key.split(".", 3)[2], key.split(".upsamplers.0.", 1)[1]
            new = f"decoder.upsamples.{int(block) * 4 + 3}.{rest}"
        else:
            raise KeyError(key)
        out[new] = value
    return out


def write(models_dir: Path, seed: int = 0, name: str = "tiny-qwen-image") -> dict[str, Path]:
    """The toy Qwen-Image as ComfyUI users have it: diffusion_models/{name} (transformer under
    `model.diffusion_model.`), text_encoders/{name}-qwen25-vl (Qwen2.5-VL with its vision tower and lm head),
    vae/{name}-vae (Wan's layout), each with its sidecar; also vae/{name}-vae-diffusers (diffusers' layout)."""
    transformer, vae, qwen = build(seed)
    root = Path(models_dir)
    return {
        "transformer": save({"model.diffusion_model." + k: v for k, v in transformer.state_dict().items()},
                            root / "diffusion_models" / f"{name}.safetensors", SIDECAR),
        "text": save(qwen_to_comfy(qwen.state_dict()), root / "text_encoders" / f"{name}-qwen25-vl.safetensors",
                     SIDECAR),
        "vae": save(vae_to_wan(vae.state_dict()), root / "vae" / f"{name}-vae.safetensors", {"family": "qwen_image",
                                                                                             "vae": TINY_VAE}),
        "vae_diffusers": save(vae.state_dict(), root / "vae" / f"{name}-vae-diffusers.safetensors",
                              {"family": "qwen_image", "vae": TINY_VAE}),
    }


COMFYUI_NAMES = {  # the file names ComfyUI users' Qwen-Image graphs carry (tests/comfyui/qwen_image*.json)
    "transformer": "diffusion_models/qwen_image_fp8_e4m3fn", "text": "text_encoders/qwen_2.5_vl_7b_fp8_scaled",
    "vae": "vae/qwen_image_vae",
}


def write_as_comfyui(models_dir: Path, seed: int = 0) -> None:
    """The toy Qwen-Image's files under the names of tests/comfyui/qwen_image*.json (sidecars beside them)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = write(Path(tmp), seed)
        for part, name in COMFYUI_NAMES.items():
            target = Path(models_dir) / f"{name}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[part], target)
            shutil.copyfile(files[part].with_suffix(".json"), target.with_suffix(".json"))
