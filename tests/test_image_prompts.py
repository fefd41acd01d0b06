"""Image prompts: CLIP vision models (transformers' CLIPVisionModelWithProjection), ComfyUI's preprocessing,
unCLIP class labels (ComfyUI's unclip_adm, diffusers' noise_image_embeddings) and the T2I style adapter, on
toy models written by tests/tiny_image_prompt.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tiny_image_prompt as toys


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return toys.write_all(tmp_path_factory.mktemp("image-prompt-models"))


@pytest.fixture(scope="module")
def unclip_bundle(models):
    from flowrun.diffusion.unclip_checkpoint import load_bundle

    return load_bundle(models / "checkpoints" / "tiny-unclip.safetensors", "tiny-unclip")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).rand(1, h, w, 3).astype(np.float32)


# --- CLIP vision ----------------------------------------------------------------------------------------

def test_preprocess_fixed_numbers_and_clip_image_processor():
    from transformers import CLIPImageProcessor

    from flowrun.diffusion.clip_vision import MEAN, STD, preprocess

    grey = torch.full((1, 20, 30, 3), 0.4)  # any resize of a flat image is flat: 8-bit 102, then normalised
    out = preprocess(grey, 16)
    assert out.shape == (1, 3, 16, 16)
    for c in range(3):
        assert torch.allclose(out[0, c], torch.tensor((102 / 255 - MEAN[c]) / STD[c]), atol=1e-6)
    y, x = np.mgrid[0:48, 0:72].astype(np.float32)  # smooth, where resamplers agree; 3:2, so no size rounds
    image = np.stack([0.5 + 0.4 * np.sin(x / 9 + c) * np.cos(y / 7 - c) for c in range(3)], -1)[None]
    pixels = preprocess(torch.from_numpy(image), 32)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   resample=3, do_center_crop=True, image_mean=list(MEAN), image_std=list(STD))
    reference = processor(images=[(image[0] * 255).round().astype(np.uint8)], return_tensors="pt").pixel_values
    # the same crop and normalisation; PIL's bicubic and torch's antialiased one differ by at most one 8-bit level
    assert pixels.shape == reference.shape
    assert (pixels - reference).abs().max() <= 1.01 / 255 / min(STD) and (pixels - reference).abs().mean() < 0.005
    squeezed = preprocess(torch.from_numpy(image), 32, crop=False)  # crop "none": the whole image, squeezed
    whole = torch.nn.functional.interpolate(torch.from_numpy(image).movedim(-1, 1), size=(32, 32), mode="bicubic",
                                            antialias=True)
    expected = (torch.clip(whole * 255, 0, 255).round() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(squeezed, expected, atol=1e-6) and not torch.allclose(squeezed, pixels, atol=1e-2)


def test_clip_vision_encode_equals_transformers_on_the_same_pixels(models):
    from flowrun.diffusion.clip_vision import encode, load, preprocess

    vision = load(models / "clip_vision" / "tiny-vision.safetensors", "v")
    image = np.concatenate([_image(40, 56, 1), _image(40, 56, 2)])
    out = encode(vision, image)
    reference = toys.vision_model()
    with torch.no_grad():
        ref = reference(pixel_values=preprocess(torch.from_numpy(image), 32), output_hidden_states=True)
    assert out.image_embeds.shape == (2, 24) and out.last_hidden_state.shape == (2, 17, 32)
    assert torch.allclose(out.image_embeds, ref.image_embeds, atol=1e-5)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.penultimate_hidden_states, ref.hidden_states[-2], atol=1e-5)
    assert not torch.allclose(out.image_embeds[0], out.image_embeds[1], atol=1e-3)  # the image matters


def test_openai_layout_converts_to_transformers_keys():
    from flowrun.diffusion.clip_vision import from_openai_layout

    state = toys.vision_model().state_dict()
    back = from_openai_layout(toys.to_openai_layout(state, "visual."), "visual.")
    assert set(back) == {k for k in state if not k.endswith("position_ids")}
    assert all(torch.equal(back[k], state[k]) for k in back)


@pytest.mark.parametrize("width, layers, intermediate, projection, act", [
    (1024, 24, 4096, 768, "quick_gelu"), (1280, 32, 5120, 1024, "gelu"), (1664, 48, 8192, 1280, "gelu")])
def test_known_sizes_are_read_off_the_weights(width, layers, intermediate, projection, act):
    """ViT-L/14, ViT-H/14 and ViT-bigG/14 at full size, built on the meta device (no memory)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from flowrun.diffusion.clip_vision import config_from_shapes

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=width, num_hidden_layers=layers, intermediate_size=intermediate, projection_dim=projection,
            num_attention_heads=16, patch_size=14, image_size=224))
    config = config_from_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, "x.safetensors")
    assert config == {"hidden_size": width, "patch_size": 14, "image_size": 224, "num_hidden_layers": layers,
                      "intermediate_size": intermediate, "projection_dim": projection, "layer_norm_eps": 1e-5,
                      "num_attention_heads": 16, "hidden_act": act}


