"""--dtype: which precision each model part gets, that it is part of cache keys and of the goldens'
folder, and that a bfloat16 render of the tiny model (and of toy SD3 and Flux models) stays close to the
float32 one. Lazy parts: a checkpoint's UNet, text encoder and VAE are built only when used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from flowrun import api
from flowrun.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _dtypes(module) -> set:
    return {p.dtype for p in module.parameters()}


def test_bfloat16_reaches_the_unet_and_cpu_keeps_vae_and_text_encoder_float32(tiny_models):
    from flowrun.diffusion.checkpoint import load_bundle

    path = tiny_models / "checkpoints" / "tiny.safetensors"
    model, clip, vae = load_bundle(path, "t", device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and _dtypes(model.unet) == {torch.bfloat16}
    assert _dtypes(clip.models[0]) == {torch.float32} and _dtypes(vae.model) == {torch.float32}
    model, clip, vae = load_bundle(path, "t", device="cpu")
    assert model.dtype == torch.float32
    assert _dtypes(model.unet) == _dtypes(clip.models[0]) == _dtypes(vae.model) == {torch.float32}


def test_split_loaders_follow_the_dtype(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    from flowrun.diffusion.components import load_unet, load_vae

    state = load_file(str(tiny_models / "checkpoints" / "tiny.safetensors"))
    sidecar = (tiny_models / "checkpoints" / "tiny.json").read_text()
    for name, prefix in (("unet", "model.diffusion_model."), ("vae", "first_stage_model.")):
        save_file({k: v for k, v in state.items() if k.startswith(prefix)}, str(tmp_path / f"{name}.safetensors"))
        (tmp_path / f"{name}.json").write_text(sidecar)
    assert _dtypes(load_unet(tmp_path / "unet.safetensors", "u", dtype="bfloat16").unet) == {torch.bfloat16}
    assert _dtypes(load_vae(tmp_path / "vae.safetensors", "v", dtype="bfloat16").model) == {torch.float32}


def test_part_dtypes_follow_comfyui_per_device(monkeypatch):
    from flowrun.diffusion import precision

    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    assert precision.part_dtypes("cpu", None) == precision.PartDtypes(f32, f32, f32)
    assert precision.part_dtypes("cpu", "bfloat16") == precision.PartDtypes(bf16, f32, f32)
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        precision.part_dtypes("cpu", "float16")
    monkeypatch.setattr(precision, "bf16_supported", lambda device: device != "cpu")
    assert precision.part_dtypes("cuda", None) == precision.PartDtypes(f16, bf16, f32)  # ComfyUI's GPU default
    assert precision.part_dtypes("cuda:1", "float32") == precision.PartDtypes(f32, f32, f32)
    monkeypatch.setattr(precision, "bf16_supported", lambda device: device == "cpu")  # an older GPU
    assert precision.part_dtypes("cuda", None) == precision.PartDtypes(f16, f32, f32)
    with pytest.raises(ValueError, match="bfloat16 is not supported on cuda"):
        precision.part_dtypes("cuda", "bfloat16")


def test_dtype_is_part_of_cache_keys_and_goldens_folder(tiny_models):
    from flowrun.files import FileLookup
    from flowrun.graph.diff import output_keys
    from flowrun.regress.cases import current_backend

    resolved = api.load(ROOT / "workflows" / "txt2img.yaml")
    lookup = FileLookup(ROOT / "workflows", (str(tiny_models),))
    cpu = output_keys(resolved, lookup, "cpu")
    assert output_keys(resolved, lookup, "cpu", "float32") == cpu  # the CPU's default, said or not
    assert output_keys(resolved, lookup, "cpu", "bfloat16") != cpu
    assert output_keys(resolved, lookup, "cuda", "float32") != output_keys(resolved, lookup, "cuda")
    assert [current_backend(d, t) for d, t in [("cpu", None), ("cpu", "float32"), ("cpu", "bfloat16"),
                                               ("cuda:0", None), ("cuda", "float32"), ("cuda", "bfloat16")]] == [
        "cpu", "cpu", "cpu-bf16", "cuda-fp16", "cuda", "cuda-bf16"]


def test_cli_refuses_float16_on_the_cpu():
    from flowrun.cli import cli

    result = CliRunner().invoke(cli, ["plan", str(ROOT / "workflows" / "txt2img.yaml"), "--device", "cpu",
                                      "--dtype", "float16", "--no-cache"])
    assert result.exit_code == 2
    assert "Invalid value for '--dtype': float16 is not supported on the CPU" in result.output


def _render(tiny_models, tmp_path, dtype):
    settings = Settings(out_dir=tmp_path / (dtype or "default"), use_cache=False, models_dirs=(str(tiny_models),),
                        device="cpu", dtype=dtype)
    api.run(api.load(ROOT / "workflows" / "txt2img.yaml", ), settings)
    return np.asarray(Image.open(tmp_path / (dtype or "default") / "txt2img-seed42.png"), dtype=np.int16)


def test_bfloat16_render_is_close_to_float32(tiny_models, tmp_path):
    full, half = _render(tiny_models, tmp_path, None), _render(tiny_models, tmp_path, "bfloat16")
    diff = np.abs(full - half)
    # measured on the 2-core development machine: at most 7 levels apart, 0.14 on average (PSNR 52.8 dB)
    assert 0 < diff.max() <= 16 and diff.mean() < 1.5, (diff.max(), diff.mean())


def _counting(monkeypatch, name: str) -> list:
    from flowrun.diffusion import checkpoint

    calls, real = [], getattr(checkpoint, name)
    monkeypatch.setattr(checkpoint, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_vae_only_workflow_builds_neither_unet_nor_text_encoder(tiny_models, tmp_path, monkeypatch):
    built = {name: _counting(monkeypatch, name) for name in ("build_unet", "build_texts", "build_vae")}
    wf = tmp_path / "vae-only.yaml"
    wf.write_text("""version: 1
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: flowrun-tiny}}
  swatch: {type: EmptyImage, with: {width: 32, height: 32, color: 0xE0402A}}
  encode: {type: VAEEncode, in: {pixels: swatch, vae: ckpt.vae}}
  decode: {type: VAEDecode, in: {samples: encode, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: round-trip}}
