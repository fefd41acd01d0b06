"""SD3 / SD3.5 on a toy-width model with seeded weights: a render through KSampler equals diffusers'
StableDiffusion3Pipeline on the same weights within one 8-bit level; split files (UNETLoader in both layouts,
TripleCLIPLoader in any order, VAELoader) give the single file's image; the text conditioning is ComfyUI's
(sd3_clip) with any encoder missing; the full-size layouts of SD3 medium, SD3.5 medium and SD3.5 large are
detected and mapped on the meta device with their published sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_sd3
from flowrun import api
from flowrun.settings import Settings

PROMPT, SEED, STEPS, CFG, SIZE = "a (blue:1.2) square", 7, 3, 4.0, 128
REST = """
  pos: {type: CLIPTextEncode, in: {clip: $CLIP}, with: {text: "a (blue:1.2) square"}}
  neg: {type: CLIPTextEncode, in: {clip: $CLIP}, with: {text: ""}}
  latent: {type: EmptySD3LatentImage, with: {width: 128, height: 128, batch_size: 1}}
  sample:
    type: KSampler
    in: {model: $MODEL, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 7, steps: 3, cfg: 4.0, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: $VAE}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""
SINGLE = "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sd3}}\n"
SPLIT = ("  unet: {type: UNETLoader, with: {unet_name: UNETFILE}}\n"
         "  clip: {type: TripleCLIPLoader, with: {clip_name1: tiny-sd3-t5xxl, clip_name2: tiny-sd3-clip-g, "
         "clip_name3: tiny-sd3-clip-l}}\n"
         "  vae: {type: VAELoader, with: {vae_name: tiny-sd3-vae}}\n")


@pytest.fixture(scope="module")
def sd3_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3-models")
    tiny_sd3.write(root)
    return root


def _render(models, tmp_path, loaders: str, wiring: dict, name: str) -> np.ndarray:
    text = "version: 1\nnodes:\n" + loaders + REST
    for placeholder, value in wiring.items():
        text = text.replace(f"${placeholder}", value)
    (tmp_path / f"{name}.yaml").write_text(text)
    settings = Settings(out_dir=tmp_path / name, use_cache=False, models_dirs=(str(models),), device="cpu")
    result = api.run(api.load(tmp_path / f"{name}.yaml"), settings)
    return np.asarray(Image.open(result.files[0])).astype(int)