def test_unknown_width_without_sidecar_is_refused(models, tmp_path):
    from flowrun.diffusion.clip_vision import load
    from flowrun.diffusion.detect import CheckpointError

    (tmp_path / "v.safetensors").write_bytes((models / "clip_vision" / "tiny-vision.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"width 32, which is none flowrun knows .*v\.json"):
        load(tmp_path / "v.safetensors", "v")


# --- unCLIP ---------------------------------------------------------------------------------------------

def _comfy_alphas_cumprod() -> np.ndarray:
    """ComfyUI's squaredcos_cap_v2 schedule (betas_for_alpha_bar, float64), by hand."""
    def bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - bar((i + 1) / 1000) / bar(i / 1000), 0.999) for i in range(1000)])
    return np.cumprod(1.0 - betas)


def _comfy_augment(x: torch.Tensor, level: int, seed: int) -> torch.Tensor:
    """CLIPEmbeddingNoiseAugmentation.forward with data_mean 0 and data_std 1, by hand."""
    ac = _comfy_alphas_cumprod()[level]
    noise = torch.randn(x.shape, generator=torch.manual_seed(seed))
    z = float(np.sqrt(ac)) * x + float(np.sqrt(1 - ac)) * noise
    half = x.shape[1] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor([float(level)])[:, None] * freqs[None]
    return torch.cat([z, torch.cat([torch.cos(args), torch.sin(args)], dim=-1)], dim=1)


def test_unclip_adm_equals_comfyui_formula_and_diffusers_pipeline():
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_unclip_img2img import StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    from flowrun.diffusion.unclip import adm

    embeds = torch.randn(1, 24, generator=torch.Generator().manual_seed(9))
    seed = 42
    got = adm([(embeds, 0.7, 0.3)], 24, seed)
    level = round(999 * 0.3)
    assert level == 300
    assert torch.allclose(got, _comfy_augment(embeds, level, seed - 10) * 0.7, atol=1e-5)

    class Pipe:  # what noise_image_embeddings reads of the pipeline
        image_normalizer = StableUnCLIPImageNormalizer(embedding_dim=24)
        image_noising_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    noise = torch.randn(1, 24, generator=torch.Generator().manual_seed(seed - 10))
    reference = StableUnCLIPImg2ImgPipeline.noise_image_embeddings(Pipe(), embeds, level, noise=noise)
    assert torch.allclose(got, reference * 0.7, atol=1e-5)
    # two image prompts: summed, the embedding half noised again at round(999 * 0.05)
    other = torch.randn(1, 24, generator=torch.Generator().manual_seed(10))
    merged = adm([(embeds, 0.7, 0.3), (other, 1.5, 0.0)], 24, seed)
    summed = _comfy_augment(embeds, 300, seed - 10) * 0.7 + _comfy_augment(other, 0, seed - 10) * 1.5
    assert torch.allclose(merged, _comfy_augment(summed[:, :24], 50, seed - 10), atol=1e-5)
    assert torch.equal(adm([], 24, seed), torch.zeros(1, 48))
    assert torch.equal(adm([(embeds, 0.0, 0.3)], 24, seed), torch.zeros(1, 48))  # strength 0: as no prompt


