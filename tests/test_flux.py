"""Flux.1 on toy-width models: split files and a whole checkpoint load and render, equal to diffusers'
FluxPipeline on the same weights; the text encoders equal transformers run directly; the key layout of the
full-size dev and schnell files maps onto FluxTransformer2DModel (as diffusers' converter maps it) with the
published parameter counts; guidance and bad inputs."""

from __future__ import annotations

from pathlib import Path

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
    tiny_flux.write_split(models, "fill")
    tiny_flux.write_split(models, "canny")
    tiny_flux.write_checkpoint(models)
    tiny_flux.write_redux(models)
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


def _pipeline(variant: str = "dev", cls=None, base_shift: float = 0.5):
    """A diffusers Flux pipeline (FluxPipeline unless `cls`) on the toy transformer and autoencoder;
    `base_shift` 1.15: the shift the model has without ModelSamplingFlux, whatever the image size."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=base_shift, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = (cls or FluxPipeline)(scheduler=scheduler, vae=tiny_flux.build_vae(), text_encoder=None, tokenizer=None,
                                 text_encoder_2=None, tokenizer_2=None, transformer=tiny_flux.build_transformer(variant))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# the times ComfyUI's "simple" schedule takes at 3 steps from a 10000-step table (Flux) and a 1000-step one
# (a flow with multiplier 1: schnell), before the shift; diffusers is given them as its sigmas
SIMPLE_TIMES = {"dev": [1.0, 0.6667, 0.3334], "schnell": [1.0, 0.667, 0.334]}


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
    theirs = _their_image(_pipeline(), seed=7, guidance=4.0, sigmas=SIMPLE_TIMES["dev"])
    diff = np.abs(ours - theirs)
    print(f"max difference {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
    assert theirs.std() > 5  # the toy draws something, not a flat field


def _meta_state(module) -> dict:
    return dict(module.state_dict())


def _full_size_bfl(guidance: bool, prefix: str = "") -> dict:
    """The BFL-layout key set and shapes of a full-size Flux.1 dev (or schnell) transformer, on the meta device."""
    from diffusers import FluxTransformer2DModel

    from flowrun.diffusion.configs import DEFAULTS, FLUX
    from flowrun.diffusion.flux_layout import to_bfl

    with torch.device("meta"):
        model = FluxTransformer2DModel(**{**DEFAULTS[FLUX]["unet"], "guidance_embeds": guidance})
    return to_bfl(_meta_state(model), prefix)


@pytest.mark.parametrize("variant, guidance, params", [("dev", True, 11_901_408_320), ("schnell", False, 11_891_178_560)])
def test_full_size_transformer_layout_maps_as_diffusers(variant, guidance, params):
    """The full-size BFL layout (as in flux1-dev / flux1-schnell.safetensors, with ComfyUI's prefix) is told
    apart by its guidance embedding, mapped onto FluxTransformer2DModel as diffusers' own converter maps it,
    and counts the published 11.9 B parameters."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from flowrun.diffusion import flux_files
    from flowrun.diffusion.configs import DEFAULTS, FLUX
    from flowrun.diffusion.flux_layout import PREFIX, strip_prefix, to_diffusers

    state = _full_size_bfl(guidance, PREFIX)
    assert flux_files.is_flux(state)
    config, weights = flux_files.transformer_parts(state, None)
    assert config == {**DEFAULTS[FLUX]["unet"], "guidance_embeds": guidance}
    model = flux_files.build_transformer(config, weights, None)
    assert sum(p.numel() for p in model.parameters()) == params
    ours = to_diffusers(strip_prefix(state), {k: tuple(v.shape) for k, v in model.state_dict().items()})
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert flux_files.kind(config) == f"Flux.1 {variant}"


def test_full_size_checkpoint_layout_detects_and_maps():
    """A whole Flux.1 dev checkpoint (ComfyUI's all-in-one layout: transformer, `vae.`, CLIP-L and T5-XXL under
    `text_encoders.`) at full size on the meta device: every part found and built, with its parameter count."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flowrun.diffusion.checkpoint import load_state
    from flowrun.diffusion.configs import DEFAULTS, FLUX
    from flowrun.diffusion.ldm_layout import vae_to_ldm
    from flowrun.diffusion.t5 import config_from_state

    defaults = DEFAULTS[FLUX]
    state = _full_size_bfl(True, "model.diffusion_model.")
    with torch.device("meta"):
        vae = AutoencoderKL(**defaults["vae"])
        clip = CLIPTextModel(CLIPTextConfig(**defaults["text_encoders"][0]))
        t5 = T5EncoderModel(T5Config(**defaults["text_encoders"][1]))
    state.update({"vae." + k[len("first_stage_model."):]: v for k, v in vae_to_ldm(_meta_state(vae), defaults["vae"]).items()})
    state.update({"text_encoders.clip_l.transformer." + k: v for k, v in _meta_state(clip).items()})
    state.update({"text_encoders.t5xxl.transformer." + k: v for k, v in _meta_state(t5).items()
                  if k != "encoder.embed_tokens.weight"})
    config, transformer, (clip_l, t5xxl), vae = load_state(state, Path("flux1-dev.safetensors"), None)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert config.family == FLUX and config.unet["guidance_embeds"]
    assert count(transformer) == 11_901_408_320
    assert count(t5xxl) == 4_762_310_656 and config.text_encoders[1] == config_from_state(_meta_state(t5))
    assert count(clip_l) == 123_060_480
    assert count(vae) == 83_819_683 and vae.config.latent_channels == 16 and not vae.config.use_quant_conv


def test_whole_checkpoint_renders_as_the_split_files(flux_models, tmp_path):
    """CheckpointLoaderSimple on the all-in-one file gives the image of the split files (the same weights,
    bit for bit; the float rounding of the passes may move a pixel by one level)."""
    whole = TXT2IMG.replace("  unet: {type: UNETLoader, with: {unet_name: tiny-flux-dev}}\n",
                            "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-flux}}\n")
    whole = whole.replace("in: {model: unet}", "in: {model: ckpt.model}").replace("in: {clip: clip}", "in: {clip: ckpt.clip}")
    whole = whole.replace("vae: vae}", "vae: ckpt.vae}")
    whole = "\n".join(line for line in whole.splitlines() if not line.startswith(("  clip:", "  vae:")))
    a, b = _run(tmp_path, flux_models, whole, "whole"), _run(tmp_path, flux_models, TXT2IMG, "split")
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


SCHNELL = TXT2IMG.replace("tiny-flux-dev", "tiny-flux-schnell").replace(
    "  shift: {type: ModelSamplingFlux, in: {model: unet}, with: {width: 64, height: 64}}\n", "").replace(
    "model: shift", "model: unet")


def test_schnell_renders_as_flux_pipeline(flux_models, tmp_path):
    """schnell (diffusers layout, no guidance embedding) on its default schedule (shift 1) and a plain
    CLIPTextEncode: FluxPipeline without dynamic shifting gives the same picture within one level."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    wf = SCHNELL.replace("{type: CLIPTextEncodeFlux, in: {clip: clip}, with: {clip_l: PROMPT, t5xxl: PROMPT, guidance: 4.0}}"
                         .replace("PROMPT", PROMPT), f"{{type: CLIPTextEncode, in: {{clip: clip}}, with: {{text: {PROMPT}}}}}")
    ours = _run(tmp_path, flux_models, wf)
    pipe = _pipeline("schnell")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    theirs = _their_image(pipe, seed=7, guidance=0.0, sigmas=SIMPLE_TIMES["schnell"])
    diff = np.abs(ours - theirs)
    print(f"schnell: max difference {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= 1


def test_guidance_on_a_model_without_guidance_embedding_is_an_error(flux_models, tmp_path):
    """ComfyUI ignores a guidance on schnell; flowrun says which input carries it and what to do."""
    from flowrun.errors import FlowrunError

    with pytest.raises(FlowrunError) as info:
        _run(tmp_path, flux_models, SCHNELL)
    message = info.value.render()
    assert "node 'sample'" in message and "input 'positive'" in message and "guidance of 4" in message
    assert "no guidance embedding" in message


def test_flux_vae_with_an_sdxl_latent_is_an_error(flux_models, tmp_path):
    """A 16-channel autoencoder given a 4-channel latent (an SD model's) names the node and input."""
    wf = """
version: 1
nodes:
  vae: {type: VAELoader, with: {vae_name: tiny-ae}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
  decode: {type: VAEDecode, in: {samples: latent, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: x}}
"""
    from flowrun.errors import FlowrunError

    with pytest.raises(FlowrunError) as info:
        _run(tmp_path, flux_models, wf)
    message = info.value.render()
    assert "node 'decode'" in message and "input 'vae'" in message and "16" in message and "4" in message


ROOT = Path(__file__).resolve().parents[1]
EDIT = """
version: 1
nodes:
  unet: {type: UNETLoader, with: {unet_name: tiny-flux-VARIANT}}
  clip: {type: DualCLIPLoader, with: {clip_name1: tiny-clip-l, clip_name2: tiny-t5xxl, type: flux}}
  vae: {type: VAELoader, with: {vae_name: tiny-ae}}
  image: {type: LoadImage, with: {image: inputs/red-circle.png}}
  text: {type: CLIPTextEncode, in: {clip: clip}, with: {text: PROMPT}}
  pos: {type: FluxGuidance, in: {conditioning: text}, with: {guidance: 2.5}}
  neg: {type: ConditioningZeroOut, in: {conditioning: text}}
EDIT_NODES
  sample:
    type: KSampler
    in: {model: unet, positive: POSITIVE, negative: NEGATIVE, latent_image: LATENT}
    with: {seed: 3, steps: 3, cfg: 1.0, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: edit}}
""".replace("PROMPT", PROMPT)
EDITS = {  # what each edit model adds to the graph, and its conditioning and latent
    "kontext": ("dev", """  encoded: {type: VAEEncode, in: {pixels: image.image, vae: vae}}
  ref: {type: ReferenceLatent, in: {conditioning: pos, latent: encoded}}
  latent: {type: EmptySD3LatentImage, with: {width: 64, height: 64}}""", "ref", "neg", "latent"),
    "fill": ("fill", """  mask: {type: LoadImageMask, with: {image: inputs/square.png, channel: red}}
  inpaint: {type: InpaintModelConditioning, in: {positive: pos, negative: neg, vae: vae, pixels: image.image, mask: mask},
            with: {noise_mask: false}}""", "inpaint.positive", "inpaint.negative", "inpaint.latent"),
    "canny": ("canny", """  control: {type: InstructPixToPixConditioning, in: {positive: pos, negative: neg, vae: vae, pixels: image.image}}""",
              "control.positive", "control.negative", "control.latent"),
}


def _edit_graph(kind: str) -> str:
    variant, nodes, positive, negative, latent = EDITS[kind]
    return (EDIT.replace("VARIANT", variant).replace("EDIT_NODES", nodes).replace("POSITIVE", positive)
            .replace("NEGATIVE", negative).replace("LATENT", latent))


@pytest.fixture()
def edit_inputs(tmp_path):
    """The red circle and a mask (a white square, the region to repaint) beside the workflow."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "red-circle.png").write_bytes((ROOT / "workflows" / "inputs" / "red-circle.png").read_bytes())
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(mask).save(tmp_path / "inputs" / "square.png")
    return tmp_path


@pytest.mark.parametrize("kind", ["kontext", "fill", "canny"])
def test_edit_models_render_as_diffusers_pipelines(kind, flux_models, edit_inputs, monkeypatch):
    """Kontext (ReferenceLatent), Fill (InpaintModelConditioning) and Canny-type control models
    (InstructPixToPixConditioning) on toy transformers equal FluxKontextPipeline, FluxFillPipeline and
    FluxControlPipeline within one 8-bit level. The pipelines that sample the autoencoder's posterior for
    the masked or control image are made to take its mean, as ComfyUI and flowrun encode."""
    from diffusers import FluxControlPipeline, FluxFillPipeline, FluxKontextPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    ours = _run(edit_inputs, flux_models, _edit_graph(kind), kind)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    circle = Image.open(edit_inputs / "inputs" / "red-circle.png").convert("RGB")
    if kind == "kontext":
        cls, extra = FluxKontextPipeline, {"image": circle, "_auto_resize": False, "max_area": 64 * 64}
    elif kind == "fill":
        mask = Image.open(edit_inputs / "inputs" / "square.png").convert("L")
        cls, extra = FluxFillPipeline, {"image": circle, "mask_image": mask}
    else:
        cls, extra = FluxControlPipeline, {"control_image": circle}
    pipe = _pipeline(EDITS[kind][0], cls, base_shift=1.15)
    theirs = _their_image(pipe, seed=3, guidance=2.5, sigmas=SIMPLE_TIMES["dev"], **extra)
    diff = np.abs(ours - theirs)
    print(f"{kind}: max difference {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= 1


def test_kontext_image_scale_picks_the_nearest_training_size():
    from flowrun.nodes.flux import flux_kontext_image_scale

    square = flux_kontext_image_scale(None, None, image=np.zeros((1, 64, 64, 3), dtype=np.float32))
    wide = flux_kontext_image_scale(None, None, image=np.full((2, 50, 100, 3), 0.5, dtype=np.float32))
    assert square.shape == (1, 1024, 1024, 3)
    assert wide.shape == (2, 720, 1456, 3) and np.allclose(wide, 127 / 255)  # Lanczos through 8-bit Pillow, as ComfyUI


def test_reference_latents_are_placed_as_comfyui_places_them():
    """ComfyUI's "offset" placement: index 1; a second reference goes below the first when that keeps the
    layout squarer (offsets in latent pixels, rounded up to patches)."""
    from flowrun.diffusion.flux_network import reference_tokens

    tokens, ids = reference_tokens([torch.zeros(1, 16, 8, 8), torch.zeros(1, 16, 8, 12)])
    assert [t.shape for t in tokens] == [(1, 16, 64), (1, 24, 64)]
    assert (ids[0][:, 0] == 1).all() and ids[0][:, 1].tolist()[:5] == [0, 0, 0, 0, 1]
    assert ids[1][:, 1].min() == 4 and ids[1][:, 2].min() == 0 and ids[1][:, 2].max() == 5


def test_odd_latent_sizes_pad_around_as_comfyui():
    """A latent of odd height and width is padded (wrapping around) to whole 2x2 patches and cropped back."""
    from flowrun.diffusion.flux_network import FluxNetwork

    network = FluxNetwork(tiny_flux.build_transformer("dev"))
    x, context = torch.randn(1, 16, 9, 7), torch.randn(1, 4, 32)
    added = {"pooled_projections": torch.randn(1, 32), "guidance": torch.tensor([[3.5]])}
    with torch.no_grad():
        out, = network(x, torch.tensor([0.5]), encoder_hidden_states=context, added_cond_kwargs=added)
        padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="circular")
        whole, = network(padded, torch.tensor([0.5]), encoder_hidden_states=context, added_cond_kwargs=added)
    assert out.shape == x.shape and torch.allclose(out, whole[:, :, :9, :7])


def test_dual_clip_loader_flux_wants_one_clip_l_and_one_t5(flux_models, tmp_path):
    wf = TXT2IMG.replace("clip_name1: tiny-t5xxl", "clip_name1: tiny-clip-l")
    from flowrun.errors import FlowrunError

    with pytest.raises(FlowrunError) as info:
        _run(tmp_path, flux_models, wf)
    message = info.value.render()
    assert "node 'clip'" in message and "both CLIP text encoders" in message and "CLIP-L and T5-XXL" in message


def test_fp8_weights_round_as_comfyui_stores_them(flux_models):
    """UNETLoader's fp8_e4m3fn: every weight rounded to fp8 and computed in float32; close to the full
    weights, not equal."""
    from flowrun.diffusion.components import load_unet

    path = flux_models / "diffusion_models" / "tiny-flux-dev.safetensors"
    full = load_unet(path, "a").unet.transformer
    fp8 = load_unet(path, "b", weight_dtype="fp8_e4m3fn").unet.transformer
    a, b = full.x_embedder.weight, fp8.x_embedder.weight
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.equal(b, a.to(torch.float8_e4m3fn).float())


REDUX = TXT2IMG.replace("  latent:", """  vision: {type: CLIPVisionLoader, with: {clip_name: tiny-siglip}}
  image: {type: LoadImage, with: {image: inputs/red-circle.png}}
  seen: {type: CLIPVisionEncode, in: {clip_vision: vision, image: image.image}, with: {crop: center}}
  redux: {type: StyleModelLoader, with: {style_model_name: tiny-redux}}
  styled: {type: StyleModelApply, in: {conditioning: pos, style_model: redux, clip_vision_output: seen}}
  latent:""").replace("positive: pos,", "positive: styled,")


def test_redux_renders_as_flux_pipeline_with_its_tokens(flux_models, edit_inputs):
    """Redux: a SigLIP vision model (CLIPVisionLoader) and the Redux projector (StyleModelLoader) append their
    tokens to the prompt's (StyleModelApply). The tokens equal transformers' SiglipVisionModel (with
    SiglipImageProcessor) through diffusers' ReduxImageEncoder, and the render equals FluxPipeline given
    the prompt's T5 tokens followed by them, within one 8-bit level."""
    from transformers import SiglipImageProcessor

    ours = _run(edit_inputs, flux_models, REDUX, "redux")
    vision, redux = tiny_flux.build_redux()
    processor = SiglipImageProcessor(size={"height": 64, "width": 64})
    circle = Image.open(edit_inputs / "inputs" / "red-circle.png").convert("RGB")
    with torch.no_grad():
        hidden = vision(**processor(images=circle, return_tensors="pt")).last_hidden_state
        tokens = redux(hidden).image_embeds
    context, pooled = _reference_text(PROMPT)
    pipe = _pipeline()
    pipe_prompt = torch.cat([context, tokens], dim=1)
    from flowrun.diffusion.flux_network import pack
    from flowrun.diffusion.noise import initial_noise

    image = pipe(prompt_embeds=pipe_prompt, pooled_prompt_embeds=pooled, height=64, width=64, num_inference_steps=3,
                 guidance_scale=4.0, latents=pack(initial_noise(torch.zeros(1, 16, 8, 8), 7)), output_type="np",
                 sigmas=SIMPLE_TIMES["dev"]).images[0]
    theirs = np.clip(255 * image, 0, 255).astype(np.uint8).astype(int)
    diff = np.abs(ours - theirs)
    print(f"redux: max difference {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= 1


def test_a_lora_on_a_flux_model_is_refused_by_name(flux_models, tmp_path):
    """LoRAs are not applied to Flux yet: LoraLoaderModelOnly says so instead of failing deep inside."""
    from safetensors.torch import save_file

    (tmp_path / "models" / "loras").mkdir(parents=True)
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, 4)},
              str(tmp_path / "models" / "loras" / "flux-style.safetensors"))
    wf = TXT2IMG.replace("  shift: {type: ModelSamplingFlux, in: {model: unet},",
                         "  lora: {type: LoraLoaderModelOnly, in: {model: unet}, with: {lora_name: flux-style}}\n"
                         "  shift: {type: ModelSamplingFlux, in: {model: lora},")
    from flowrun.errors import FlowrunError

    (tmp_path / "wf.yaml").write_text(wf)
    settings = Settings(out_dir=tmp_path / "o", use_cache=False, models_dirs=(str(flux_models), str(tmp_path / "models")),
                        device="cpu")
    with pytest.raises(FlowrunError) as info:
        api.run(api.load(tmp_path / "wf.yaml"), settings)
    assert "node 'lora'" in info.value.render() and "LoRAs for Flux models are not supported yet" in info.value.render()


def test_unet_patches_on_a_flux_model_are_refused_by_name(flux_models, tmp_path):
    """FreeU and its kin change a UNet's blocks; on Flux they say so instead of failing inside the sampler."""
    wf = TXT2IMG.replace("  shift: {type: ModelSamplingFlux, in: {model: unet},",
                         "  freeu: {type: FreeU_V2, in: {model: unet}}\n"
                         "  shift: {type: ModelSamplingFlux, in: {model: freeu},")
    from flowrun.errors import FlowrunError

    with pytest.raises(FlowrunError) as info:
        _run(tmp_path, flux_models, wf)
    assert "node 'freeu'" in info.value.render() and "FreeU_V2 patches a UNet's blocks" in info.value.render()