""")
    api.run(api.load(wf), Settings(out_dir=tmp_path / "out", use_cache=False, models_dirs=(str(tiny_models),)))
    assert (tmp_path / "out" / "round-trip.png").is_file()
    assert {k: len(v) for k, v in built.items()} == {"build_unet": 0, "build_texts": 0, "build_vae": 1}


def test_parts_are_built_once_on_first_use(tiny_models, monkeypatch):
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.lazy import is_built

    unet_builds = _counting(monkeypatch, "build_unet")
    model, clip, vae = load_bundle(tiny_models / "checkpoints" / "tiny.safetensors", "t")
    encode(clip, "a red circle")
    patched = model.with_patches([])  # a copy (LoraLoader makes these) builds nothing either
    assert is_built(clip, "models") and not is_built(model, "unet") and not is_built(vae, "model")
    assert patched.unet is model.unet and unet_builds == [1]


# The DiT families: SD3 (whole checkpoint) and Flux (UNETLoader, DualCLIPLoader, VAELoader) on toy models
SD3_WORKFLOW = """version: 1
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny-sd3}}
  pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: "a (blue:1.2) square"}}
  neg: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: ""}}
  latent: {type: EmptySD3LatentImage, with: {width: 64, height: 64, batch_size: 1}}
  sample:
    type: KSampler
    in: {model: ckpt.model, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 7, steps: 3, cfg: 4.0, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""
FLUX_WORKFLOW = """version: 1
nodes:
  unet: {type: UNETLoader, with: {unet_name: tiny-flux-dev}}
  clip: {type: DualCLIPLoader, with: {clip_name1: tiny-t5xxl, clip_name2: tiny-clip-l, type: flux}}
  vae: {type: VAELoader, with: {vae_name: tiny-ae}}
  pos: {type: CLIPTextEncodeFlux, in: {clip: clip}, with: {clip_l: a red circle, t5xxl: a red circle, guidance: 4.0}}
  neg: {type: CLIPTextEncode, in: {clip: clip}, with: {text: ""}}
  latent: {type: EmptySD3LatentImage, with: {width: 64, height: 64}}
  sample:
    type: KSampler
    in: {model: unet, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 7, steps: 3, cfg: 1.0, sampler_name: euler, scheduler: simple}
  decode: {type: VAEDecode, in: {samples: sample, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""


def _render_text(models: Path, tmp_path: Path, text: str, dtype: str | None) -> np.ndarray:
    out = tmp_path / (dtype or "default")
    (tmp_path / "wf.yaml").write_text(text)
    settings = Settings(out_dir=out, use_cache=False, models_dirs=(str(models),), device="cpu", dtype=dtype)
    result = api.run(api.load(tmp_path / "wf.yaml"), settings)
    return np.asarray(Image.open(result.files[0]), dtype=np.int16)


def test_sd3_checkpoint_in_bfloat16(tmp_path):
    """A bfloat16 run holds the MMDiT in bfloat16, the VAE and the three text encoders in float32 (CPU), each
    built on first use, and renders close to the float32 run."""
    import tiny_sd3

    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.lazy import is_built

    models = tmp_path / "models"
    tiny_sd3.write(models)
    model, clip, vae = load_bundle(models / "checkpoints" / "tiny-sd3.safetensors", "t", dtype="bfloat16")
    assert _dtypes(vae.model) == {torch.float32}  # the VAE alone is built: the MMDiT and text encoders wait
    assert not is_built(model, "unet") and not is_built(clip, "models")
    assert model.dtype == torch.bfloat16 and _dtypes(model.unet) == {torch.bfloat16}
    assert all(_dtypes(m) == {torch.float32} for m in clip.models if m is not None) and all(clip.models)
    full = _render_text(models, tmp_path, SD3_WORKFLOW, None)
    half = _render_text(models, tmp_path, SD3_WORKFLOW, "bfloat16")
    diff = np.abs(full - half)
    # measured on the 2-core development machine: at most 8 levels apart, 0.66 on average (PSNR 47.6 dB)
    assert 0 < diff.max() <= 16 and diff.mean() < 1.5, (diff.max(), diff.mean())


def test_flux_in_bfloat16_and_fp8_files_upcast_to_the_run_dtype(tmp_path):
    """One rule for Flux as for every model: the run's dtype decides what the transformer holds (a float32
    run of an fp8-rounded file computes in float32, a bfloat16 run in bfloat16); the whole checkpoint's parts
    follow precision.py and are built on first use; the bfloat16 render stays close to the float32 one."""
    import tiny_flux

    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.components import load_unet
    from flowrun.diffusion.lazy import is_built

    models = tmp_path / "models"
    paths = tiny_flux.write_split(models, "dev")
    checkpoint = tiny_flux.write_checkpoint(models)
    unet = paths["unet"]
    assert _dtypes(load_unet(unet, "a", dtype="bfloat16").unet) == {torch.bfloat16}
    assert _dtypes(load_unet(unet, "b", weight_dtype="fp8_e4m3fn").unet) == {torch.float32}
    rounded = load_unet(unet, "c", weight_dtype="fp8_e4m3fn", dtype="bfloat16")
    assert rounded.dtype == torch.bfloat16 and _dtypes(rounded.unet) == {torch.bfloat16}
    model, clip, vae = load_bundle(checkpoint, "t", dtype="bfloat16")
    assert _dtypes(vae.model) == {torch.float32}  # the autoencoder alone is built: the transformer waits
    assert not is_built(model, "unet") and not is_built(clip, "models")
    assert model.dtype == torch.bfloat16 and _dtypes(model.unet) == {torch.bfloat16}
    assert all(_dtypes(m) == {torch.float32} for m in clip.models)
    full = _render_text(models, tmp_path, FLUX_WORKFLOW, None)
    half = _render_text(models, tmp_path, FLUX_WORKFLOW, "bfloat16")
    diff = np.abs(full - half)
    # measured on the 2-core development machine: at most 2 levels apart, 0.18 on average (PSNR 55.6 dB)
    assert 0 < diff.max() <= 8 and diff.mean() < 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_read_cast_gives_the_bits_of_a_plain_cast(tmp_path, dtype):
    """weights.read_cast (one reused buffer, file order) against safetensors' load + `.to`: the same bits for
    float32, float16 and bfloat16 sources, integers kept as stored, empty tensors, keys in any order."""
    from safetensors.torch import load_file, save_file

    from flowrun.diffusion.weights import read_cast

    gen = torch.Generator().manual_seed(3)
    state = {"b.f32": torch.randn(7, 5, generator=gen) * 1e3, "a.f16": torch.randn(3, 3, 2, generator=gen).half(),
             "c.bf16": torch.randn(11, generator=gen).bfloat16(), "d.ids": torch.arange(77).expand(1, 77).contiguous(),
             "e.empty": torch.zeros(0, 4), "f.tiny": torch.tensor([1e-40, -3.4e38, float("inf"), float("nan")])}
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    keys = ["f.tiny", "d.ids", "a.f16", "b.f32", "e.empty", "c.bf16"]
    got = read_cast(path, keys, dtype)
    expected = load_file(str(path))
    assert set(got) == set(keys)
    for key in keys:
        want = expected[key].to(dtype) if expected[key].is_floating_point() else expected[key]
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        assert torch.equal(got[key].view(torch.uint8) if want.numel() else got[key], want.view(torch.uint8)
                           if want.numel() else want), key
    assert got["d.ids"].dtype == torch.int64


def test_read_cast_refuses_a_file_cut_short(tmp_path):
    from safetensors.torch import save_file

    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.weights import read_cast

    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_cast(path, ["w"], torch.bfloat16)


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_on_a_cpu_without_its_instructions_is_warned_about(tiny_models, monkeypatch, native):
    """The checkpoint loader warns when a CPU run asks for bfloat16 and the CPU lacks AVX-512 BF16 and AMX
    (torch then emulates it, slower than float32); says nothing where the CPU has them, or for float32."""
    from flowrun.diffusion.precision import slow_bfloat16
    from flowrun.execute.context import DevicePolicy, NodeFiles, RunContext
    from flowrun.files import FileLookup
    from flowrun.nodes.loaders import CheckpointParams, checkpoint_loader

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert slow_bfloat16("cpu", "float32") is None and slow_bfloat16("cpu", None) is None
    assert slow_bfloat16("cuda", "bfloat16") is None
    warned: list[str] = []
    ctx = RunContext(device=DevicePolicy("cpu", "bfloat16"), warn=warned.append,
                     files=NodeFiles(FileLookup(tiny_models, (str(tiny_models),)), {"ckpt_name": "tiny-fp"}))
    checkpoint_loader(CheckpointParams(ckpt_name="tiny.safetensors"), ctx)
    if native:
        assert warned == []
    else:
        assert warned == ["bfloat16 on this CPU (no AVX-512 BF16 or AMX instructions) computes slower than "
                          "float32; it still halves the UNet's memory"]
