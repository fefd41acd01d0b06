"""Checkpoint loading: single file and diffusers folder, family detection on full-size layouts (meta device),
the search path, and every way a model file can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flowrun.diffusion.checkpoint import load_bundle, load_state, read_state_dict
from flowrun.diffusion.configs import SD1, SD2, SDXL, ModelConfig
from flowrun.diffusion.detect import CheckpointError, detect, read_header
from flowrun.diffusion.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
from flowrun.files import locate, search_roots


def meta_checkpoint(family: str, inpaint: bool = False) -> dict[str, torch.Tensor]:
    """A full-size checkpoint of `family` in the original key layout, every tensor on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from flowrun.diffusion.checkpoint import _text_model

    cfg = ModelConfig.default(family)
    if inpaint:
        cfg.unet["in_channels"] = 9
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**cfg.unet), AutoencoderKL(**cfg.vae)
        texts = [_text_model(c, family == SDXL and i == 1) for i, c in enumerate(cfg.text_encoders)]
    state = {**unet_to_ldm(unet.state_dict(), cfg.unet), **vae_to_ldm(vae.state_dict(), cfg.vae)}
    if family == SD1:
        state.update(clip_to_ldm(texts[0].state_dict()))
    elif family == SD2:
        state.update(open_clip_to_ldm(texts[0].state_dict(), "cond_stage_model.model."))
    else:
        state.update({k.replace("cond_stage_model.", "conditioner.embedders.0."): v
                      for k, v in clip_to_ldm(texts[0].state_dict()).items()})
        state.update(open_clip_to_ldm(texts[1].state_dict(), "conditioner.embedders.1.model."))
    return state


@pytest.mark.parametrize("family, width, params_m, layers", [(SD1, 768, 860, [12]), (SD2, 1024, 866, [24]),
                                                            (SDXL, 2048, 2567, [12, 32])])
def test_full_size_families_detect_and_map(family, width, params_m, layers):
    state = meta_checkpoint(family)
    found = detect({k: tuple(v.shape) for k, v in state.items()}, "x.safetensors")
    assert (found.family, found.context_dim, found.in_channels, found.inpaint) == (family, width, 4, False)
    config, unet, texts, vae = load_state(state, Path(f"{family}.safetensors"), None)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == params_m
    assert [t.config.num_hidden_layers for t in texts] == layers
    assert config.prediction_type == ("v_prediction" if family == SD2 else "epsilon")
    assert vae.config.scaling_factor == (0.13025 if family == SDXL else 0.18215)


def test_inpainting_unet_detected():
    state = meta_checkpoint(SD1, inpaint=True)
    found = detect({k: tuple(v.shape) for k, v in state.items()}, "x")
    assert found.inpaint and found.in_channels == 9
    _, unet, _, _ = load_state(state, Path("inpaint.safetensors"), None)
    assert unet.config.in_channels == 9


def test_undetectable_checkpoints_say_what_they_found():
    shapes = {"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}
    with pytest.raises(CheckpointError, match=r"x.safetensors: not a Stable Diffusion checkpoint: expected UNet "
                                              r"weights under 'model.diffusion_model.\*', found keys like first_stage"):
        detect(shapes, "x.safetensors")
    unet_only = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
                 "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 999)}
    with pytest.raises(CheckpointError, match="cross-attention width of 999, which matches no known family"):
        detect(unet_only, "y")


def test_text_encoder_roundtrip_through_diffusers_converters():
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    from flowrun.diffusion.checkpoint import _fit_keys, _text_model

    cfg = {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 16}
    torch.manual_seed(0)
    model = _text_model(cfg, projection=True)
    prefix = "conditioner.embedders.1.model."  # SDXL's bigG keeps its projection (SD2's is dropped)
    ldm = open_clip_to_ldm(model.state_dict(), prefix)
    back = _fit_keys(convert_open_clip_checkpoint(model, ldm, prefix=prefix), model)
    original = model.state_dict()
    assert set(back) == {k for k in original if not k.endswith("position_ids")}
    assert all(torch.equal(back[k], original[k]) for k in back)


def test_single_file_and_diffusers_folder_load_the_same_model(tiny_models):
    a = load_bundle(tiny_models / "checkpoints" / "tiny.safetensors", "a")
    b = load_bundle(tiny_models / "checkpoints" / "tiny-diffusers", "b")
    for (ma, mb) in [(a[0].unet, b[0].unet), (a[1].models[0], b[1].models[0]), (a[2].model, b[2].model)]:
        sa, sb = ma.state_dict(), mb.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a[0].config.family == b[0].config.family == SD1
    assert a[0].sampling.prediction_type == b[0].sampling.prediction_type == "epsilon"


def test_search_path_order_and_missing_name_lists_choices(tiny_models, tmp_path, monkeypatch):
    other = tmp_path / "mine" / "checkpoints"
    other.mkdir(parents=True)
    (other / "tiny.safetensors").write_bytes((tiny_models / "checkpoints" / "tiny.safetensors").read_bytes())
    monkeypatch.setenv("FLOWRUN_MODELS", str(tiny_models))
    roots = search_roots([tmp_path / "mine"], workflow_dir=tmp_path)
    assert roots[:2] == [tmp_path / "mine", tiny_models]
    assert locate("tiny", "checkpoints", roots) == other / "tiny.safetensors"
    assert locate("tiny-diffusers", "checkpoints", roots) == tiny_models / "checkpoints" / "tiny-diffusers"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint named 'nope' in .*available: .*tiny, tiny-diffusers"):
        locate("nope", "checkpoints", roots)
    with pytest.raises(ValueError, match="would leave"):
        locate("../etc/passwd", "checkpoints", roots)


def test_pickle_checkpoints_refused_unless_allowed(tiny_models, tmp_path):
    state = read_state_dict(tiny_models / "checkpoints" / "tiny.safetensors", False)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="pickle checkpoints .* are refused; convert it to .safetensors, or pass --allow-pickle"):
        read_state_dict(path, allow_pickle=False)
    loaded = read_state_dict(path, allow_pickle=True)
    assert set(loaded) == set(state)
    evil = tmp_path / "evil.ckpt"
    import os

    torch.save({"state_dict": state, "payload": os.system}, evil)  # a reference to a callable: code, not data
    with pytest.raises(CheckpointError, match="cannot be read as a weights-only pickle"):
        read_state_dict(evil, allow_pickle=True)


def test_corrupt_truncated_and_lying_safetensors(tiny_models, tmp_path):
    good = (tiny_models / "checkpoints" / "tiny.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file: tensor .* but the data section has"):
        read_header(truncated)
    lying = tmp_path / "lying.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}}).encode()
    lying.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="declares"):
        read_state_dict(lying, False)
    huge = tmp_path / "huge-header.safetensors"
    huge.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header claims 1,099,511,627,776 bytes"):
        read_header(huge)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")
    with pytest.raises(CheckpointError, match="not JSON"):
        read_header(garbage)


def test_wrong_width_without_config_is_explained(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    from flowrun.diffusion.checkpoint import load_single_file

    path = tmp_path / "noconfig.safetensors"  # written elsewhere: no sidecar, no configs in its metadata
    save_file(load_file(str(tiny_models / "checkpoints" / "tiny.safetensors")), str(path))

    with pytest.raises(CheckpointError, match=r"sd1 checkpoints have cross-attention width 768, this one 32; "
                                              r"for a model of another size put its configs in .*noconfig.json"):
        load_single_file(path)
