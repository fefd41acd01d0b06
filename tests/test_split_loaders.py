"""Split loaders (UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader, CheckpointLoader, LoraLoaderModelOnly)
on the tiny SD1 and SDXL checkpoints cut into their parts: the same weights give the same image as
CheckpointLoaderSimple, whatever layout each part is saved in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from flowrun import api
from flowrun.settings import Settings

REST = """
  pos: {type: CLIPTextEncode, in: {clip: $CLIP}, with: {text: "a (blue:1.2) square"}}
  neg: {type: CLIPTextEncode, in: {clip: $CLIP}, with: {text: ""}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64, batch_size: 1}}
  sample:
    type: KSampler
    in: {model: $MODEL, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 3, steps: 2, cfg: 5.0, sampler_name: euler, scheduler: normal}
  decode: {type: VAEDecode, in: {samples: sample, vae: $VAE}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""


def _save(state: dict, path, sidecar: dict | None = None):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def split_models(tiny_models, tmp_path_factory):
    """The tiny SD1 checkpoint and a tiny SDXL one, each also cut into unet / vae / text-encoder files."""
    import tiny_model
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("split-models")
    shutil.copytree(tiny_models, root, dirs_exist_ok=True)
    ckpts = root / "checkpoints"
    sd1 = load_file(str(ckpts / "tiny.safetensors"))
    side = json.loads((ckpts / "tiny.json").read_text())
    _save(_part(sd1, "model.diffusion_model."), root / "diffusion_models" / "tiny-unet.safetensors", side)
    fp8 = {k: v.to(__import__("torch").float8_e4m3fn) for k, v in _part(sd1, "model.diffusion_model.").items()}
    _save(fp8, root / "unet" / "tiny-unet-fp8.safetensors", side)  # the older folder name, fp8 weights
    _save(_part(sd1, "first_stage_model."), root / "vae" / "tiny-vae-ldm.safetensors", side)
    vae_diffusers = load_file(str(ckpts / "tiny-diffusers" / "vae" / "diffusion_pytorch_model.safetensors"))
    _save(vae_diffusers, root / "vae" / "tiny-vae-diffusers.safetensors", side)
    _save(_part(sd1, "cond_stage_model.transformer."), root / "clip" / "tiny-clip.safetensors", side)

    tiny_model.write_family(root, "sdxl")
    xl = load_file(str(ckpts / "tiny-sdxl.safetensors"))
    xside = json.loads((ckpts / "tiny-sdxl.json").read_text())
    _save(_part(xl, "model.diffusion_model."), root / "diffusion_models" / "tiny-xl-unet.safetensors", xside)
    _save(_part(xl, "first_stage_model."), root / "vae" / "tiny-xl-vae.safetensors", xside)
    cfg_l, cfg_g = xside["text_encoders"]
    _save(_part(xl, "conditioner.embedders.0.transformer."), root / "text_encoders" / "tiny-xl-clip-l.safetensors",
          {"family": "sdxl", "text_encoders": [cfg_l]})
    _save(_part(xl, "conditioner.embedders.1.model."), root / "text_encoders" / "tiny-xl-clip-g.safetensors",
          {"family": "sdxl", "text_encoders": [cfg_g]})

    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    wide = {**tiny_model.TINY_VAE, "latent_channels": 8}
    _save(AutoencoderKL(**wide).state_dict(), root / "vae" / "tiny-vae-8ch.safetensors", {**side, "vae": wide})
    (root / "configs").mkdir()
    (root / "configs" / "tiny-eps.yaml").write_text("model:\n  params:\n    unet_config:\n      params: {context_dim: 32}\n")
    (root / "configs" / "v1-inference.yaml").write_text("model:\n  params:\n    unet_config:\n      params: {context_dim: 768}\n")
    return root


def _run(loaders: str, wiring: dict, models, tmp_path, name: str) -> np.ndarray:
    text = "version: 1\nnodes:\n" + loaders + REST
    for placeholder, value in wiring.items():
        text = text.replace(f"${placeholder}", value)
    (tmp_path / f"{name}.yaml").write_text(text)
    settings = Settings(out_dir=tmp_path / name, use_cache=False, models_dirs=(str(models),), device="cpu")
    result = api.run(api.load(tmp_path / f"{name}.yaml"), settings)
    return np.asarray(Image.open(result.files[0]))


WHOLE = ("  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: NAME}}\n",
         {"MODEL": "ckpt.model", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"})
SPLIT = {"MODEL": "unet", "CLIP": "clip", "VAE": "vae"}


def test_sd1_parts_give_the_checkpoint_image(split_models, tmp_path):
    whole = _run(WHOLE[0].replace("NAME", "tiny"), WHOLE[1], split_models, tmp_path, "whole")
    for vae in ("tiny-vae-ldm", "tiny-vae-diffusers"):
        loaders = ("  unet: {type: UNETLoader, with: {unet_name: tiny-unet}}\n"
                   "  clip: {type: CLIPLoader, with: {clip_name: tiny-clip, type: stable_diffusion}}\n"
                   f"  vae: {{type: VAELoader, with: {{vae_name: {vae}}}}}\n")
        assert np.array_equal(_run(loaders, SPLIT, split_models, tmp_path, vae), whole), vae


def test_sdxl_parts_give_the_checkpoint_image(split_models, tmp_path):
    whole = _run(WHOLE[0].replace("NAME", "tiny-sdxl"), WHOLE[1], split_models, tmp_path, "whole")
    loaders = ("  unet: {type: UNETLoader, with: {unet_name: tiny-xl-unet}}\n"  # G named first: order is free
               "  clip: {type: DualCLIPLoader, with: {clip_name1: tiny-xl-clip-g, clip_name2: tiny-xl-clip-l, type: sdxl}}\n"
               "  vae: {type: VAELoader, with: {vae_name: tiny-xl-vae}}\n")
    assert np.array_equal(_run(loaders, SPLIT, split_models, tmp_path, "split"), whole)


def test_fp8_weights_round_as_comfyui_stores_them(split_models, tmp_path):
    loaders = ("  unet: {type: UNETLoader, with: {unet_name: $UNET, weight_dtype: $DTYPE}}\n"
               "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n")
    wiring = {"MODEL": "unet", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"}
    full = _run(loaders.replace("$UNET", "tiny-unet").replace("$DTYPE", "default"), wiring, split_models, tmp_path, "a")
    rounded = _run(loaders.replace("$UNET", "tiny-unet").replace("$DTYPE", "fp8_e4m3fn"), wiring, split_models, tmp_path, "b")
    from_file = _run(loaders.replace("$UNET", "tiny-unet-fp8").replace("$DTYPE", "default"), wiring, split_models,
                     tmp_path, "c")
    assert np.array_equal(rounded, from_file)  # an fp8 file upcasts to the numbers fp8 rounding gives
    assert not np.array_equal(full, rounded)
    assert np.abs(full.astype(int) - rounded.astype(int)).mean() < 20


def test_lora_model_only_is_the_lora_without_its_text_part(split_models, tmp_path):
    ckpt = "  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n"
    both = ckpt + ("  lora: {type: LoraLoader, in: {model: ckpt.model, clip: ckpt.clip},"
                   " with: {lora_name: flowrun-tiny-night, strength_model: 0.8, strength_clip: 0.0}}\n")
    only = ckpt + ("  lora: {type: LoraLoaderModelOnly, in: {model: ckpt.model},"
                   " with: {lora_name: flowrun-tiny-night, strength_model: 0.8}}\n")
    a = _run(both, {"MODEL": "lora.model", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"}, split_models, tmp_path, "a")
    b = _run(only, {"MODEL": "lora", "CLIP": "ckpt.clip", "VAE": "ckpt.vae"}, split_models, tmp_path, "b")
    plain = _run(ckpt, WHOLE[1], split_models, tmp_path, "c")
    assert np.array_equal(a, b) and not np.array_equal(a, plain)


def test_checkpoint_loader_reads_its_config(split_models, tmp_path):
    loaders = "  ckpt: {type: CheckpointLoader, with: {config_name: CONFIG, ckpt_name: tiny}}\n"
    whole = _run(WHOLE[0].replace("NAME", "tiny"), WHOLE[1], split_models, tmp_path, "whole")
    assert np.array_equal(_run(loaders.replace("CONFIG", "tiny-eps.yaml"), WHOLE[1], split_models, tmp_path, "c"), whole)
    from flowrun.errors import RunFailed

    with pytest.raises(RunFailed, match="says context_dim 768, the checkpoint's UNet has 32"):
        _run(loaders.replace("CONFIG", "v1-inference.yaml"), WHOLE[1], split_models, tmp_path, "d")


def test_a_vae_of_another_family_is_refused_naming_node_and_input(split_models, tmp_path, cli):
    loaders = ("  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}\n"
               "  vae: {type: VAELoader, with: {vae_name: tiny-vae-8ch}}\n")
    text = "version: 1\nnodes:\n" + loaders + REST
    text = text.replace("$MODEL", "ckpt.model").replace("$CLIP", "ckpt.clip").replace("$VAE", "vae")
    (tmp_path / "wf.yaml").write_text(text)
    r = cli("run", tmp_path / "wf.yaml", "--models-dir", split_models, "--no-cache", "--out", tmp_path / "o")
    assert r.code == 1 and "decode" in r.err
    assert "input 'vae': this VAE decodes latents of 8 channels, 'samples' has 4" in r.err, r.err


def test_validate_reports_missing_parts_in_their_folders(split_models, tmp_path, cli):
    loaders = ("  unet: {type: UNETLoader, with: {unet_name: nope-unet}}\n"
               "  clip: {type: DualCLIPLoader, with: {clip_name1: tiny-xl-clip-l, clip_name2: nope-g}}\n"
               "  vae: {type: VAELoader, with: {vae_name: tiny-vae-ldm}}\n")
    text = ("version: 1\nnodes:\n" + loaders + REST).replace("$MODEL", "unet").replace("$CLIP", "clip") \
        .replace("$VAE", "vae")
    (tmp_path / "wf.yaml").write_text(text)
    r = cli("validate", tmp_path / "wf.yaml", "--models-dir", split_models)
    assert r.code == 2 and r.err.count("error[file]") == 2, r.err
    assert "no diffusion_model named 'nope-unet'" in r.err and "unet" in r.err and "tiny-unet" in r.err
    assert "no text_encoder named 'nope-g'" in r.err and "tiny-clip" in r.err  # clip/ is searched too


def test_parts_in_the_wrong_place_say_what_they_are(split_models):
    from flowrun.diffusion.components import load_text_encoders, load_unet, load_vae
    from flowrun.diffusion.detect import CheckpointError

    clip = split_models / "clip" / "tiny-clip.safetensors"
    with pytest.raises(CheckpointError, match="not a VAE: expected 'encoder.\\*' and 'decoder.\\*' weights"):
        load_vae(clip, "x")
    with pytest.raises(CheckpointError, match="not a UNet: expected 'input_blocks.\\*'"):
        load_unet(clip, "x")
    with pytest.raises(CheckpointError, match="not a CLIP text encoder"):
        load_text_encoders([split_models / "vae" / "tiny-vae-ldm.safetensors"], ["x"], "stable_diffusion")
    with pytest.raises(CheckpointError, match="type stable_diffusion takes SD1's CLIP-L or SD2's OpenCLIP-H"):
        load_text_encoders([split_models / "text_encoders" / "tiny-xl-clip-g.safetensors"], ["x"], "stable_diffusion")


def test_latents_of_another_width_are_refused_by_the_sampler(tiny_bundle):
    import torch

    from flowrun.diffusion.ksampler import ksample_batch
    from flowrun.diffusion.noise import SeedNoise
    from flowrun.values import Latent

    model = tiny_bundle[0]
    with pytest.raises(ValueError, match="input 'latent_image': the model denoises latents of 4 channels, this one has 8"):
        ksample_batch(model, noise=SeedNoise([0]), cfgs=[1.0], steps=1, sampler_name="euler", scheduler="normal",
                      positive=(), negative=(), latent=Latent(torch.zeros(1, 8, 8, 8)))
