"""Component configs of the model families, shipped so that loading never asks a hub for them.

Values are those of the reference checkpoints (SD 1.5, SD 2.1, SDXL 1.0 base and refiner, SD3 / SD3.5, Flux.1,
AuraFlow 0.3, Qwen-Image, Z-Image Turbo), in the diffusers / transformers config vocabulary. A checkpoint of another
size (a toy model, a pruned one) carries its own configs in a sidecar `<name>.json` next to it; see
`ModelConfig.from_sidecar`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SD1, SD2, SDXL, SDXL_REFINER = "sd1", "sd2", "sdxl", "sdxl_refiner"
SD3 = "sd3"  # SD3 medium, SD3.5 medium / large / large turbo: the MMDiT (flowrun.diffusion.sd3_network)
FLUX = "flux"  # Flux.1 dev, schnell and their kin (Kontext, Fill, Canny/Depth): a FluxTransformer2DModel
AURAFLOW = "auraflow"  # AuraFlow 0.1-0.3: fal's MMDiT on SDXL's VAE, Pile-T5 XL text (flowrun.diffusion.auraflow_network)
# Qwen-Image: Alibaba's MMDiT on a 16-channel causal 3-D VAE, Qwen2.5-VL 7B text (flowrun.diffusion.qwen_image_network)
QWEN_IMAGE = "qwen_image"
ZIMAGE = "zimage"  # Z-Image (Turbo): Tongyi-MAI's DiT on Flux's VAE, Qwen3 4B text (flowrun.diffusion.zimage_network)
FAMILIES = (SD1, SD2, SDXL, SDXL_REFINER, SD3, FLUX, AURAFLOW, QWEN_IMAGE, ZIMAGE)
# families conditioned on sizes and a pooled text embedding; how many numbers their time ids hold
TIME_IDS = {SDXL: 6, SDXL_REFINER: 5}  # (h, w, crop_h, crop_w, target_h, target_w) / (h, w, crop_h, crop_w, ascore)

_SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "sample_size": 512, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}

# SD3's and Flux's autoencoder: 16 latent channels and no quant convolutions. The scale and shift here are
# SD3's; they describe the latent space for diffusers' pipelines. flowrun's Vae decodes raw latents, the
# model's latent_format scales them (Flux: 0.3611 / 0.1159).
_VAE_16 = {
    **_SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False, "sample_size": 1024,
    "scaling_factor": 1.5305, "shift_factor": 0.0609,
}

_CLIP_L = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}

_OPEN_CLIP_H = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 1024, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}

_OPEN_CLIP_BIGG = {
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 1280, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}

# T5 v1.1 XXL's encoder as SD3 and Flux read it (t5.config_from_state reads the same off a file's shapes)
_T5_XXL = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
}

# SD3's MMDiT in diffusers' SD3Transformer2DModel vocabulary, by variant (stabilityai's transformer/config.json).
# SD3.5 large turbo is SD3.5 large's network distilled: the same configuration.
SD3_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "sd3 medium": {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "dual_attention_layers": [],
        "qk_norm": None,
    },
}
SD3_TRANSFORMERS["sd3.5 large"] = {**SD3_TRANSFORMERS["sd3 medium"], "num_layers": 38, "num_attention_heads": 38,
                                   "caption_projection_dim": 2432, "qk_norm": "rms_norm"}
SD3_TRANSFORMERS["sd3.5 medium"] = {**SD3_TRANSFORMERS["sd3 medium"], "pos_embed_max_size": 384, "qk_norm": "rms_norm",
                                    "dual_attention_layers": list(range(13))}

# the 16-channel autoencoder of Flux.1 (ae.safetensors) with Flux's latent scale and shift
_FLUX_VAE = {**_VAE_16, "scaling_factor": 0.3611, "shift_factor": 0.1159}

# Flux.1 dev's transformer in diffusers' FluxTransformer2DModel vocabulary (under the "unet" key: the
# network a MODEL wraps); schnell is the same without the guidance embedding (guidance_embeds False), Fill
# takes 384 packed input channels, Canny/Depth 128. in/out channels count 2x2-packed latent channels.
_FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}

# AuraFlow's text encoder: EleutherAI's Pile-T5 XL encoder, a UMT5 (a relative position table in every layer)
# in transformers' UMT5Config vocabulary (ComfyUI's t5_pile_config_xl.json)
_PILE_T5_XL = {
    "vocab_size": 32128, "d_model": 2048, "d_kv": 64, "d_ff": 5120, "num_layers": 24, "num_heads": 32,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "pad_token_id": 1, "eos_token_id": 2,
}

# AuraFlow 0.3's transformer in diffusers' AuraFlowTransformer2DModel vocabulary (fal/AuraFlow-v0.3
# transformer/config.json); the loader reads depth, widths and the position table's size off the weights
AURAFLOW_TRANSFORMER: dict[str, Any] = {
    "sample_size": 64, "patch_size": 2, "in_channels": 4, "num_mmdit_layers": 4, "num_single_dit_layers": 32,
    "attention_head_dim": 256, "num_attention_heads": 12, "joint_attention_dim": 2048, "caption_projection_dim": 3072,
    "out_channels": 4, "pos_embed_max_size": 9216,
}

# Qwen-Image's three parts (Qwen/Qwen-Image transformer/, vae/ and text_encoder/ config.json): the transformer in
# diffusers' QwenImageTransformer2DModel vocabulary, the VAE in AutoencoderKLQwenImage's (plus latent_channels, which
# the Vae value reads), the text model of Qwen2.5-VL 7B in transformers' Qwen2_5_VLTextConfig's
QWEN_IMAGE_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56],
}
QWEN_IMAGE_VAE: dict[str, Any] = {
    "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
    "temperal_downsample": [False, True, True], "latent_channels": 16,
}
QWEN25_VL_7B_TEXT: dict[str, Any] = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}

# Z-Image Turbo's transformer in diffusers' ZImageTransformer2DModel vocabulary (Tongyi-MAI/Z-Image-Turbo
# transformer/config.json); the loader reads depth and widths off the weights
ZIMAGE_TRANSFORMER: dict[str, Any] = {
    "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
    "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 2560,
    "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48], "axes_lens": [1024, 512, 512],
}

# Qwen3 4B (Qwen/Qwen3-4B config.json) in transformers' Qwen3Config vocabulary: Z-Image's text encoder
_QWEN3_4B = {
    "vocab_size": 151936, "hidden_size": 2560, "num_hidden_layers": 36, "head_dim": 128, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 9728, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 40960, "tie_word_embeddings": True,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    SD1: {
        "unet": {
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
        },
        "vae": _SD_VAE,
        "text_encoders": [_CLIP_L],
        "prediction_type": "epsilon",
    },
    SD2: {
        "unet": {
            "sample_size": 96, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
            "norm_num_groups": 32,
        },
        "vae": {**_SD_VAE, "sample_size": 768},
        "text_encoders": [_OPEN_CLIP_H],
        "prediction_type": "v_prediction",
    },
    SDXL: {
        "unet": {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048, "use_linear_projection": True, "norm_num_groups": 32,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
        "text_encoders": [_CLIP_L, _OPEN_CLIP_BIGG],
        "prediction_type": "epsilon",
    },
    SDXL_REFINER: {  # the second stage: only OpenCLIP-bigG, and an aesthetic score instead of the target size
        "unet": {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [384, 768, 1536, 1536],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": 4, "attention_head_dim": [6, 12, 24, 24],
            "cross_attention_dim": 1280, "use_linear_projection": True, "norm_num_groups": 32,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2560,
        },
        "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
        "text_encoders": [_OPEN_CLIP_BIGG],
        "prediction_type": "epsilon",
    },
    SD3: {  # the transformer's config under "unet" (SD3 medium's; the loader reads the variant off the weights)
        "unet": SD3_TRANSFORMERS["sd3 medium"],
        "vae": _VAE_16,
        "text_encoders": [_CLIP_L, _OPEN_CLIP_BIGG, _T5_XXL],  # CLIP-L, CLIP-G, T5-XXL
        "prediction_type": "flow",
    },
    FLUX: {  # text encoders in the order of the CLIP value's models: [clip_l, t5xxl]
        "unet": _FLUX_DEV,
        "vae": _FLUX_VAE,
        "text_encoders": [_CLIP_L, _T5_XXL],
        "prediction_type": "flow",
    },
    AURAFLOW: {  # the transformer's config under "unet"; SDXL's 4-channel autoencoder
        "unet": AURAFLOW_TRANSFORMER,
        "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
        "text_encoders": [_PILE_T5_XL],
        "prediction_type": "flow",
    },
    QWEN_IMAGE: {  # the transformer's config under "unet"; the VAE is AutoencoderKLQwenImage's (qwen_image_vae)
        "unet": QWEN_IMAGE_TRANSFORMER,
        "vae": QWEN_IMAGE_VAE,
        "text_encoders": [QWEN25_VL_7B_TEXT],
        "prediction_type": "flow",
    },
    ZIMAGE: {  # the transformer's config under "unet"; Flux's 16-channel autoencoder
        "unet": ZIMAGE_TRANSFORMER,
        "vae": _VAE_16,
        "text_encoders": [_QWEN3_4B],
        "prediction_type": "flow",
    },
}


@dataclass
class ModelConfig:
    """What a checkpoint is: its family, its component configs, and how it predicts."""

    family: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: list[dict[str, Any]]
    prediction_type: str = "epsilon"
    source: str = "defaults"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, family: str) -> "ModelConfig":
        d = copy.deepcopy(DEFAULTS[family])
        return cls(family, d["unet"], d["vae"], d["text_encoders"], d["prediction_type"], f"{family} defaults")

    @classmethod
    def from_sidecar(cls, path: Path, family: str) -> "ModelConfig":
        """A `<checkpoint>.json` beside the file: any of unet/vae/text_encoders/prediction_type, the rest
        taken from the family's defaults."""
        return cls.from_data(json.loads(Path(path).read_text()), family, str(path))

    @classmethod
    def from_data(cls, data: Any, family: str, source: str) -> "ModelConfig":
        """The configs as a sidecar or a checkpoint's metadata hold them (JSON), the rest from defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object")
        family = data.get("family", family)
        if family not in FAMILIES:
            raise ValueError(f"{source}: unknown family {family!r} (known: {', '.join(FAMILIES)})")
        base = cls.default(family)
        return cls(family, data.get("unet", base.unet), data.get("vae", base.vae),
                   data.get("text_encoders", base.text_encoders), data.get("prediction_type", base.prediction_type),
                   source, {k: v for k, v in data.items() if k not in ("unet", "vae", "text_encoders")})

    def as_json(self) -> dict[str, Any]:
        return {"family": self.family, "prediction_type": self.prediction_type, "unet": self.unet, "vae": self.vae,
                "text_encoders": self.text_encoders}