def _single(models, tmp_path, name="single"):
    return _render(models, tmp_path, SINGLE, {"MODEL": "ckpt.model", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"}, name)


def test_render_matches_diffusers_sd3_pipeline(sd3_models, tmp_path):
    """CheckpointLoaderSimple + CLIPTextEncode + KSampler (euler, simple, shift 3.0 by default) and
    StableDiffusion3Pipeline with FlowMatchEulerDiscreteScheduler (shift 3.0, the same sigmas), the same
    embeddings, initial noise and cfg: within one 8-bit level."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from flowrun.diffusion import schedules
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.noise import initial_noise

    model, clip, _ = load_bundle(sd3_models / "checkpoints" / "tiny-sd3.safetensors", "fp")
    assert (model.sampling.shift, model.sampling.multiplier) == (3.0, 1000.0)
    pos, neg = encode(clip, PROMPT)[0], encode(clip, "")[0]
    assert pos.embedding.shape == (1, 77 + 77, 96) and pos.pooled_output.shape == (1, 80)
    sigmas = schedules.simple(model.sampling, STEPS)[:-1]
    times = sigmas / (3.0 - 2.0 * sigmas)  # the unshifted times: the scheduler shifts them again
    transformer, vae, *_ = tiny_sd3.build()
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    latents = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), SEED)
    theirs = pipe(prompt_embeds=pos.embedding, pooled_prompt_embeds=pos.pooled_output,
                  negative_prompt_embeds=neg.embedding, negative_pooled_prompt_embeds=neg.pooled_output,
                  height=SIZE, width=SIZE, sigmas=times.tolist(), guidance_scale=CFG, latents=latents,
                  output_type="np").images[0]
    assert np.allclose(pipe.scheduler.sigmas[:-1].numpy(), sigmas.numpy(), atol=1e-6)
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)  # as SaveImage makes 8-bit pixels
    ours = _single(sd3_models, tmp_path)
    assert np.abs(ours - theirs).max() <= 1, f"max difference {np.abs(ours - theirs).max()} levels"
    assert ours.std() > 10  # an image, not a flat field


def test_split_files_render_the_single_files_image(sd3_models, tmp_path):
    """UNETLoader (MMDiT and diffusers layouts), TripleCLIPLoader (T5, CLIP-G, CLIP-L: any order) and
    VAELoader give the single file's image."""
    whole = _single(sd3_models, tmp_path)
    wiring = {"MODEL": "unet", "CLIP": "clip", "VAE": "vae"}
    for unet in ("tiny-sd3-mmdit", "tiny-sd3-transformer"):
        split = _render(sd3_models, tmp_path, SPLIT.replace("UNETFILE", unet), wiring, unet)
        assert np.abs(split - whole).max() <= 1, unet


def _reference_text(prompt: str):
    """What ComfyUI's SD3ClipModel gives, computed from the toy encoders directly: CLIP-L's and CLIP-G's
    penultimate layers side by side, padded to T5's width, then T5's 77 tokens; pooled: CLIP-L's normed end
    token beside CLIP-G's projection."""
    from flowrun.diffusion import t5 as t5_text
    from flowrun.diffusion.checkpoint import tokenizer

    _, _, clip_l, clip_g, t5 = tiny_sd3.build()
    tok = tokenizer()
    ids_l = tok(prompt, padding="max_length", max_length=77)["input_ids"]
    ids_g = [t if i <= ids_l.index(49407) else 0 for i, t in enumerate(ids_l)]  # CLIP-G pads with 0
    with torch.no_grad():
        out_l = clip_l(input_ids=torch.tensor([ids_l]), output_hidden_states=True)
        out_g = clip_g(input_ids=torch.tensor([ids_g]), output_hidden_states=True)
        ids_t5 = [t for t, _ in t5_text.tokenize(prompt, 77)]
        z_t5 = t5(input_ids=torch.tensor([ids_t5])).last_hidden_state
    lg = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
    lg = torch.nn.functional.pad(lg, (0, 96 - 80))
    return torch.cat([lg, z_t5], dim=1), torch.cat([out_l.pooler_output, out_g.text_embeds], dim=-1), lg, z_t5


def test_text_conditioning_is_comfyuis_with_any_encoder_missing(sd3_models):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.sd3_text_files import load_text_encoders
    from flowrun.diffusion.text_sd3 import encode_sd3

    te = sd3_models / "text_encoders"
    files = {k: te / f"tiny-sd3-{k.replace('_', '-')}.safetensors" for k in ("clip_l", "clip_g", "t5xxl")}
    context, pooled, lg, z_t5 = _reference_text("a red circle")
    triple = load_text_encoders([files["t5xxl"], files["clip_g"], files["clip_l"]], ["a", "b", "c"])
    entry = encode(triple, "a red circle")[0]
    assert torch.allclose(entry.embedding, context, atol=1e-5)
    assert torch.allclose(entry.pooled_output, pooled, atol=1e-5)

    only_t5 = encode(load_text_encoders([files["t5xxl"]], ["t"]), "a red circle")[0]
    assert torch.allclose(only_t5.embedding, z_t5, atol=1e-5)  # no CLIP part: T5's tokens alone
    assert torch.equal(only_t5.pooled_output, torch.zeros(1, 80))
    clips = encode(load_text_encoders([files["clip_g"], files["clip_l"]], ["g", "l"]), "a red circle")[0]
    assert torch.allclose(clips.embedding, lg, atol=1e-5) and torch.allclose(clips.pooled_output, pooled, atol=1e-5)
    only_g = encode(load_text_encoders([files["clip_g"]], ["g"]), "a red circle")[0]
    assert torch.equal(only_g.embedding[..., :32], torch.zeros(1, 77, 32))  # CLIP-L's columns left zero
    assert torch.allclose(only_g.embedding[..., 32:80], lg[..., 32:80], atol=1e-5)
    assert torch.equal(only_g.pooled_output[:, :32], torch.zeros(1, 32))

    # CLIPTextEncodeSD3 with empty_padding none: an empty T5 prompt is its end token alone; empty CLIP prompts
    # leave the CLIP part out; with empty_prompt they are encoded
    none = encode_sd3(triple, "", "", "", empty_padding=False)[0]
    assert none.embedding.shape == (1, 1, 96) and torch.equal(none.pooled_output, torch.zeros(1, 80))
    padded = encode_sd3(triple, "", "", "", empty_padding=True)[0]
    assert torch.allclose(padded.embedding, _reference_text("")[0], atol=1e-5)
    mixed = encode_sd3(triple, "", "a red circle", "a red circle", empty_padding=False)[0]
    assert mixed.embedding.shape == (1, 154, 96)  # CLIP-L gets the empty prompt's chunk to match CLIP-G
    with pytest.raises(ValueError, match="embeddings are not supported for SD3 yet .*'embedding:sun'"):
        encode(triple, "a red circle, embedding:sun")
    last = encode(triple.with_layer(-1), "a red circle")[0].embedding  # CLIPSetLastLayer -1: the CLIPs' last
    assert torch.equal(last[:, 77:], entry.embedding[:, 77:])  # T5's part is the same
    assert not torch.allclose(last[:, :77], entry.embedding[:, :77])
    with pytest.raises(ValueError, match="CLIPSetLastLayer -2 on SD3 with T5 is not supported"):
        encode(triple.with_layer(-2), "a red circle")
    assert encode(load_text_encoders([files["clip_l"]], ["l"]).with_layer(-3), "a")[0].embedding.shape == (1, 77, 96)


def test_a_latent_off_the_patch_grid_is_padded_circularly_and_cropped(sd3_models):
    from flowrun.diffusion.components import load_unet

    model = load_unet(sd3_models / "diffusion_models" / "tiny-sd3-mmdit.safetensors", "fp")
    x = torch.randn(1, 16, 5, 7, generator=torch.Generator().manual_seed(1))
    context, pooled = torch.randn(1, 10, 96), torch.randn(1, 80)
    t = torch.tensor([500.0])
    out, = model.unet(x, t, encoder_hidden_states=context, added_cond_kwargs={"pooled_projections": pooled})
    padded = torch.cat([torch.cat([x, x[..., :1]], dim=-1), torch.cat([x, x[..., :1]], dim=-1)[..., :1, :]], dim=-2)
    with torch.no_grad():
        full = model.unet.transformer(hidden_states=padded, encoder_hidden_states=context, pooled_projections=pooled,
                                      timestep=t, return_dict=False)[0]
    assert out.shape == (1, 16, 5, 7) and torch.allclose(out, full[..., :5, :7])


# published sizes: the weights each file holds (parameters and the position table) and the parameters alone
FULL_SIZE = {"sd3 medium": (2_084_951_104, 2_028_328_000), "sd3.5 medium": (2_469_663_936, 2_243_171_520),
             "sd3.5 large": (8_146_280_768, 8_056_627_520)}


def _meta_single_file(name: str) -> dict:
    """The key layout of a full-size single file, on the meta device: the MMDiT under model.diffusion_model.,
    the VAE, CLIP-L, CLIP-G and T5-XXL as stabilityai's *_incl_clips_t5xxl files hold them."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from flowrun.diffusion.configs import _CLIP_L, _OPEN_CLIP_BIGG, _T5_XXL, _VAE_16, SD3_TRANSFORMERS
    from flowrun.diffusion.ldm_layout import vae_to_ldm, with_text_model_prefix

    config = SD3_TRANSFORMERS[name]
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**config)
        vae = AutoencoderKL(**_VAE_16)
        clip_l = CLIPTextModel(CLIPTextConfig(**_CLIP_L))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**_OPEN_CLIP_BIGG))
        t5 = T5EncoderModel(T5Config(**_T5_XXL, is_encoder_decoder=False))
    state = tiny_sd3.transformer_to_mmdit(transformer.state_dict(), config["num_layers"], "model.diffusion_model.")
    state.update(vae_to_ldm(vae.state_dict(), _VAE_16))
    for prefix, module in (("clip_l", clip_l), ("clip_g", clip_g)):
        state.update({f"text_encoders.{prefix}.transformer.{k}": v
                      for k, v in with_text_model_prefix(module.state_dict()).items()})
    state.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5.state_dict().items()
                  if k != "encoder.embed_tokens.weight"})
    return state


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_full_size_layouts_are_detected_and_mapped_on_the_meta_device(name):
    from flowrun.diffusion import sd3_files
    from flowrun.diffusion.checkpoint import load_state
    from flowrun.diffusion.configs import SD3_TRANSFORMERS

    state = _meta_single_file(name)
    config, network, texts, vae = load_state(state, "sd3.safetensors", None)
    assert config.family == "sd3" and sd3_files.variant(config.unet) == name
    assert config.unet == SD3_TRANSFORMERS[name]
    weights, params = FULL_SIZE[name]
    assert sum(v.numel() for v in network.transformer.state_dict().values()) == weights
    assert sum(p.numel() for p in network.transformer.parameters()) == params
    assert [sum(p.numel() for p in t.parameters()) for t in texts] == [123_060_480, 694_659_840, 4_762_310_656]
    assert sum(p.numel() for p in vae.parameters()) == 83_819_683
    # the transformer alone, as ComfyUI's split files: without the prefix, and in diffusers' layout
    bare = {k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    found, transformer = sd3_files.build_transformer(bare, "mmdit.safetensors")
    assert found == SD3_TRANSFORMERS[name]
    again, _ = sd3_files.build_transformer(transformer.state_dict(), "diffusion_pytorch_model.safetensors")
    assert again == SD3_TRANSFORMERS[name]


def test_comfyui_sd3_graphs_import_validate_and_run(cli, tmp_path):
    """The hand-written SD3 graphs (single file with CLIPTextEncodeSD3; UNETLoader + TripleCLIPLoader +
    VAELoader), UI and API format, on the toy model under the file names they carry: both import, validate
    and run; the split graph's image is the single file's read with one prompt (CLIPTextEncode)."""
    from conftest import ROOT

    tiny_sd3.write_as_comfyui(tmp_path / "models")
    images = {}
    for graph in ("sd3", "sd3-split"):
        for form in ("api", "ui"):
            wf = tmp_path / f"{graph}-{form}.yaml"
            assert cli("import", ROOT / "tests" / "comfyui" / f"{graph}-{form}.json", "--out", wf).code == 0
            r = cli("validate", wf, "--models-dir", tmp_path / "models")
            assert r.code == 0, r.err
        r = cli("run", tmp_path / f"{graph}-ui.yaml", "--models-dir", tmp_path / "models", "--out", tmp_path / graph,
                "--device", "cpu")
        assert r.code == 0, r.err
        with Image.open(tmp_path / graph / f"{graph}.png") as image:
            images[graph] = np.asarray(image).astype(int)
            assert "TripleCLIPLoader" in image.info["prompt"] or graph == "sd3"
    assert images["sd3"].shape == images["sd3-split"].shape == (128, 128, 3)
    assert np.abs(images["sd3"] - images["sd3-split"]).max() > 8  # CLIPTextEncodeSD3's three prompts tell


def _workflow(tmp_path, loaders: str, wiring: dict, latent: str | None = None):
    text = "version: 1\nnodes:\n" + loaders + REST
    if latent:
        text = text.replace("{type: EmptySD3LatentImage, with: {width: 128, height: 128, batch_size: 1}}", latent)
    for placeholder, value in wiring.items():
        text = text.replace(f"${placeholder}", value)
    (tmp_path / "wf.yaml").write_text(text)
    return tmp_path / "wf.yaml"


def test_a_t5_file_where_a_clip_is_expected_is_named_with_what_was_found(sd3_models, tiny_models, tmp_path, cli):
    import shutil

    shutil.copyfile(tiny_models / "checkpoints" / "tiny.safetensors", sd3_models / "checkpoints" / "tiny.safetensors")
    shutil.copyfile(tiny_models / "checkpoints" / "tiny.json", sd3_models / "checkpoints" / "tiny.json")
    wiring = {"MODEL": "ckpt.model", "CLIP": "clip", "VAE": "ckpt.vae"}
    sd1 = "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n"
    wf = _workflow(tmp_path, sd1 + "  clip: {type: CLIPLoader, with: {clip_name: tiny-sd3-t5xxl}}\n", wiring)
    r = cli("run", wf, "--models-dir", sd3_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "clip" in r.err and "CLIPLoader" in r.err, r.err
    assert "tiny-sd3-t5xxl.safetensors: a T5 text encoder (as SD3 and Flux read), not the CLIP text encoder" in r.err
    assert "CLIPLoader / DualCLIPLoader type sd3" in r.err

    sd3 = "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sd3}}\n"
    two_t5 = ("  clip: {type: TripleCLIPLoader, with: {clip_name1: tiny-sd3-clip-l, clip_name2: tiny-sd3-t5xxl, "
              "clip_name3: tiny-sd3-t5xxl-copy}}\n")
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(sd3_models / "text_encoders" / f"tiny-sd3-t5xxl{suffix}",
                        sd3_models / "text_encoders" / f"tiny-sd3-t5xxl-copy{suffix}")
    r = cli("run", _workflow(tmp_path, sd3 + two_t5, wiring), "--models-dir", sd3_models, "--no-cache",
            "--out", tmp_path / "o")
    assert r.code == 1 and "TripleCLIPLoader" in r.err, r.err
    assert ("clip_name2 (tiny-sd3-t5xxl.safetensors) and clip_name3 (tiny-sd3-t5xxl-copy.safetensors) are both "
            "T5-XXL text encoders") in r.err
    same = two_t5.replace("tiny-sd3-t5xxl-copy", "tiny-sd3-t5xxl")  # knowable before anything loads
    r = cli("validate", _workflow(tmp_path, sd3 + same, wiring), "--models-dir", sd3_models)
    assert r.code == 2 and "clip_name2 and clip_name3 name the same file 'tiny-sd3-t5xxl'" in r.err, r.err


def test_an_sd3_model_with_a_4_channel_latent_or_vae_is_refused(sd3_models, tiny_models, tmp_path, cli):
    import shutil

    for suffix in (".safetensors", ".json"):
        shutil.copyfile(tiny_models / "checkpoints" / f"tiny{suffix}", sd3_models / "checkpoints" / f"tiny{suffix}")
    loaders = ("  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sd3}}\n"
               "  sd1: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n")
    four = "{type: EmptyLatentImage, with: {width: 128, height: 128, batch_size: 1}}"
    wf = _workflow(tmp_path, loaders, {"MODEL": "ckpt.model", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"}, four)
    r = cli("run", wf, "--models-dir", sd3_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "sample" in r.err, r.err
    assert "input 'latent_image': the model denoises latents of 16 channels, this one has 4" in r.err
    wf = _workflow(tmp_path, loaders, {"MODEL": "ckpt.model", "CLIP": "ckpt.clip", "VAE": "sd1.vae"})
    r = cli("run", wf, "--models-dir", sd3_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "decode" in r.err, r.err
    assert "input 'vae': this VAE decodes latents of 4 channels, 'samples' has 16" in r.err


def test_a_checkpoint_without_text_encoders_says_so_at_the_prompt(sd3_models, tmp_path, cli):
    """stabilityai's sd3_medium.safetensors holds the transformer and VAE only: its CLIP encodes nothing."""
    from safetensors.torch import load_file

    state = load_file(str(sd3_models / "checkpoints" / "tiny-sd3.safetensors"))
    bare = {k: v for k, v in state.items() if not k.startswith("text_encoders.")}
    tiny_sd3.save(bare, sd3_models / "checkpoints" / "tiny-sd3-bare.safetensors", tiny_sd3.SIDECAR)
    wf = _workflow(tmp_path, "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sd3-bare}}\n",
                   {"MODEL": "ckpt.model", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"})
    r = cli("run", wf, "--models-dir", sd3_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "CLIPTextEncode" in r.err, r.err
    assert "tiny-sd3-bare.safetensors holds none of SD3's text encoders" in r.err and "TripleCLIPLoader" in r.err


def test_unet_patches_on_an_sd3_model_are_refused_by_name(sd3_models, tmp_path, cli):
    loaders = ("  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sd3}}\n"
               "  freeu: {type: FreeU, in: {model: ckpt.model}}\n")
    wf = _workflow(tmp_path, loaders, {"MODEL": "freeu", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"})
    r = cli("run", wf, "--models-dir", sd3_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "node 'freeu' (FreeU)" in r.err, r.err
    assert "input 'model': FreeU patches a UNet's blocks; this sd3 model is a transformer (DiT)" in r.err


def test_unet_loader_fp8_weight_dtype_rounds_the_mmdit(sd3_models):
    from flowrun.diffusion.components import load_unet

    path = sd3_models / "diffusion_models" / "tiny-sd3-mmdit.safetensors"
    plain, rounded = load_unet(path, "a"), load_unet(path, "b", weight_dtype="fp8_e4m3fn")
    a, b = plain.unet.transformer.state_dict(), rounded.unet.transformer.state_dict()
    assert rounded.dtype == torch.float32 and all(v.dtype == torch.float32 for v in b.values())
    assert all(torch.equal(b[k], a[k].to(torch.float8_e4m3fn).float()) for k in a)
    assert any(not torch.equal(b[k], a[k]) for k in a)