def test_unclip_checkpoint_loads_with_its_clip_vision(unclip_bundle, models):
    from flowrun.diffusion.clip_vision import from_openai_layout
    from flowrun.diffusion.unclip import embed_dim, is_unclip

    model, clip, vae, vision = unclip_bundle
    assert is_unclip(model) and embed_dim(model) == 24 and model.sampling.prediction_type == "v_prediction"
    assert model.unet.config.class_embed_type == "projection"
    expected = toys.vision_model(5).state_dict()  # write_unclip stores vision_model(seed + 1)
    got = vision.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items() if not k.endswith("position_ids"))
    assert from_openai_layout({}, "embedder.model.visual.") == {}


def test_unclip_loader_refuses_a_checkpoint_without_clip_vision(tiny_models):
    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.unclip_checkpoint import load_bundle

    with pytest.raises(CheckpointError, match=r"no CLIP vision model in this checkpoint .*CheckpointLoaderSimple"):
        load_bundle(tiny_models / "checkpoints" / "tiny.safetensors", "t")


def _render(bundle, positive, seed=3, cells=None):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import ksample_batch
    from flowrun.diffusion.noise import SeedNoise
    from flowrun.values import Latent

    model, clip = bundle[0], bundle[1]
    negative = encode(clip, "")
    latent = Latent(torch.zeros(1, 4, 4, 4))
    out = ksample_batch(model, noise=SeedNoise(cells or [seed]), cfgs=[4.0], steps=3, sampler_name="euler",
                        scheduler="normal", positive=positive, negative=negative, latent=latent)
    return [o.samples for o in out]


def test_an_image_prompt_changes_the_render_and_strength_0_is_no_prompt(unclip_bundle):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.clip_vision import encode as encode_image
    from flowrun.nodes.clip_vision import UnclipConditioningParams, unclip_conditioning

    model, clip, vae, vision = unclip_bundle
    text = encode(clip, "a red circle")
    seen = encode_image(vision, _image(32, 32, 4))
    prompted = unclip_conditioning(UnclipConditioningParams(strength=1.0, noise_augmentation=0.1), None,
                                   conditioning=text, clip_vision_output=seen)
    assert prompted[0].unclip[0][1:] == (1.0, 0.1)
    plain = _render(unclip_bundle, text)[0]
    with_image = _render(unclip_bundle, prompted)[0]
    assert (with_image - plain).abs().max() > 0.05
    zero = text.map(lambda e: e.replace(unclip=((seen.image_embeds, 0.0, 0.1),)))
    assert torch.allclose(_render(unclip_bundle, zero)[0], plain, atol=1e-6)
    assert unclip_conditioning(UnclipConditioningParams(strength=0.0), None, conditioning=text,
                               clip_vision_output=seen) is text
    # the embedding's noise comes from the sampler's seed: batched seeds render as they do alone
    batched = _render(unclip_bundle, prompted, cells=[3, 8])
    assert torch.allclose(batched[0], with_image, atol=1e-4)
    assert torch.allclose(batched[1], _render(unclip_bundle, prompted, seed=8)[0], atol=1e-4)


def test_one_pass_gives_the_unet_the_adm_vector_as_class_labels(unclip_bundle):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.unclip import adm
    from flowrun.diffusion.unet_inputs import for_entry

    model, clip = unclip_bundle[:2]
    embeds = torch.randn(1, 24, generator=torch.Generator().manual_seed(1))
    entry = encode(clip, "x")[0].replace(unclip=((embeds, 1.0, 0.0),))
    x, sigma = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([3.0])
    inputs = for_entry(model, entry, x, None, seeds=[11])
    assert torch.equal(inputs.class_labels, adm(entry.unclip, 24, 11))
    with torch.no_grad():
        got = model(x, sigma, entry.embedding, inputs=inputs)
        t = model.sampling.timestep(sigma).float()
        out = model.unet(model.sampling.calculate_input(sigma, x), t, encoder_hidden_states=entry.embedding,
                         class_labels=adm(entry.unclip, 24, 11)).sample
    assert torch.allclose(got, model.sampling.calculate_denoised(sigma, out, x), atol=1e-5)
    assert torch.equal(for_entry(model, entry.replace(unclip=()), x, None).class_labels, torch.zeros(1, 48))


