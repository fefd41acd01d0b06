"""The diffusion node library on the tiny model: CLIP prompts, LoRA, regional conditioning, latent and image
nodes, the example workflows, provenance in the PNGs, and run-time errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from flowrun.values import Latent
from PIL import Image

from flowrun import api
from flowrun.diffusion.clip import encode, token_weights, tokenize
from flowrun.settings import Settings
from flowrun.spec.sweep import Overrides

from conftest import ROOT

EXAMPLES = ["txt2img", "img2img", "hires-fix", "lora", "sweep-2x2"]


def run(path, tmp_path, tiny_models, **kw):
    settings = Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", models_dirs=(str(tiny_models),),
                        device="cpu", **kw)
    return api.run(api.load(path), settings)


# --- CLIP ---------------------------------------------------------------------------------------------

def test_emphasis_syntax():
    assert token_weights("a (red:1.5) circle") == [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]
    assert token_weights("((big))") == [("big", pytest.approx(1.21))]
    assert token_weights("(a (b) c:0.5)") == [("a ", 0.5), ("b", pytest.approx(0.55)), (" c", 0.5)]
    assert token_weights("(not a weight:x)") == [("not a weight:x", pytest.approx(1.1))]


def test_tokenize_chunks_of_77_keep_words_whole(tiny_bundle):
    tok = tiny_bundle[1].tokenizer
    chunks = tokenize(tok, "a (red:1.2) circle", 49407)
    assert len(chunks) == 1 and len(chunks[0]) == 77
    assert [t for t, _ in chunks[0][:5]] == [49406, 320, 736, 7117, 49407]
    assert [w for _, w in chunks[0][:5]] == [1.0, 1.0, 1.2, 1.0, 1.0]
    long = tokenize(tok, " ".join(["circle"] * 100), 0)
    assert len(long) == 2 and all(len(c) == 77 for c in long)
    assert [t for t, _ in long[1][:2]] == [49406, 7117] and long[1][-1][0] == 0  # SD2/SDXL pad with 0


def test_long_prompts_concatenate_chunks(tiny_bundle):
    clip = tiny_bundle[1]
    short = encode(clip, "a red circle")[0].embedding
    long = encode(clip, " ".join(["a red circle"] * 30))[0].embedding
    assert short.shape == (1, 77, 32) and long.shape == (1, 154, 32)


def test_weights_scale_away_from_the_empty_prompt(tiny_bundle):
    clip = tiny_bundle[1]
    plain = encode(clip, "a red circle")[0].embedding
    empty = encode(clip, "")[0].embedding
    weighted = encode(clip, "a (red:1.5) circle")[0].embedding
    red = 2  # start token, "a", then "red"
    assert torch.allclose(weighted[0, red], (plain[0, red] - empty[0, red]) * 1.5 + empty[0, red], atol=1e-5)
    others = [i for i in range(77) if i != red]
    assert torch.allclose(weighted[0, others], plain[0, others], atol=1e-6)


def test_clip_set_last_layer(tiny_bundle):
    clip = tiny_bundle[1]
    default = encode(clip, "a red circle")[0].embedding
    assert torch.allclose(encode(clip.with_layer(-1), "a red circle")[0].embedding, default, atol=1e-6)
    assert not torch.allclose(encode(clip.with_layer(-2), "a red circle")[0].embedding, default, atol=1e-3)
    with pytest.raises(ValueError, match="beyond this text encoder's 3 layers"):
        encode(clip.with_layer(-5), "x")


# --- LoRA ---------------------------------------------------------------------------------------------

def test_lora_patches_apply_and_restore(tiny_models, tiny_bundle):
    from flowrun.diffusion.lora import patched, read_lora

    model, clip, _ = tiny_bundle
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    unet_p, clip_p = read_lora(tiny_models / "loras" / "flowrun-tiny-night.safetensors", model.unet, clip.models, 1.0, 1.0)
    assert len(unet_p) == 32 and len(clip_p) == 12  # 4 transformer blocks x 2 attentions x 4 projections; 3 x 4
    plain = encode(clip, "a red circle")[0].embedding
    assert not torch.allclose(encode(clip.with_patches(clip_p), "a red circle")[0].embedding, plain, atol=1e-4)
    with patched(model.unet, tuple(unet_p)):
        changed = [k for k, v in model.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == 32
    after = model.unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the shared model is back as it was


def test_lora_that_does_not_fit_is_refused(tiny_models, tiny_bundle, tmp_path):
    from safetensors.torch import save_file

    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.lora import read_lora

    model, clip, _ = tiny_bundle
    wrong = tmp_path / "sdxl-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(wrong))
    with pytest.raises(CheckpointError, match="the LoRA was made for another model"):
        read_lora(wrong, model.unet, clip.models, 1.0, 1.0)
    alien = tmp_path / "alien.safetensors"
    save_file({"lora_unet_nothing_here.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_nothing_here.lora_up.weight": torch.zeros(8, 4)}, str(alien))
    with pytest.raises(CheckpointError, match="1 of 1 LoRA weights match no layer of this model"):
        read_lora(alien, model.unet, clip.models, 1.0, 1.0)


def test_lora_example_strength_zero_equals_no_lora(tiny_models, tmp_path):
    run(ROOT / "workflows" / "lora.yaml", tmp_path, tiny_models)
    out = tmp_path / "out"
    zero, full = np.asarray(Image.open(out / "lora-strength0.0.png")), np.asarray(Image.open(out / "lora-strength1.0.png"))
    assert not np.array_equal(zero, full)
    base = run(ROOT / "workflows" / "txt2img.yaml", tmp_path / "t", tiny_models,)
    assert base.manifest["status"] == "ok"
    # the same render without the LoRA node: strength 0 must not change a pixel
    text = (ROOT / "workflows" / "lora.yaml").read_text()
    text = text.replace("in: {clip: lora.clip}", "in: {clip: ckpt.clip}").replace("model: lora.model", "model: ckpt.model")
    (tmp_path / "nolora.yaml").write_text(text)
    run(tmp_path / "nolora.yaml", tmp_path / "n", tiny_models)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "n" / "out" / "lora-strength0.0.png")), zero)


# --- conditioning, latents, images --------------------------------------------------------------------

def test_regional_conditioning_and_concat(tiny_bundle):
    from flowrun.diffusion.ksampler import ksample
    from flowrun.nodes.conditioning import conditioning_combine, conditioning_concat, conditioning_set_area, AreaParams

    model, clip, _ = tiny_bundle
    base, red, empty = encode(clip, "a white background"), encode(clip, "a red circle"), encode(clip, "")
    area = conditioning_set_area(AreaParams(width=64, height=64, x=64, y=0, strength=1.0), None, conditioning=red)
    assert area[0].area == (8, 8, 0, 8)
    combined = conditioning_combine(None, None, conditioning_1=base, conditioning_2=area)
    assert len(combined) == 2
    kw = dict(seed=1, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal", negative=empty,
              latent=Latent(torch.zeros(1, 4, 16, 16)))  # a 128 x 128 image
    plain = ksample(model, positive=base, **kw).samples
    regional = ksample(model, positive=combined, **kw).samples
    assert not torch.allclose(plain, regional)
    assert conditioning_concat(None, None, conditioning_to=base, conditioning_from=red)[0].embedding.shape == (1, 154, 32)


def test_latent_upscale_nodes():
    from flowrun.nodes.latent import (LatentUpscaleByParams, LatentUpscaleParams, empty_latent_image,
                                      latent_upscale, latent_upscale_by, EmptyLatentParams)

    latent = empty_latent_image(EmptyLatentParams(width=64, height=48, batch_size=2), None)
    assert latent.samples.shape == (2, 4, 6, 8)
    up = latent_upscale_by(LatentUpscaleByParams(scale_by=1.5, upscale_method="bilinear"), None, samples=latent)
    assert up.samples.shape == (2, 4, 9, 12)
    sized = latent_upscale(LatentUpscaleParams(width=128, height=0), None, samples=latent)
    assert sized.samples.shape == (2, 4, 12, 16)


def test_image_nodes_load_scale(tmp_path):
    from flowrun.execute.context import NodeFiles, RunContext
    from flowrun.files import FileLookup
    from flowrun.nodes.image import ImageScaleParams, LoadImageParams, image_scale, load_image

    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :10, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")

    ctx = RunContext(files=NodeFiles(FileLookup(tmp_path)))
    out = load_image(LoadImageParams(image="half.png"), ctx)
    assert out["image"].shape == (1, 10, 20, 3) and out["image"][0, 0, 0, 0] == 1.0
    assert out["mask"].shape == (1, 10, 20) and out["mask"][0, 0, 0] == 0.0 and out["mask"][0, 0, 15] == 1.0
    scaled = image_scale(ImageScaleParams(width=40, height=0, upscale_method="lanczos"), None, image=out["image"])
    assert scaled.shape == (1, 20, 40, 3)


# --- workflows ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_end_to_end(name, tiny_models, tmp_path):
    result = run(ROOT / "workflows" / f"{name}.yaml", tmp_path, tiny_models)
    assert result.manifest["status"] == "ok" and result.files
    for f in result.files:
        im = Image.open(f)
        assert im.format == "PNG" and im.size[0] >= 64
        assert np.asarray(im).std() > 0  # not a blank image
    again = run(ROOT / "workflows" / f"{name}.yaml", tmp_path / "again", tiny_models, use_cache=False)
    for a, b in zip(result.files, again.files):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two runs"


def test_sweep_loads_checkpoint_once_and_caches_tensors(tiny_models, tmp_path):
    first = run(ROOT / "workflows" / "sweep-2x2.yaml", tmp_path, tiny_models)
    by_id = {}
    for n in first.manifest["nodes"]:
        by_id.setdefault(n["id"], []).append(n)
    assert len(by_id["ckpt"]) == 1 and len(by_id["pos"]) == 1 and len(by_id["sample"]) == 4
    assert sorted(p.name for p in first.files) == ["seed1-cfg4.0.png", "seed1-cfg7.0.png", "seed2-cfg4.0.png",
                                                   "seed2-cfg7.0.png"]
    rendered = {f.name: f.read_bytes() for f in first.files}
    second = api.run(api.load(ROOT / "workflows" / "sweep-2x2.yaml"),
                     Settings(out_dir=tmp_path / "out2", cache_dir=tmp_path / "cache", models_dirs=(str(tiny_models),),
                              device="cpu"))
    assert {n["status"] for n in second.manifest["nodes"]} == {"cached", "skipped"}
    assert {f.name: f.read_bytes() for f in second.files} == rendered  # restored from the cache, same bytes
    seeds = api.run(api.load(ROOT / "workflows" / "sweep-2x2.yaml", Overrides.parse(sweeps=["seed=2,3"])),
                    Settings(out_dir=tmp_path / "out3", cache_dir=tmp_path / "cache", models_dirs=(str(tiny_models),),
                             device="cpu"))
    status = {}
    for n in seeds.manifest["nodes"]:
        status.setdefault(n["id"], []).append(n["status"])
    # seed 2 comes from the cache (LATENT through safetensors); seed 3 samples anew on the cached prompts
    assert status["sample"].count("executed") == 2 and status["save"].count("cached") == 2
    assert status["pos"] == ["cached"] and status["ckpt"] == ["executed"]


def test_png_provenance_and_comfyui_prompt(tiny_models, tmp_path):
    result = run(ROOT / "workflows" / "img2img.yaml", tmp_path, tiny_models)
    info = Image.open(result.files[0]).info
    prov = json.loads(info["flowrun"])
    assert prov["params"] == {"prompt": "a blue circle on a white background", "seed": 7, "denoise": 0.6}
    assert set(prov["files"]) == {"ckpt.ckpt_name", "image.image"} and all(len(v) == 64 for v in prov["files"].values())
    assert prov["versions"]["torch"] and prov["versions"]["diffusers"]
    prompt = json.loads(info["prompt"])
    assert prompt["sample"]["class_type"] == "KSampler"
    assert prompt["sample"]["inputs"]["model"] == ["ckpt", 0] and prompt["sample"]["inputs"]["latent_image"] == ["encode", 0]
    assert prompt["decode"]["inputs"]["vae"] == ["ckpt", 2] and prompt["encode"]["inputs"]["pixels"] == ["image", 0]
    assert prompt["sample"]["inputs"]["denoise"] == 0.6 and prompt["save"]["class_type"] == "SaveImage"


# --- run-time errors ------------------------------------------------------------------------------------

def test_run_time_errors_are_clear_and_leave_nothing_half_written(cli, tiny_models, tmp_path):
    wf = ROOT / "workflows" / "txt2img.yaml"
    missing = tmp_path / "missing.yaml"
    missing.write_text(wf.read_text().replace("ckpt_name: flowrun-tiny", "ckpt_name: no-such-model"))
    r = cli("run", missing, "--out", tmp_path / "o1")
    # a model that is not there is invalid input, shown at the field that names it
    assert r.code == 2 and "no checkpoint named 'no-such-model'" in r.err and "available: flowrun-tiny" in r.err
    assert f"{missing}:" in r.err and "field 'ckpt_name'" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "o1").exists()
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    good = (tiny_models / "checkpoints" / "flowrun-tiny.safetensors").read_bytes()
    (broken / "checkpoints" / "flowrun-tiny.safetensors").write_bytes(good[: len(good) // 3])
    r = cli("run", wf, "--models-dir", broken, "--out", tmp_path / "o2")
    assert r.code == 1 and "corrupt or truncated safetensors file" in r.err and "Traceback" not in r.err
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["run.json"]
    (broken / "checkpoints" / "flowrun-tiny.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, broken / "checkpoints" / "flowrun-tiny.ckpt")
    r = cli("run", wf, "--models-dir", broken, "--out", tmp_path / "o3")
    assert r.code == 1 and "pickle checkpoints (.ckpt) can run code" in r.err
    r = cli("run", wf, "--models-dir", broken, "--out", tmp_path / "o4", "--allow-pickle")
    assert r.code == 1 and "not a Stable Diffusion checkpoint" in r.err
    lora = ROOT / "workflows" / "lora.yaml"
    (broken / "checkpoints" / "flowrun-tiny.ckpt").unlink()
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_models / "checkpoints" / f"flowrun-tiny{suffix}", broken / "checkpoints")
    (broken / "loras").mkdir()
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "lora_unet_x.lora_up.weight": torch.zeros(2, 2)},
              str(broken / "loras" / "flowrun-tiny-night.safetensors"))
    r = cli("run", lora, "--models-dir", broken, "--out", tmp_path / "o5")
    assert r.code == 1 and "match no layer of this model" in r.err
    for out in tmp_path.glob("o*"):
        assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_invalid_sampler_name_is_a_validation_error(cli, tmp_path):
    text = (ROOT / "workflows" / "txt2img.yaml").read_text().replace("sampler_name: euler", "sampler_name: eulr")
    (tmp_path / "bad.yaml").write_text(text)
    r = cli("validate", tmp_path / "bad.yaml")
    assert r.code == 2 and "is not a valid sampler_name" in r.err and "did you mean 'euler'" in r.err


def test_seed_and_cfg_batching_matches_cells_run_alone(tiny_models, tmp_path):
    """The 2x2 sweep samples its 4 cells in one batched call; each cell stays within one 8-bit level of
    the same cell sampled alone (float rounding of the batched forward passes), its latent within 1e-5 of its largest value."""
    from flowrun.cache.disk import DiskStore
    from flowrun.cache.tiers import NodeCache

    wf = ROOT / "workflows" / "sweep-2x2.yaml"
    batched = run(wf, tmp_path / "a", tiny_models, use_cache=True)
    samples = [n for n in batched.manifest["nodes"] if n["id"] == "sample"]
    assert [n.get("batched") for n in samples] == [4, 4, 4, 4]
    alone = run(wf, tmp_path / "b", tiny_models, use_cache=True, batch=False)
    assert all("batched" not in n for n in alone.manifest["nodes"])
    for a, b in zip(sorted(batched.files), sorted(alone.files)):
        diff = np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int)).max()
        assert diff <= 1, (a.name, diff)
    types = {"latent": "LATENT"}
    for sa, sb in zip(samples, [n for n in alone.manifest["nodes"] if n["id"] == "sample"]):
        la = NodeCache(None, DiskStore(tmp_path / "a" / "cache")).load(sa["key"], types)["latent"].samples
        lb = NodeCache(None, DiskStore(tmp_path / "b" / "cache")).load(sb["key"], types)["latent"].samples
        assert float((la - lb).abs().max() / lb.abs().max()) < 1e-5


def test_batched_ancestral_and_sde_noise_is_per_cell(tiny_bundle):
    from flowrun.diffusion.ksampler import ksample, ksample_batch
    from flowrun.diffusion.noise import SeedNoise

    model, clip, _ = tiny_bundle
    pos, neg = encode(clip, "a red circle"), encode(clip, "")
    latent = Latent(torch.zeros(1, 4, 8, 8))
    for sampler in ("euler_ancestral", "dpmpp_2m_sde"):
        kw = dict(steps=5, sampler_name=sampler, scheduler="karras", positive=pos, negative=neg, latent=latent)
        together = ksample_batch(model, noise=SeedNoise([3, 4]), cfgs=[5.0, 2.0], **kw)
        for seed, cfg, got in zip((3, 4), (5.0, 2.0), together):
            alone = ksample(model, seed=seed, cfg=cfg, **kw).samples
            err = float((got.samples - alone).abs().max() / alone.abs().max())
            assert err < 1e-5, (sampler, err)
