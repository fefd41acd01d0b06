"""AuraFlow on a toy-width model with seeded weights: a render through KSampler equals diffusers' AuraFlowPipeline
on the same weights within one 8-bit level; split files (UNETLoader in both layouts, CLIPLoader, VAELoader) give
the single file's image; the text conditioning is ComfyUI's (aura_t5: Pile-T5, masked and zeroed after the end
token); positions off diffusers' grid are read as ComfyUI reads them; the full-size layout of aura_flow_0.3 is
detected and mapped on the meta device with its published size; a CLIP of another family is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_auraflow
from flowrun import api
from flowrun.settings import Settings

PROMPT, SEED, STEPS, CFG, SIZE, SHIFT = "a (blue:1.2) square", 7, 3, 3.5, 128, 1.73
REST = """
  pos: {type: CLIPTextEncode, in: {clip: $CLIP}, with: {text: "a (blue:1.2) square"}}
  neg: {type: CLIPTextEncode, in: {clip: $CLIP}, with: {text: ""}}
  latent: {type: EmptyLatentImage, with: {width: 128, height: 128, batch_size: 1}}
  sample:
    type: KSampler
    in: {model: $MODEL, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 7, steps: 3, cfg: 3.5, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: $VAE}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""
SINGLE = "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-auraflow}}\n"
SPLIT = ("  unet: {type: UNETLoader, with: {unet_name: UNETFILE}}\n"
         "  clip: {type: CLIPLoader, with: {clip_name: tiny-auraflow-pile-t5, type: stable_diffusion}}\n"
         "  vae: {type: VAELoader, with: {vae_name: tiny-auraflow-vae}}\n")


@pytest.fixture(scope="module")
def aura_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("auraflow-models")
    tiny_auraflow.write(root)
    return root


def _render(models, tmp_path, loaders: str, wiring: dict, name: str, dtype: str | None = None) -> np.ndarray:
    text = "version: 1\nnodes:\n" + loaders + REST
    for placeholder, value in wiring.items():
        text = text.replace(f"${placeholder}", value)
    (tmp_path / f"{name}.yaml").write_text(text)
    settings = Settings(out_dir=tmp_path / name, use_cache=False, models_dirs=(str(models),), device="cpu",
                        dtype=dtype)
    result = api.run(api.load(tmp_path / f"{name}.yaml"), settings)
    return np.asarray(Image.open(result.files[0])).astype(int)