def test_an_image_prompt_on_a_model_without_class_labels_is_an_error(tiny_bundle):
    from flowrun.diffusion.clip import encode

    text = encode(tiny_bundle[1], "x").map(lambda e: e.replace(unclip=((torch.zeros(1, 24), 1.0, 0.0),)))
    with pytest.raises(ValueError, match=r"input 'positive': a conditioning carries an image prompt "
                                         r"\(unCLIPConditioning\), but this model \(sd1\) takes no image embedding"):
        _render(tiny_bundle, text)


# --- style model ----------------------------------------------------------------------------------------

def _style_by_hand(state: dict, hidden: torch.Tensor, heads: int = 8) -> torch.Tensor:
    """The style adapter's forward pass written out: layer norms, attention from the fused projection, MLP."""
    f = torch.nn.functional
    x = torch.cat([hidden, state["style_embedding"].expand(hidden.shape[0], -1, -1)], dim=1)
    x = f.layer_norm(x, x.shape[-1:], state["ln_pre.weight"], state["ln_pre.bias"])
    width = x.shape[-1]
    for i in range(toys.STYLE["layers"]):
        p = f"transformer_layes.{i}."
        h = f.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        q, k, v = (h @ state[p + "attn.in_proj_weight"].t() + state[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
        attended = (weights @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + attended @ state[p + "attn.out_proj.weight"].t() + state[p + "attn.out_proj.bias"]
        h = f.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = h @ state[p + "mlp.c_fc.weight"].t() + state[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ state[p + "mlp.c_proj.weight"].t() + state[p + "mlp.c_proj.bias"]
    tokens = x[:, -toys.STYLE["tokens"]:]
    return f.layer_norm(tokens, (width,), state["ln_post.weight"], state["ln_post.bias"]) @ state["proj"]


def test_style_model_apply_appends_tokens_as_computed_by_hand(models, tiny_bundle):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.clip_vision import encode as encode_image, load as load_vision
    from flowrun.diffusion.style_model import load
    from flowrun.nodes.clip_vision import StyleApplyParams, style_model_apply

    style = load(models / "style_models" / "tiny-style.safetensors", "s")
    seen = encode_image(load_vision(models / "clip_vision" / "tiny-vision.safetensors", "v"),
                        np.concatenate([_image(32, 32, 5), _image(32, 32, 6)]))
    text = encode(tiny_bundle[1], "a red circle")
    out = style_model_apply(StyleApplyParams(strength=0.6), None, conditioning=text, style_model=style,
                            clip_vision_output=seen)
    tokens = toys.STYLE["tokens"]
    assert out[0].embedding.shape == (1, 77 + 2 * tokens, 32)  # both images' tokens, in a row
    assert torch.equal(out[0].embedding[:, :77], text[0].embedding)
    expected = _style_by_hand(toys.style_adapter().state_dict(), seen.last_hidden_state).flatten(0, 1) * 0.6
    assert torch.allclose(out[0].embedding[0, 77:], expected, atol=1e-5)


def test_a_broken_redux_or_unknown_style_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.style_model import load

    save_file({"redux_down.weight": torch.zeros(2, 2)}, str(tmp_path / "redux.safetensors"))
    with pytest.raises(CheckpointError, match="Redux weights do not fit together"):
        load(tmp_path / "redux.safetensors", "r")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a style model flowrun knows"):
        load(tmp_path / "other.safetensors", "o")


# --- workflows: bad input -------------------------------------------------------------------------------

IMAGE_PROMPT_ON_SD1 = """
version: 1
nodes:
  ckpt:
    type: CheckpointLoaderSimple
    with: {ckpt_name: flowrun-tiny}
  vision:
    type: CLIPVisionLoader
    with: {clip_name: CLIP_NAME}
  image:
    type: LoadImage
    with: {image: red-circle.png}
  seen:
    type: CLIPVisionEncode
    in: {clip_vision: vision, image: image.image}
  text:
    type: CLIPTextEncode
    in: {clip: ckpt.clip}
    with: {text: a circle}
  prompt:
    type: unCLIPConditioning
    in: {conditioning: text, clip_vision_output: seen}
  latent:
    type: EmptyLatentImage
    with: {width: 32, height: 32}
  sample:
    type: KSampler
    in: {model: ckpt.model, positive: prompt, negative: text, latent_image: latent}
    with: {steps: 2}
  decode:
    type: VAEDecode
    in: {samples: sample, vae: ckpt.vae}
  save:
    type: SaveImage
    in: {images: decode}
"""


def test_bad_image_prompts_name_node_and_field(cli, workflow, models, tmp_path):
    from conftest import ROOT

    (tmp_path / "red-circle.png").write_bytes((ROOT / "workflows" / "inputs" / "red-circle.png").read_bytes())
    missing = workflow(IMAGE_PROMPT_ON_SD1.replace("CLIP_NAME", "nope"), "missing.yaml")
    r = cli("validate", missing, "--models-dir", models)
    assert r.code == 2 and "vision" in r.err and "clip_name" in r.err and "no clip_vision named 'nope'" in r.err, r.err
    on_sd1 = workflow(IMAGE_PROMPT_ON_SD1.replace("CLIP_NAME", "tiny-vision"), "sd1.yaml")
    assert cli("validate", on_sd1, "--models-dir", models).code == 0
    r = cli("run", on_sd1, "--models-dir", models, "--out", tmp_path / "o")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert "sample" in r.err and "input 'positive': a conditioning carries an image prompt (unCLIPConditioning)" in r.err


# --- GLIGEN ---------------------------------------------------------------------------------------------

def test_gligen_text_box_equals_diffusers_gated_unet(tiny_bundle, tmp_path):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.gligen import load, pooled_unprojected
    from flowrun.diffusion.unet_inputs import for_entry
    from flowrun.nodes.gligen import TextBoxParams, gligen_text_box_apply

    model, clip = tiny_bundle[0], tiny_bundle[1]
    gated = toys.gated_unet(model.unet.state_dict())
    gligen = load(toys.write_gligen(tmp_path, gated), "g")
    assert len(gligen.fusers) == 4 and gligen.key_dim == 32  # one per transformer block: down, middle, 2 up
    text = encode(clip, "a picture")
    boxed = gligen_text_box_apply(TextBoxParams(text="a red circle", width=16, height=16, x=8, y=8), None,
                                  conditioning_to=text, clip=clip, gligen_textbox_model=gligen)
    pooled = pooled_unprojected(clip, "a red circle")
    with torch.no_grad():
        ids = clip.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.allclose(pooled, clip.models[0](input_ids=ids).pooler_output, atol=1e-6)
    (box,) = boxed[0].gligen.boxes
    assert box[1:] == (2, 2, 1, 1) and torch.equal(box[0], pooled)  # ComfyUI's (h, w, y, x) in latent pixels

    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([2.0])
    entry = boxed[0]
    with torch.no_grad():
        got = model(x, sigma, entry.embedding, inputs=for_entry(model, entry, x, None))
        plain = model(x, sigma, entry.embedding, inputs=for_entry(model, text[0], x, None))
        boxes = torch.zeros(1, 30, 4)
        boxes[0, 0] = torch.tensor([0.25, 0.25, 0.75, 0.75])
        masks = torch.zeros(1, 30)
        masks[0, 0] = 1.0
        phrases = torch.zeros(1, 30, 32)
        phrases[0, 0] = pooled[0]
        t = model.sampling.timestep(sigma).float()
        out = gated(model.sampling.calculate_input(sigma, x), t, encoder_hidden_states=entry.embedding,
                    cross_attention_kwargs={"gligen": {"boxes": boxes, "masks": masks,
                                                       "positive_embeddings": phrases}}).sample
    assert torch.allclose(got, model.sampling.calculate_denoised(sigma, out, x), atol=1e-5)
    assert (got - plain).abs().max() > 1e-2
    assert not any(hasattr(m, "fuser") for m in model.unet.modules()) and not hasattr(model.unet, "position_net")
