"""Z-Image on a toy-width model with seeded weights: UNETLoader + CLIPLoader (lumina2) + VAELoader + KSampler equals
diffusers' ZImagePipeline on the same weights within one 8-bit level (cfg 1 as Turbo samples, and with cfg: the
shorter negative prompt run on its own tokens); the text side is transformers' Qwen3 read as ComfyUI's z_image
encoder reads it; both transformer layouts give the same model; the full-size layouts of z_image_turbo and
qwen_3_4b are detected and mapped on the meta device with their published sizes; another family's text encoder
is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_zimage
from flowrun import api
from flowrun.settings import Settings

PROMPT, SEED, STEPS, SIZE, SHIFT = "a red circle", 7, 3, 64, 3.0
GRAPH = """version: 1
nodes:
  unet: {type: UNETLoader, with: {unet_name: UNETFILE}}
  clip: {type: CLIPLoader, with: {clip_name: tiny-zimage-qwen3, type: lumina2}}
  vae: {type: VAELoader, with: {vae_name: tiny-zimage-vae}}
  pos: {type: CLIPTextEncode, in: {clip: CLIPNODE}, with: {text: "a red circle"}}
  neg: {type: CLIPTextEncode, in: {clip: CLIPNODE}, with: {text: "blurry"}}
  latent: {type: EmptySD3LatentImage, with: {width: 64, height: 64, batch_size: 1}}
  sample:
    type: KSampler
    in: {model: unet, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 7, steps: 3, cfg: CFG, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""


@pytest.fixture(scope="module")
def z_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("zimage-models")
    return root, tiny_zimage.write(root)


def _render(root, tmp_path, name: str, cfg: float = 1.0, unet: str = "tiny-zimage", clip: str = "clip",
            extra_dirs=(), dtype: str | None = None) -> np.ndarray:
    text = GRAPH.replace("UNETFILE", unet).replace("CFG", str(cfg)).replace("CLIPNODE", clip)
    if clip != "clip":
        text = text.replace("nodes:\n", "nodes:\n  sd1: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n")
    (tmp_path / f"{name}.yaml").write_text(text)
    settings = Settings(out_dir=tmp_path / name, use_cache=False, models_dirs=(str(root), *map(str, extra_dirs)),
                        device="cpu", dtype=dtype)
    result = api.run(api.load(tmp_path / f"{name}.yaml"), settings)
    return np.asarray(Image.open(result.files[0])).astype(int)


def _pipeline_image(root, cfg: float) -> np.ndarray:
    """ZImagePipeline on the toy's weights: our prompt embeddings, sigmas and initial noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from flowrun.diffusion import schedules
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.components import load_unet
    from flowrun.diffusion.noise import initial_noise
    from flowrun.diffusion.zimage_files import load_text_encoder

    model = load_unet(root / "diffusion_models" / "tiny-zimage.safetensors", "fp")
    clip = load_text_encoder(root / "text_encoders" / "tiny-zimage-qwen3.safetensors", "fp")
    pos, neg = encode(clip, PROMPT)[0].embedding, encode(clip, "blurry")[0].embedding
    sigmas = schedules.simple(model.sampling, STEPS)[:-1]
    times = sigmas / (SHIFT - (SHIFT - 1.0) * sigmas)  # the unshifted times: the scheduler shifts them again
    transformer, vae, _ = tiny_zimage.build()
    vae.register_to_config(scaling_factor=0.3611, shift_factor=0.1159)  # Z-Image's VAE config (Flux's autoencoder)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=vae, text_encoder=None,
                          tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    latents = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), SEED)
    # diffusers' guidance g adds g * (pos - neg) to pos: ComfyUI's cfg is g + 1
    image = pipe(prompt_embeds=[pos[0]], negative_prompt_embeds=[neg[0]], height=SIZE, width=SIZE,
                 sigmas=times.tolist(), guidance_scale=cfg - 1.0, latents=latents, output_type="np").images[0]
    assert np.allclose(pipe.scheduler.sigmas[:-1].numpy(), sigmas.numpy(), atol=1e-6)
    return np.clip(255 * image, 0, 255).astype(np.uint8).astype(int)  # as SaveImage makes 8-bit pixels


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_render_matches_diffusers_zimage_pipeline(z_models, tmp_path, cfg):
    """UNETLoader + CLIPLoader (lumina2) + VAELoader + EmptySD3LatentImage + KSampler (euler, simple, shift 3 by
    default) and ZImagePipeline (FlowMatchEulerDiscreteScheduler shift 3, the same sigmas, embeddings, initial
    noise; guidance cfg - 1): within one 8-bit level."""
    root, _ = z_models
    theirs = _pipeline_image(root, cfg)
    ours = _render(root, tmp_path, f"cfg{cfg}", cfg)
    assert np.abs(ours - theirs).max() <= 1, f"max difference {np.abs(ours - theirs).max()} levels"
    assert ours.std() > 10  # an image, not a flat field


def test_both_transformer_layouts_load_the_same_model(z_models):
    """The original layout (fused qkv, ComfyUI's file) and diffusers' give the same prediction; the model samples
    on ComfyUI's ZImage settings (shift 3, timestep sigma) with Flux's latent format; weight_dtype fp8 rounds the
    weights; an odd-sized latent is padded to the patch grid and cropped back."""
    from flowrun.diffusion.components import load_unet

    root, files = z_models
    a, b = load_unet(files["original"], "a"), load_unet(files["diffusers"], "b")
    assert (a.family, a.sampling.shift, a.sampling.multiplier) == ("zimage", SHIFT, 1.0)
    assert a.latent_format[2] == 0.3611 and a.latent_format[0][0] == 0.1159
    x = torch.randn(1, 16, 5, 7, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 9, 40, generator=torch.Generator().manual_seed(2))
    out_a, = a.unet(x, torch.tensor([0.4]), encoder_hidden_states=context)
    out_b, = b.unet(x, torch.tensor([0.4]), encoder_hidden_states=context)
    assert out_a.shape == (1, 16, 5, 7) and torch.equal(out_a, out_b)
    fp8 = load_unet(files["original"], "c", weight_dtype="fp8_e4m3fn")  # weights rounded to fp8, computed in fp32
    assert next(fp8.unet.parameters()).dtype == torch.float32
    out_fp8, = fp8.unet(x, torch.tensor([0.4]), encoder_hidden_states=context)
    assert 0 < (out_fp8 - out_a).abs().max() < 0.1 * out_a.abs().max()
    # the network reads time as 1 - sigma and predicts the negated velocity; the rows read their own tokens
    padded = torch.cat([x, x[..., :1]], dim=-1)
    padded = torch.cat([padded, padded[..., :1, :]], dim=-2)
    with torch.no_grad():
        raw = a.unet.transformer([padded[0].unsqueeze(1)], torch.tensor([0.6]), [context[0, :5]],
                                 return_dict=False)[0][0]
    repeated = context[:, :5].repeat(1, 2, 1)  # guidance repeats a shorter prompt to batch it with a longer one
    out, = a.unet(x, torch.tensor([0.4]), encoder_hidden_states=repeated,
                  added_cond_kwargs={"cap_tokens": torch.tensor([[0.0, 5.0]])})
    assert torch.allclose(out[0], -raw[:, 0, :5, :7], atol=1e-6)


def test_text_conditioning_is_comfyuis(z_models):
    """The prompt in Qwen3's chat template (ComfyUI's z_image template = diffusers' with enable_thinking: no
    <think> block), as one string, no padding; the context is the output of the second-to-last layer without the
    final norm (transformers' hidden_states[-2]); CLIPSetLastLayer picks another layer."""
    from flowrun.diffusion import text_zimage
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.zimage_files import load_text_encoder

    root, files = z_models
    ids = text_zimage.tokenize(PROMPT)
    # <|im_start|> user \n a red circle <|im_end|> \n <|im_start|> assistant \n
    assert ids == [151644, 872, 198, 64, 2518, 12671, 151645, 198, 151644, 77091, 198]
    assert text_zimage.tokenizer().decode(text_zimage.tokenize("(red:1.5)")[3:-5]) == "(red:1.5)"  # no weights
    clip = load_text_encoder(files["qwen3"], "fp")
    _, _, qwen3 = tiny_zimage.build()
    with torch.no_grad():
        hidden = qwen3(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    entry = encode(clip, PROMPT)[0]
    assert entry.embedding.shape == (1, 11, 40) and entry.pooled_output is None
    assert torch.allclose(entry.embedding, hidden[-2], atol=1e-5)
    assert torch.allclose(encode(clip.with_layer(-3), PROMPT)[0].embedding, hidden[-3], atol=1e-5)
    assert torch.allclose(encode(clip.with_layer(-9), PROMPT)[0].embedding, hidden[-1], atol=1e-5)  # the normed last


def test_another_familys_text_encoder_is_refused_by_name(z_models, tmp_path, tiny_models, cli):
    """An SD1 CLIP's conditioning given to Z-Image: the sampler's error names the input and the widths; a T5-XXL
    file given to CLIPLoader type lumina2 is named as what it is, at the node."""
    import shutil

    import tiny_sd3

    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.zimage_files import load_text_encoder

    root, _ = z_models
    with pytest.raises(Exception) as err:
        _render(root, tmp_path, "wrong", clip="sd1.clip", extra_dirs=(tiny_models,))
    message = str(err.value)
    assert "input 'positive'" in message and "40-wide Qwen3" in message and "wide (from a CLIP" in message, message
    t5_files = tiny_sd3.write(tmp_path / "sd3")
    with pytest.raises(CheckpointError, match="T5 v1.1 encoder \\(SD3's and Flux's T5-XXL\\); Z-Image"):
        load_text_encoder(t5_files["t5xxl"], "fp")
    shutil.copyfile(t5_files["t5xxl"], root / "text_encoders" / "t5xxl-here.safetensors")
    shutil.copyfile(t5_files["t5xxl"].with_suffix(".json"), root / "text_encoders" / "t5xxl-here.json")
    text = GRAPH.replace("UNETFILE", "tiny-zimage").replace("CFG", "1.0").replace("CLIPNODE", "clip")
    (tmp_path / "t5.yaml").write_text(text.replace("tiny-zimage-qwen3", "t5xxl-here"))
    r = cli("run", tmp_path / "t5.yaml", "--models-dir", root, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "CLIPLoader" in r.err and "T5 v1.1 encoder" in r.err and "Qwen3 4B" in r.err, r.err


def test_bfloat16_run_holds_the_transformer_in_bfloat16(z_models, tmp_path):
    """--dtype bfloat16 (precision.py's one rule): UNETLoader's transformer, fp8-rounded or not, in bfloat16; Qwen3
    in float32 on the CPU; the render stays close to the float32 one."""
    from flowrun.diffusion.components import load_unet

    root, _ = z_models
    for weight_dtype in ("default", "fp8_e4m3fn"):
        unet = load_unet(root / "diffusion_models" / "tiny-zimage.safetensors", "u", weight_dtype=weight_dtype,
                         dtype="bfloat16")
        assert unet.dtype == torch.bfloat16 and {p.dtype for p in unet.unet.parameters()} == {torch.bfloat16}
    diff = np.abs(_render(root, tmp_path, "full", cfg=2.5) - _render(root, tmp_path, "half", cfg=2.5, dtype="bfloat16"))
    # measured on the 2-core development machine: at most 5 levels apart, 0.45 on average (PSNR 50.6 dB)
    assert 0 < diff.max() <= 16 and diff.mean() < 1.5, (diff.max(), diff.mean())


# published sizes: Z-Image Turbo's transformer 6,154,908,736 (the "6B"); Qwen3 4B 4,022,468,096 (embeddings tied)
TRANSFORMER_PARAMS, QWEN3_PARAMS = 6_154_908_736, 4_022_468_096


def test_full_size_layout_is_detected_and_mapped_on_the_meta_device():
    """z_image_turbo_bf16's original layout (fused qkv, bare keys) and diffusers', and qwen_3_4b (transformers'
    names under `model.`): detected, configured from shapes alone, built with the published sizes."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from flowrun.diffusion import text_zimage, zimage_files
    from flowrun.diffusion.configs import DEFAULTS, ZIMAGE, ZIMAGE_TRANSFORMER

    with torch.device("meta"):
        reference = ZImageTransformer2DModel(**ZIMAGE_TRANSFORMER)
        qwen3 = Qwen3Model(Qwen3Config(**DEFAULTS[ZIMAGE]["text_encoders"][0]))
    original = tiny_zimage.transformer_to_original(reference.state_dict())
    assert "layers.29.attention.qkv.weight" in original and zimage_files.layout(original) == "original"
    for state in (original, reference.state_dict(), {"model.diffusion_model." + k: v for k, v in original.items()}):
        config, transformer = zimage_files.build_transformer(state, "z_image_turbo_bf16.safetensors")
        assert config == ZIMAGE_TRANSFORMER
        assert sum(p.numel() for p in transformer.parameters()) == TRANSFORMER_PARAMS
    text = zimage_files.text_state({"model." + k: v for k, v in qwen3.state_dict().items()})
    assert text_zimage.is_qwen3(text) and text_zimage.config_from_state(text) == DEFAULTS[ZIMAGE]["text_encoders"][0]
    assert sum(p.numel() for p in text_zimage.build(text).parameters()) == QWEN3_PARAMS
    lumina = {k: v for k, v in original.items() if not k.endswith("pad_token")}  # Lumina 2's NextDiT
    with pytest.raises(Exception, match="a Lumina 2 transformer"):
        zimage_files.build_transformer(lumina, "lumina_2.safetensors")


def test_comfyui_zimage_graphs_import_validate_and_run(cli, tmp_path):
    """The hand-written Z-Image graph (UNETLoader + CLIPLoader lumina2 + VAELoader, ModelSamplingAuraFlow 3, cfg 1
    with ConditioningZeroOut as ComfyUI's Turbo template), UI and API format, on the toy model under the file names
    it carries: both import, validate and run to the same image."""
    from conftest import ROOT

    tiny_zimage.write_as_comfyui(tmp_path / "models")
    images = {}
    for form in ("api", "ui"):
        wf = tmp_path / f"{form}.yaml"
        assert cli("import", ROOT / "tests" / "comfyui" / f"zimage-split-{form}.json", "--out", wf).code == 0
        r = cli("validate", wf, "--models-dir", tmp_path / "models")
        assert r.code == 0, r.err
        r = cli("run", wf, "--models-dir", tmp_path / "models", "--out", tmp_path / form, "--device", "cpu")
        assert r.code == 0, r.err
        with Image.open(tmp_path / form / "zimage-split.png") as image:
            images[form] = np.asarray(image).astype(int)
    assert images["ui"].shape == (64, 64, 3) and images["ui"].std() > 10
    assert np.abs(images["ui"] - images["api"]).max() == 0
