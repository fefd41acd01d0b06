"""Qwen-Image on a toy-width model with seeded weights: a render through UNETLoader + CLIPLoader (qwen_image) +
VAELoader + KSampler equals diffusers' QwenImagePipeline (with its own Qwen2.5-VL text encoder) on the same weights
within one 8-bit level; the text conditioning is ComfyUI's (the chat template, cut after the system turn); the VAE
reads Wan's layout and diffusers'; the full-size key layouts of the split files are detected and mapped on the
meta device with their published sizes; a text encoder of another family is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_qwen_image
from flowrun import api
from flowrun.settings import Settings

PROMPT, SEED, STEPS, SIZE, SHIFT = "a red circle on (blue) water", 5, 3, 64, 1.15
GRAPH = """version: 1
nodes:
  unet: {type: UNETLoader, with: {unet_name: tiny-qwen-image}}
  clip: {type: CLIPLoader, with: {clip_name: tiny-qwen-image-qwen25-vl, type: qwen_image}}
  vae: {type: VAELoader, with: {vae_name: VAEFILE}}
  pos: {type: CLIPTextEncode, in: {clip: clip}, with: {text: "a red circle on (blue) water"}}
  neg: {type: CLIPTextEncode, in: {clip: clip}, with: {text: ""}}
  latent: {type: EmptySD3LatentImage, with: {width: 64, height: 64, batch_size: 1}}
  sample:
    type: KSampler
    in: {model: unet, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 5, steps: 3, cfg: 1.0, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""


@pytest.fixture(scope="module")
def qwen_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-image-models")
    tiny_qwen_image.write(root)
    return root


def _render(models, tmp_path, vae: str = "tiny-qwen-image-vae", name: str = "render",
            dtype: str | None = None) -> np.ndarray:
    (tmp_path / f"{name}.yaml").write_text(GRAPH.replace("VAEFILE", vae))
    settings = Settings(out_dir=tmp_path / name, use_cache=False, models_dirs=(str(models),), device="cpu",
                        dtype=dtype)
    result = api.run(api.load(tmp_path / f"{name}.yaml"), settings)
    return np.asarray(Image.open(result.files[0])).astype(int)


def _pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from transformers import Qwen2TokenizerFast

    from flowrun.diffusion.text_qwen_image import TOKENIZER

    transformer, vae, qwen = tiny_qwen_image.build()
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=vae, text_encoder=qwen,
                             tokenizer=Qwen2TokenizerFast.from_pretrained(str(TOKENIZER)), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_render_matches_diffusers_qwen_image_pipeline(qwen_models, tmp_path):
    """UNETLoader + CLIPLoader (qwen_image) + VAELoader + CLIPTextEncode + EmptySD3LatentImage + KSampler (euler,
    simple, cfg 1, shift 1.15 by default) + VAEDecode, and QwenImagePipeline encoding the prompt itself with
    FlowMatchEulerDiscreteScheduler (static shift 1.15, the same sigmas) from the same initial noise: within one
    8-bit level. (cfg 1: the pipeline's true CFG rescales the guided prediction's norm, ComfyUI's does not.)"""
    from flowrun.diffusion import schedules
    from flowrun.diffusion.components import load_unet
    from flowrun.diffusion.noise import initial_noise
    from flowrun.diffusion.qwen_image_network import pack

    model = load_unet(qwen_models / "diffusion_models" / "tiny-qwen-image.safetensors", "fp")
    assert (model.family, model.sampling.shift, model.sampling.multiplier) == ("qwen_image", SHIFT, 1.0)
    sigmas = schedules.simple(model.sampling, STEPS)[:-1]
    times = sigmas / (SHIFT - (SHIFT - 1.0) * sigmas)  # the unshifted times: the scheduler shifts them again
    pipe = _pipeline()
    noise = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), SEED)
    theirs = pipe(prompt=PROMPT, height=SIZE, width=SIZE, sigmas=times.tolist(), true_cfg_scale=1.0,
                  num_inference_steps=STEPS, latents=pack(noise, 2), output_type="np").images[0]
    assert np.allclose(pipe.scheduler.sigmas[:-1].numpy(), sigmas.numpy(), atol=1e-6)
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)  # as SaveImage makes 8-bit pixels
    ours = _render(qwen_models, tmp_path)
    assert np.abs(ours - theirs).max() <= 1, f"max difference {np.abs(ours - theirs).max()} levels"
    assert ours.std() > 10  # an image, not a flat field
    # diffusers' layout of the VAE gives the same image
    assert np.abs(_render(qwen_models, tmp_path, "tiny-qwen-image-vae-diffusers", "diffusers-vae") - ours).max() == 0


