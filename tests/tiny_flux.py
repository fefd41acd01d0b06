"""Toy Flux.1-shaped models with seeded random weights: the transformer (dev with a guidance embedding, schnell
without, Fill and Canny-style wider inputs), CLIP-L and T5 at toy width, the 16-channel autoencoder of
tiny_sd3, written as ComfyUI's split files (BFL layout, or diffusers') and as an all-in-one checkpoint with
ComfyUI's prefixes, their configs in sidecars (the rotary axes of 16-wide heads are not Flux.1's)."""

from __future__ import annotations

from pathlib import Path

from flowrun.diffusion import offline  # noqa: F401  (before diffusers and transformers)

import tiny_sd3
from tiny_model import TINY_CLIP

TINY_FLUX = {
    "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 1, "num_single_layers": 1,
    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
    "guidance_embeds": True, "axes_dims_rope": [4, 6, 6],
}
TINY_T5 = {
    "vocab_size": 32128, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False, "use_cache": False, "pad_token_id": 0,
    "eos_token_id": 1, "decoder_start_token_id": 0,
}
FLUX_VAE = {**tiny_sd3.TINY_VAE16, "scaling_factor": 0.3611, "shift_factor": 0.1159}
SIDECAR = {"family": "flux", "unet": TINY_FLUX, "vae": FLUX_VAE, "text_encoders": [TINY_CLIP, TINY_T5]}
# what each variant changes: packed input channels (latent + extra channels, times 4) and guidance
VARIANTS = {"dev": {}, "schnell": {"guidance_embeds": False}, "fill": {"in_channels": 384, "out_channels": 64},
            "canny": {"in_channels": 128, "out_channels": 64}, "kontext": {}}


def build_transformer(variant: str = "dev", seed: int = 0):
    """A toy FluxTransformer2DModel of `variant` with weights drawn from `seed`."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**{**TINY_FLUX, **VARIANTS[variant]}).eval()
    with torch.no_grad():  # random init leaves the output near zero; make the network do visible work
        model.proj_out.weight.mul_(8.0)
    return model


def build_text(seed: int = 1):
    """(CLIP-L-shaped CLIPTextModel, T5EncoderModel) at toy width."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).eval(), T5EncoderModel(T5Config(**TINY_T5)).eval()


def build_vae(seed: int = 2):
    """The toy 16-channel autoencoder, with Flux's latent scale and shift in its config (diffusers' pipelines
    read them)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**FLUX_VAE).eval()


def _t5_state(t5) -> dict:
    return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}  # tied to shared


def write_split(models_dir: Path, variant: str = "dev", layout: str = "bfl", seed: int = 0) -> dict[str, Path]:
    """diffusion_models/tiny-flux-{variant}.safetensors (BFL layout, or diffusers' with layout="diffusers"),
    text_encoders/tiny-clip-l and tiny-t5xxl, vae/tiny-ae (original layout), each with a sidecar where needed."""
    from flowrun.diffusion.flux_layout import to_bfl
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    models_dir = Path(models_dir)
    transformer = build_transformer(variant, seed)
    state = transformer.state_dict()
    if layout == "bfl":
        state = to_bfl(state)
    side = {"family": "flux", "unet": {"axes_dims_rope": TINY_FLUX["axes_dims_rope"]}}
    clip, t5 = build_text()
    vae = build_vae()
    ldm = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae.state_dict(), FLUX_VAE).items()}
    return {
        "unet": tiny_sd3.save(state, models_dir / "diffusion_models" / f"tiny-flux-{variant}.safetensors", side),
        "clip_l": tiny_sd3.save(clip.state_dict(), models_dir / "text_encoders" / "tiny-clip-l.safetensors",
                                {"family": "flux", "text_encoders": [TINY_CLIP, TINY_T5]}),
        "t5xxl": tiny_sd3.save(_t5_state(t5), models_dir / "text_encoders" / "tiny-t5xxl.safetensors"),
        "vae": tiny_sd3.save(ldm, models_dir / "vae" / "tiny-ae.safetensors", {"vae": FLUX_VAE}),
    }


def write_checkpoint(models_dir: Path, name: str = "tiny-flux", variant: str = "dev", seed: int = 0) -> Path:
    """checkpoints/{name}.safetensors: transformer, autoencoder and both text encoders under ComfyUI's prefixes."""
    from flowrun.diffusion.flux_layout import PREFIX, to_bfl
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    clip, t5 = build_text()
    state = to_bfl(build_transformer(variant, seed).state_dict(), PREFIX)
    state.update({"vae." + k[len("first_stage_model."):]: v
                  for k, v in vae_to_ldm(build_vae().state_dict(), FLUX_VAE).items()})
    state.update({"text_encoders.clip_l.transformer." + k: v for k, v in clip.state_dict().items()})
    state.update({"text_encoders.t5xxl.transformer." + k: v for k, v in _t5_state(t5).items()})
    return tiny_sd3.save(state, Path(models_dir) / "checkpoints" / f"{name}.safetensors", SIDECAR)


TINY_SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "image_size": 64, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}


def build_redux(seed: int = 4):
    """(toy SiglipVisionModel, ReduxImageEncoder from its width to the toy T5 width)."""
    import torch
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vision = SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP)).eval()
    return vision, ReduxImageEncoder(redux_dim=32, txt_in_features=TINY_FLUX["joint_attention_dim"]).eval()


def write_redux(models_dir: Path) -> dict[str, Path]:
    """clip_vision/tiny-siglip.safetensors (`vision_model.*`, as ComfyUI's sigclip file; its heads in a sidecar)
    and style_models/tiny-redux.safetensors."""
    vision, redux = build_redux()
    models_dir = Path(models_dir)
    from flowrun.diffusion.siglip import with_prefix

    return {"clip_vision": tiny_sd3.save(with_prefix(vision.state_dict()), models_dir / "clip_vision" / "tiny-siglip.safetensors",
                                         {"clip_vision": {"num_attention_heads": 2}}),
            "style_model": tiny_sd3.save(redux.state_dict(), models_dir / "style_models" / "tiny-redux.safetensors")}
