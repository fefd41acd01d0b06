"""SDXL as people use it: refiner checkpoints (full-size layout checked on the meta device), the
CLIPTextEncodeSDXL / CLIPTextEncodeSDXLRefiner nodes and the time ids they set, and a tiny base + refiner
pair rendered end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowrun import api
from flowrun.diffusion.configs import SDXL_REFINER, ModelConfig
from flowrun.settings import Settings

# Stability's sd_xl_refiner.yaml, the network part (what diffusers' single-file loader reads)
REFINER_LDM = {"model": {"params": {"network_config": {"params": {
    "adm_in_channels": 2560, "num_classes": "sequential", "in_channels": 4, "out_channels": 4, "model_channels": 384,
    "attention_resolutions": [4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_head_channels": 64,
    "use_linear_in_transformer": True, "transformer_depth": 4, "context_dim": [1280, 1280, 1280, 1280]}},
    "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}


def test_full_size_refiner_layout_detects_and_maps():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    from flowrun.diffusion.checkpoint import _text_model, load_state
    from flowrun.diffusion.detect import detect
    from flowrun.diffusion.ldm_layout import open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    cfg = ModelConfig.default(SDXL_REFINER)
    theirs = create_unet_diffusers_config_from_ldm(REFINER_LDM, {})
    theirs.pop("sample_size")  # a default of the converter's, not part of the layout
    assert {k: cfg.unet[k] for k in theirs if k in cfg.unet} == {k: theirs[k] for k in theirs if k in cfg.unet}
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**cfg.unet), AutoencoderKL(**cfg.vae)
        text = _text_model(cfg.text_encoders[0], True)
    state = {**unet_to_ldm(unet.state_dict(), cfg.unet), **vae_to_ldm(vae.state_dict(), cfg.vae),
             **open_clip_to_ldm(text.state_dict(), "conditioner.embedders.0.model.")}
    assert "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias" in state  # diffusers' refiner probe
    found = detect({k: tuple(v.shape) for k, v in state.items()}, "refiner.safetensors")
    assert (found.family, found.context_dim) == (SDXL_REFINER, 1280)
    config, unet, texts, vae = load_state(state, Path("refiner.safetensors"), None)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 2260
    assert [t.config.num_hidden_layers for t in texts] == [32] and texts[0].config.hidden_size == 1280


@pytest.fixture(scope="module")
def xl_pair(tmp_path_factory):
    import tiny_model

    root = tmp_path_factory.mktemp("xl-pair")
    tiny_model.write_family(root, "sdxl")
    tiny_model.write_family(root, "sdxl_refiner", seed=1)
    return root


def test_time_ids_from_the_sdxl_nodes(xl_pair):
    from flowrun.diffusion import guidance
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import encode, encode_refiner, encode_sdxl

    base = load_bundle(xl_pair / "checkpoints" / "tiny-sdxl.safetensors", "xl")
    sizes = {"width": 640, "height": 512, "crop_w": 8, "crop_h": 16, "target_width": 1024, "target_height": 768}
    cond = encode_sdxl(base[1], "a square", "a square", sizes)
    latent = torch.zeros(1, 4, 8, 8)
    (entry,) = guidance.prepare(base[0], cond, latent, True)
    assert entry.added["time_ids"].tolist() == [[512, 640, 16, 8, 768, 1024]]
    plain = encode(base[1], "a square")  # the same prompt for both encoders is CLIPTextEncode's embedding
    assert torch.equal(plain[0].embedding, cond[0].embedding)
    (entry,) = guidance.prepare(base[0], plain, latent, True)
    assert entry.added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]  # the latent's size, as ComfyUI
    long_l = encode_sdxl(base[1], "short", " ".join(["word"] * 100))  # 2 chunks for L: G padded to match
    assert long_l[0].embedding.shape == (1, 154, 80)

    refiner = load_bundle(xl_pair / "checkpoints" / "tiny-sdxl_refiner.safetensors", "refiner")
    pos = encode_refiner(refiner[1], "a square", {"aesthetic_score": 7.5, "width": 640, "height": 512})
    (entry,) = guidance.prepare(refiner[0], pos, latent, True)
    assert entry.added["time_ids"].tolist() == [[512, 640, 0, 0, 7.5]]
    for positive, score in ((True, 6.0), (False, 2.5)):  # ComfyUI's defaults without the refiner node
        (entry,) = guidance.prepare(refiner[0], encode(refiner[1], "x"), latent, positive)
        assert entry.added["time_ids"].tolist() == [[64, 64, 0, 0, score]]
    with pytest.raises(ValueError, match="input 'clip': text_g and text_l are for SDXL's two text encoders; "
                                         "this CLIP is sdxl_refiner"):
        encode_sdxl(refiner[1], "a", "b")


PAIR = """\
version: 1
params: {ascore: 6.0}
nodes:
  base: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sdxl}}
  refiner: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sdxl_refiner}}
  pos: {type: CLIPTextEncodeSDXL, in: {clip: base.clip},
        with: {width: 64, height: 64, target_width: 64, target_height: 64, text_g: a red circle, text_l: a red circle}}
  neg: {type: CLIPTextEncodeSDXL, in: {clip: base.clip}, with: {width: 64, height: 64, target_width: 64, target_height: 64}}
  rpos: {type: CLIPTextEncodeSDXLRefiner, in: {clip: refiner.clip}, with: {ascore: "{{ ascore }}", width: 64, height: 64, text: a red circle}}
  rneg: {type: CLIPTextEncodeSDXLRefiner, in: {clip: refiner.clip}, with: {ascore: 2.5, width: 64, height: 64}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64, batch_size: 1}}
  first:
    type: KSamplerAdvanced
    in: {model: base.model, positive: pos, negative: neg, latent_image: latent}
    with: {noise_seed: 5, steps: 4, cfg: 5.0, end_at_step: 3, return_with_leftover_noise: enable}
  second:
    type: KSamplerAdvanced
    in: {model: refiner.model, positive: rpos, negative: rneg, latent_image: first}
    with: {add_noise: disable, noise_seed: 0, steps: 4, cfg: 5.0, start_at_step: 3}
  decode: {type: VAEDecode, in: {samples: second, vae: base.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: pair}}
"""


def test_base_then_refiner_renders(xl_pair, tmp_path):
    from flowrun.spec.sweep import Overrides

    (tmp_path / "wf.yaml").write_text(PAIR)
    images = []
    for score in ("6.0", "1.0"):
        settings = Settings(out_dir=tmp_path / f"o{len(images)}", use_cache=False, models_dirs=(str(xl_pair),),
                            device="cpu")
        result = api.run(api.load(tmp_path / "wf.yaml", Overrides.parse(sets=[f"ascore={score}"])), settings)
        images.append(np.asarray(Image.open(result.files[0])))
    assert images[0].shape == (64, 64, 3)
    assert np.isfinite(images[0]).all() and not np.array_equal(images[0], images[1])  # the score is used