def test_text_conditioning_is_comfyuis_and_the_pipelines(qwen_models):
    """The prompt in the chat template, tokenized in one piece (weights off: parentheses stay text), the context
    from the token after "user\\n" on (34 template tokens cut): the pipeline's prompt embedding."""
    from flowrun.diffusion import text_qwen_image
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.qwen_image_files import load_text_encoder

    ids = text_qwen_image.tokenize("a red circle")
    assert text_qwen_image.template_end(ids) == 34 and ids[34:37] == [64, 2518, 12671]
    assert ids[37:] == [151645, 198, 151644, 77091, 198]
    assert text_qwen_image.tokenize("(red:1.2)")[34:40] == text_qwen_image.tokenizer()("(red:1.2)")["input_ids"]
    raw = "<|im_start|>user\nred<|im_end|>"  # a template of its own: taken whole, cut after its "user\n"
    assert text_qwen_image.template_end(text_qwen_image.tokenize(raw)) == 3
    clip = load_text_encoder(qwen_models / "text_encoders" / "tiny-qwen-image-qwen25-vl.safetensors", "fp")
    entry = encode(clip, PROMPT)[0]
    theirs, mask = _pipeline().encode_prompt(PROMPT, device="cpu")
    assert entry.embedding.shape == theirs.shape and entry.pooled_output is None
    assert torch.allclose(entry.embedding, theirs, atol=1e-5)
    assert encode(clip, "")[0].embedding.shape == (1, 5, 32)  # the template's end alone


# published sizes: the transformer "20B", the VAE of Wan 2.1's kind, Qwen2.5-VL 7B's text model (no vision tower)
TRANSFORMER_PARAMS, VAE_PARAMS, TEXT_PARAMS = 20_430_401_088, 126_892_531, 7_070_619_136