def _single(models, tmp_path, name="single", dtype: str | None = None):
    return _render(models, tmp_path, SINGLE, {"MODEL": "ckpt.model", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"}, name,
                   dtype)


def test_bfloat16_run_holds_the_transformer_in_bfloat16(aura_models, tmp_path):
    """--dtype bfloat16 (precision.py's one rule): the transformer of a checkpoint (built on first use) and of a
    UNETLoader file, fp8-rounded or not, in bfloat16; the VAE and Pile-T5 in float32 on the CPU; the render stays
    close to the float32 one."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.components import load_unet
    from flowrun.diffusion.lazy import is_built

    def dtypes(module):
        return {p.dtype for p in module.parameters()}

    model, clip, vae = load_bundle(aura_models / "checkpoints" / "tiny-auraflow.safetensors", "t", dtype="bfloat16")
    assert not is_built(model, "unet") and not is_built(clip, "models")
    assert model.dtype == torch.bfloat16 and dtypes(model.unet) == {torch.bfloat16}
    assert dtypes(clip.models[0]) == dtypes(vae.model) == {torch.float32}
    file = aura_models / "diffusion_models" / "tiny-auraflow-transformer.safetensors"
    for weight_dtype in ("default", "fp8_e4m3fn"):
        unet = load_unet(file, "u", weight_dtype=weight_dtype, dtype="bfloat16")
        assert unet.dtype == torch.bfloat16 and dtypes(unet.unet) == {torch.bfloat16}
    diff = np.abs(_single(aura_models, tmp_path, "full") - _single(aura_models, tmp_path, "half", "bfloat16"))
    # measured on the 2-core development machine: at most 2 levels apart, 0.22 on average (PSNR 54.6 dB)
    assert 0 < diff.max() <= 8 and diff.mean() < 0.6, (diff.max(), diff.mean())


def test_render_matches_diffusers_auraflow_pipeline(aura_models, tmp_path):
    """CheckpointLoaderSimple + CLIPTextEncode + KSampler (euler, simple, shift 1.73 by default) and AuraFlowPipeline
    with FlowMatchEulerDiscreteScheduler (shift 1.73, the same sigmas), the same embeddings, initial noise and
    cfg: within one 8-bit level."""
    from diffusers import AuraFlowPipeline, FlowMatchEulerDiscreteScheduler

    from flowrun.diffusion import schedules
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.noise import initial_noise

    model, clip, _ = load_bundle(aura_models / "checkpoints" / "tiny-auraflow.safetensors", "fp")
    assert (model.family, model.sampling.shift, model.sampling.multiplier) == ("auraflow", SHIFT, 1.0)
    pos, neg = encode(clip, PROMPT)[0].embedding, encode(clip, "")[0].embedding
    assert pos.shape == neg.shape == (1, 256, 48)
    sigmas = schedules.simple(model.sampling, STEPS)[:-1]
    times = sigmas / (SHIFT - (SHIFT - 1.0) * sigmas)  # the unshifted times: the scheduler shifts them again
    transformer, vae, _ = tiny_auraflow.build()
    pipe = AuraFlowPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    pipe.set_progress_bar_config(disable=True)
    latents = initial_noise(torch.zeros(1, 4, SIZE // 8, SIZE // 8), SEED)
    mask = torch.ones(1, 256)
    theirs = pipe(prompt_embeds=pos, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                  negative_prompt_attention_mask=mask, height=SIZE, width=SIZE, sigmas=times.tolist(),
                  guidance_scale=CFG, latents=latents, output_type="np").images[0]
    assert np.allclose(pipe.scheduler.sigmas[:-1].numpy(), sigmas.numpy(), atol=1e-6)
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)  # as SaveImage makes 8-bit pixels
    ours = _single(aura_models, tmp_path)
    assert np.abs(ours - theirs).max() <= 1, f"max difference {np.abs(ours - theirs).max()} levels"
    assert ours.std() > 10  # an image, not a flat field


def test_split_files_render_the_single_files_image(aura_models, tmp_path):
    """UNETLoader (fal's and diffusers' layouts), CLIPLoader (Pile-T5 told from its weights, whatever the type)
    and VAELoader give the single file's image."""
    whole = _single(aura_models, tmp_path)
    wiring = {"MODEL": "unet", "CLIP": "clip", "VAE": "vae"}
    for unet in ("tiny-auraflow-fal", "tiny-auraflow-transformer"):
        split = _render(aura_models, tmp_path, SPLIT.replace("UNETFILE", unet), wiring, unet)
        assert np.abs(split - whole).max() <= 1, unet


def test_text_conditioning_is_comfyuis(aura_models):
    """Pile-T5's SentencePiece pieces word by word, end token 2, padding 1 to 256; the encoder reads up to the
    end token and the rest is zero; a weight moves a token away from the empty prompt's."""
    from flowrun.diffusion import text_auraflow
    from flowrun.diffusion.auraflow_files import load_text_encoder
    from flowrun.diffusion.clip import encode

    tokens = text_auraflow.tokenize("a red circle")
    assert [t for t, _ in tokens[:4]] == [263, 2654, 8607, 2] and len(tokens) == 256
    assert {t for t, _ in tokens[4:]} == {1}
    assert len(text_auraflow.tokenize("word " * 300)) == 301  # never cut
    clip = load_text_encoder(aura_models / "text_encoders" / "tiny-auraflow-pile-t5.safetensors", "fp")
    entry = encode(clip, "a red circle")[0]
    _, _, pile_t5 = tiny_auraflow.build()
    ids = torch.tensor([[263, 2654, 8607, 2] + [1] * 252])
    mask = (torch.arange(256) < 4).long()[None]
    with torch.no_grad():
        reference = pile_t5(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    assert torch.allclose(entry.embedding, reference, atol=1e-5)
    assert entry.embedding[0, 4:].abs().max() == 0 and entry.embedding[0, :4].abs().min() > 0
    assert entry.pooled_output is None
    empty = encode(clip, "")[0].embedding
    weighted = encode(clip, "a (red:1.5) circle")[0].embedding
    assert torch.allclose(weighted[0, 1], (entry.embedding[0, 1] - empty[0, 1]) * 1.5 + empty[0, 1], atol=1e-5)
    assert torch.allclose(weighted[0, 0], entry.embedding[0, 0], atol=1e-5)
    # CLIPSetLastLayer -2: the layer before the last, through the final norm (ComfyUI's T5); beyond the depth: last
    with torch.no_grad():
        out = pile_t5(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        penultimate = pile_t5.encoder.final_layer_norm(out.hidden_states[-2]) * mask[..., None]
    assert torch.allclose(encode(clip.with_layer(-2), "a red circle")[0].embedding, penultimate, atol=1e-5)
    assert not torch.allclose(penultimate, reference, atol=1e-3)
    assert torch.equal(encode(clip.with_layer(-3), "a red circle")[0].embedding, entry.embedding)


def test_positions_off_diffusers_grid_are_comfyuis_and_odd_sizes_are_padded(aura_models):
    """An odd number of patches reads the position table from (side - n) // 2 as ComfyUI does (diffusers is
    one row further); a latent larger than the table stretches it; one off the patch grid is padded circularly
    and cropped back."""
    from flowrun.diffusion.auraflow_network import comfy_positions
    from flowrun.diffusion.components import load_unet

    model = load_unet(aura_models / "diffusion_models" / "tiny-auraflow-fal.safetensors", "fp")
    embed = model.unet.transformer.pos_embed
    table = embed.pos_embed.detach()
    grid = table.reshape(16, 16, -1)
    assert torch.equal(comfy_positions(table, 3, 5)[0], grid[6:9, 5:10].reshape(15, -1))
    assert torch.equal(comfy_positions(table, 4, 4)[0], table[0, embed.pe_selection_index_based_on_dim(8, 8)])
    assert comfy_positions(table, 20, 18).shape == (1, 360, 32)  # stretched to 20 x 20, its centre
    x = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(1))
    context, t = torch.randn(1, 10, 48), torch.tensor([0.5])
    out, = model.unet(x, t, encoder_hidden_states=context)
    padded = torch.cat([torch.cat([x, x[..., :1]], dim=-1), torch.cat([x, x[..., :1]], dim=-1)[..., :1, :]], dim=-2)
    with torch.no_grad():
        full = model.unet.transformer(hidden_states=padded, encoder_hidden_states=context, timestep=t,
                                      return_dict=False)[0]
    assert out.shape == (1, 4, 5, 7) and torch.allclose(out, full[..., :5, :7])


def test_a_clip_of_another_family_is_refused_by_name(aura_models, tmp_path, tiny_models):
    """An SD1 CLIP's conditioning given to AuraFlow: KSampler's error names the input and the widths; a T5-XXL
    (SD3's, Flux's) file given where AuraFlow's Pile-T5 is read is named as what it is."""
    import tiny_sd3

    from flowrun.diffusion.auraflow_files import load_text_encoder
    from flowrun.diffusion.detect import CheckpointError

    loaders = SINGLE + "  sd1: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n"
    text = "version: 1\nnodes:\n" + loaders + REST.replace("$MODEL", "ckpt.model").replace("$CLIP", "sd1.clip")
    text = text.replace("$VAE", "ckpt.vae")
    (tmp_path / "wrong.yaml").write_text(text)
    settings = Settings(out_dir=tmp_path / "wrong", use_cache=False, models_dirs=(str(aura_models), str(tiny_models)),
                        device="cpu")
    with pytest.raises(Exception) as err:
        api.run(api.load(tmp_path / "wrong.yaml"), settings)
    message = str(err.value)
    assert "input 'positive'" in message and "48-wide Pile-T5" in message and "32 wide" in message, message
    t5_files = tiny_sd3.write(tmp_path / "sd3")
    with pytest.raises(CheckpointError, match="T5 v1.1 encoder \\(SD3's and Flux's T5-XXL\\)"):
        load_text_encoder(t5_files["t5xxl"], "fp")


def test_comfyui_auraflow_graphs_import_validate_and_run(cli, tmp_path):
    """The hand-written AuraFlow graphs (fal's single file; UNETLoader + CLIPLoader + VAELoader), UI and API format,
    on the toy model under the file names they carry: both import, validate and run to the same image."""
    from conftest import ROOT

    tiny_auraflow.write_as_comfyui(tmp_path / "models")
    images = {}
    for graph in ("auraflow", "auraflow-split"):
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
            assert ("CLIPLoader" in image.info["prompt"]) == (graph == "auraflow-split")
    assert images["auraflow"].shape == (128, 128, 3) and images["auraflow"].std() > 10
    assert np.abs(images["auraflow"] - images["auraflow-split"]).max() <= 1


def test_a_checkpoint_without_its_text_encoder_says_so_at_the_prompt(aura_models, tmp_path, cli):
    """A single file with the transformer and VAE only: its CLIP encodes nothing, the prompt node says why."""
    from safetensors.torch import load_file

    state = load_file(str(aura_models / "checkpoints" / "tiny-auraflow.safetensors"))
    bare = {k: v for k, v in state.items() if not k.startswith("text_encoders.")}
    tiny_auraflow.save(bare, aura_models / "checkpoints" / "tiny-auraflow-bare.safetensors", tiny_auraflow.SIDECAR)
    text = "version: 1\nnodes:\n" + SINGLE.replace("tiny-auraflow", "tiny-auraflow-bare") + REST
    (tmp_path / "bare.yaml").write_text(text.replace("$MODEL", "ckpt.model").replace("$CLIP", "ckpt.clip")
                                        .replace("$VAE", "ckpt.vae"))
    r = cli("run", tmp_path / "bare.yaml", "--models-dir", aura_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "CLIPTextEncode" in r.err, r.err
    assert "tiny-auraflow-bare.safetensors holds no Pile-T5 text encoder" in r.err and "CLIPLoader" in r.err


# published size: AuraFlow 0.3 is "6.8B"; the Pile-T5 XL encoder and SDXL's VAE beside it in the single file
TRANSFORMER_PARAMS, PILE_T5_PARAMS, VAE_PARAMS = 6_858_605_568, 1_223_550_976, 83_653_863


def _meta_single_file() -> dict:
    """The key layout of aura_flow_0.3.safetensors on the meta device: fal's transformer under `model.`, SDXL's VAE
    under `vae.`, Pile-T5 XL under `text_encoders.pile_t5xl.transformer.`."""
    from diffusers import AuraFlowTransformer2DModel, AutoencoderKL
    from transformers import UMT5Config, UMT5EncoderModel

    from flowrun.diffusion.configs import AURAFLOW, AURAFLOW_TRANSFORMER, DEFAULTS, _PILE_T5_XL
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    vae_config = DEFAULTS[AURAFLOW]["vae"]
    with torch.device("meta"):
        transformer = AuraFlowTransformer2DModel(**AURAFLOW_TRANSFORMER)
        vae = AutoencoderKL(**vae_config)
        pile_t5 = UMT5EncoderModel(UMT5Config(**_PILE_T5_XL, is_encoder_decoder=False))
    state = tiny_auraflow.transformer_to_fal(transformer.state_dict(), "model.")
    ldm_vae = vae_to_ldm(vae.state_dict(), vae_config)
    state.update({"vae." + k[len("first_stage_model."):]: v for k, v in ldm_vae.items()})
    state.update({"text_encoders.pile_t5xl.transformer." + k: v for k, v in pile_t5.state_dict().items()
                  if k != "encoder.embed_tokens.weight"})
    return state


def test_full_size_layout_is_detected_and_mapped_on_the_meta_device():
    from flowrun.diffusion import auraflow_files
    from flowrun.diffusion.checkpoint import load_state
    from flowrun.diffusion.configs import AURAFLOW_TRANSFORMER

    state = _meta_single_file()
    config, network, texts, vae = load_state(state, "aura_flow_0.3.safetensors", None)
    assert config.family == "auraflow" and config.unet == AURAFLOW_TRANSFORMER
    assert sum(p.numel() for p in network.transformer.parameters()) == TRANSFORMER_PARAMS
    assert [sum(p.numel() for p in t.parameters()) for t in texts] == [PILE_T5_PARAMS]
    assert sum(p.numel() for p in vae.parameters()) == VAE_PARAMS
    # the transformer alone, as a split file: bare, and in diffusers' layout
    bare = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    found, transformer = auraflow_files.build_transformer(bare, "aura_flow_0.3_transformer.safetensors")
    assert found == AURAFLOW_TRANSFORMER
    again, _ = auraflow_files.build_transformer(transformer.state_dict(), "diffusion_pytorch_model.safetensors")
    assert again == AURAFLOW_TRANSFORMER