def test_full_size_layouts_are_detected_and_mapped_on_the_meta_device():
    """qwen_image_bf16 (under model.diffusion_model.), qwen_2.5_vl_7b (text model under model., vision tower and
    lm head beside it) and qwen_image_vae (Wan's layout): detected, configured from their shapes, built."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from flowrun.diffusion import qwen_image_files, qwen_image_vae, text_qwen_image
    from flowrun.diffusion.configs import QWEN25_VL_7B_TEXT, QWEN_IMAGE_TRANSFORMER, QWEN_IMAGE_VAE

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER)
        vae = AutoencoderKLQwenImage(**{k: v for k, v in QWEN_IMAGE_VAE.items() if k != "latent_channels"})
        text = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**QWEN25_VL_7B_TEXT))
    state = {"model.diffusion_model." + k: v for k, v in transformer.state_dict().items()}
    assert qwen_image_files.is_qwen_image(state)
    config, built = qwen_image_files.build_transformer(state, "qwen_image_bf16.safetensors")
    assert config == QWEN_IMAGE_TRANSFORMER
    assert sum(p.numel() for p in built.parameters()) == TRANSFORMER_PARAMS
    file = {"model." + k: v for k, v in text.state_dict().items()}
    file.update({"visual.blocks.0.attn.qkv.weight": torch.empty(3, 3, device="meta"),
                 "lm_head.weight": torch.empty(152064, 3584, device="meta")})
    part = qwen_image_files.text_state(file)
    assert text_qwen_image.is_qwen25(part) and text_qwen_image.config_from_state(part) == QWEN25_VL_7B_TEXT
    assert sum(p.numel() for p in text_qwen_image.build(part).parameters()) == TEXT_PARAMS
    wan = tiny_qwen_image.vae_to_wan(vae.state_dict())
    assert qwen_image_vae.is_qwen_image_vae(wan) and "decoder.head.2.weight" in wan
    found = qwen_image_vae.vae_config(wan, QWEN_IMAGE_VAE)
    assert found == QWEN_IMAGE_VAE
    assert sum(p.numel() for p in qwen_image_vae.build(wan, found).parameters()) == VAE_PARAMS


def test_bfloat16_run_holds_the_transformer_in_bfloat16(qwen_models, tmp_path):
    """--dtype bfloat16 (precision.py's one rule): UNETLoader's transformer, fp8-rounded or not, in bfloat16; the VAE
    (VAELoader) and Qwen2.5-VL in float32 on the CPU; the render stays close to the float32 one."""
    from flowrun.diffusion.components import load_unet, load_vae
    from flowrun.diffusion.qwen_image_files import load_text_encoder

    def dtypes(module):
        return {p.dtype for p in module.parameters()}

    for weight_dtype in ("default", "fp8_e4m3fn"):
        unet = load_unet(qwen_models / "diffusion_models" / "tiny-qwen-image.safetensors", "u",
                         weight_dtype=weight_dtype, dtype="bfloat16")
        assert unet.dtype == torch.bfloat16 and dtypes(unet.unet) == {torch.bfloat16}
    assert dtypes(load_vae(qwen_models / "vae" / "tiny-qwen-image-vae.safetensors", "v", dtype="bfloat16").model) \
        == {torch.float32}
    text = load_text_encoder(qwen_models / "text_encoders" / "tiny-qwen-image-qwen25-vl.safetensors", "t")
    assert dtypes(text.models[0]) == {torch.float32}
    diff = np.abs(_render(qwen_models, tmp_path, name="full") - _render(qwen_models, tmp_path, name="half",
                                                                      dtype="bfloat16"))
    # measured on the 2-core development machine: at most 6 levels apart, 0.33 on average (PSNR 52.4 dB)
    assert 0 < diff.max() <= 16 and diff.mean() < 1.5, (diff.max(), diff.mean())


def test_a_text_encoder_of_another_family_is_refused_by_name(qwen_models, tmp_path, cli):
    """CLIPLoader type qwen_image given a CLIP: the error names what the file holds. A Qwen3 file is read as Z-Image's
    encoder whatever the type (ComfyUI tells Qwen3 4B from its weights; tests/test_zimage.py), so Qwen-Image's own
    loader, given one, names it."""
    from safetensors.torch import load_file

    from flowrun.diffusion import qwen_image_files
    from flowrun.diffusion.detect import CheckpointError

    state = load_file(str(qwen_models / "text_encoders" / "tiny-qwen-image-qwen25-vl.safetensors"))
    qwen3 = {k: v for k, v in state.items() if not k.endswith("_proj.bias")}
    qwen3["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    tiny_qwen_image.save(qwen3, qwen_models / "text_encoders" / "qwen3-4b.safetensors")
    tiny_qwen_image.save({"text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)},
                         qwen_models / "text_encoders" / "clip-l.safetensors")
    words = "a Qwen3 text encoder \\(Z-Image's\\).*type qwen_image reads Qwen2.5-VL 7B"
    with pytest.raises(CheckpointError, match=words):
        qwen_image_files.load_text_encoder(qwen_models / "text_encoders" / "qwen3-4b.safetensors", "fp")
    for name, words in (("clip-l", "a CLIP text encoder"),):
        text = GRAPH.replace("tiny-qwen-image-qwen25-vl", name).replace("VAEFILE", "tiny-qwen-image-vae")
        (tmp_path / f"{name}.yaml").write_text(text)
        r = cli("run", tmp_path / f"{name}.yaml", "--models-dir", qwen_models, "--no-cache", "--out", tmp_path / name)
        assert r.code == 1 and "CLIPLoader" in r.err and f"{name}.safetensors: {words}" in r.err, r.err
        assert "type qwen_image reads Qwen2.5-VL 7B" in r.err


def test_comfyui_qwen_image_graphs_import_validate_and_run(cli, tmp_path):
    """The hand-written Qwen-Image graph (UNETLoader + CLIPLoader qwen_image + VAELoader + ModelSamplingAuraFlow +
    EmptySD3LatentImage + KSampler cfg 2.5), UI and API format, on the toy model under the file names it carries:
    both import, validate and run to the same image."""
    from conftest import ROOT

    tiny_qwen_image.write_as_comfyui(tmp_path / "models")
    images = {}
    for form in ("api", "ui"):
        wf = tmp_path / f"qwen-image-{form}.yaml"
        assert cli("import", ROOT / "tests" / "comfyui" / f"qwen-image-{form}.json", "--out", wf).code == 0
        r = cli("validate", wf, "--models-dir", tmp_path / "models")
        assert r.code == 0, r.err
        r = cli("run", wf, "--models-dir", tmp_path / "models", "--out", tmp_path / form, "--device", "cpu")
        assert r.code == 0, r.err
        with Image.open(tmp_path / form / "qwen-image.png") as image:
            images[form] = np.asarray(image).astype(int)
    assert images["api"].shape == (64, 64, 3) and images["api"].std() > 10
    assert np.abs(images["api"] - images["ui"]).max() <= 1


def test_a_scaled_fp8_text_encoder_is_multiplied_back_out(qwen_models):
    """qwen_2.5_vl_7b_fp8_scaled's form (fp8 weights, a `.scale_weight` each, a `scaled_fp8` marker) encodes as the
    same weights written out in float32."""
    from safetensors.torch import load_file

    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.qwen_image_files import load_text_encoder

    state = load_file(str(qwen_models / "text_encoders" / "tiny-qwen-image-qwen25-vl.safetensors"))
    scaled, plain = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in state.items():
        if key.startswith("model.layers.") and key.endswith("proj.weight"):
            scale = value.abs().max() / 448
            scaled[key], scaled[key[:-len("weight")] + "scale_weight"] = (value / scale).to(torch.float8_e4m3fn), scale
            plain[key] = scaled[key].float() * scale
        else:
            scaled[key] = plain[key] = value
    folder = qwen_models / "text_encoders"
    tiny_qwen_image.save(scaled, folder / "scaled.safetensors", tiny_qwen_image.SIDECAR)
    tiny_qwen_image.save(plain, folder / "plain.safetensors", tiny_qwen_image.SIDECAR)
    ours = encode(load_text_encoder(folder / "scaled.safetensors", "a"), PROMPT)[0].embedding
    assert torch.equal(ours, encode(load_text_encoder(folder / "plain.safetensors", "b"), PROMPT)[0].embedding)


def test_a_conditioning_of_another_width_is_refused_before_sampling(qwen_models):
    """A context from another family's CLIP (here 48 wide) names both widths instead of failing in the network."""
    from flowrun.diffusion.added_inputs import added_inputs
    from flowrun.diffusion.components import load_unet
    from flowrun.values import CondEntry

    model = load_unet(qwen_models / "diffusion_models" / "tiny-qwen-image.safetensors", "fp")
    assert added_inputs(model, CondEntry(torch.zeros(1, 5, 32)), True, 8, 8) is None
    with pytest.raises(ValueError, match="32-wide Qwen2.5-VL text context; this conditioning's is 48 wide"):
        added_inputs(model, CondEntry(torch.zeros(1, 5, 48)), True, 8, 8)


def test_a_qwen_image_transformer_given_as_a_checkpoint_names_the_loaders(qwen_models):
    """CheckpointLoaderSimple on the transformer file: ComfyUI's Qwen-Image comes in parts, the error says which."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.detect import CheckpointError

    with pytest.raises(CheckpointError, match="a Qwen-Image transformer, not a checkpoint.*UNETLoader.*qwen_image"):
        load_bundle(qwen_models / "diffusion_models" / "tiny-qwen-image.safetensors", "fp")


def test_clip_set_last_layer_reads_a_layer_without_the_final_norm(qwen_models):
    """CLIPSetLastLayer -2 on the two-layer toy: the first layer's output (transformers' hidden_states[1]); -1: the
    last layer's before the final norm; beyond the depth: the default, normed."""
    from flowrun.diffusion import text_qwen_image
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.qwen_image_files import load_text_encoder

    clip = load_text_encoder(qwen_models / "text_encoders" / "tiny-qwen-image-qwen25-vl.safetensors", "fp")
    model, = clip.models
    ids = text_qwen_image.tokenize(PROMPT)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    second = encode(clip.with_layer(-2), PROMPT)[0].embedding
    assert torch.allclose(second, out.hidden_states[1][:, 34:], atol=1e-6)
    last = encode(clip.with_layer(-1), PROMPT)[0].embedding
    with torch.no_grad():
        assert torch.allclose(model.norm(last), out.last_hidden_state[:, 34:], atol=1e-5)
    assert not torch.allclose(last, out.last_hidden_state[:, 34:], atol=1e-3)
    assert torch.equal(encode(clip.with_layer(-3), PROMPT)[0].embedding, encode(clip, PROMPT)[0].embedding)
