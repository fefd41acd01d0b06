"""The bundled default model: found by name with no configuration, loaded through the normal single-file
path, deterministic; and the training script, run for a few steps so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from flowrun import api
from flowrun.diffusion import shapes
from flowrun.files import BUNDLED, locate, search_roots
from flowrun.settings import Settings

from conftest import ROOT

CKPT = BUNDLED / "checkpoints" / "flowrun-tiny.safetensors"


def test_bundled_files_and_size():
    assert CKPT.is_file() and CKPT.with_suffix(".json").is_file()
    assert CKPT.stat().st_size <= 25 * 1024 * 1024
    lora = BUNDLED / "loras" / "flowrun-tiny-night.safetensors"
    assert lora.is_file() and lora.stat().st_size < 1024 * 1024
    card = (BUNDLED / "README.md").read_text()
    for fact in ("Training", "VAE PSNR", "Licence", "tools/train_default_model.py"):
        assert fact in card
    config = json.loads(CKPT.with_suffix(".json").read_text())
    assert config["family"] == "sd1" and config["prediction_type"] == "epsilon"


def test_resolves_by_name_with_no_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWRUN_MODELS", raising=False)
    assert locate("flowrun-tiny", "checkpoints", search_roots((), tmp_path)) == CKPT


def test_renders_what_it_is_asked_deterministically(tmp_path):
    settings = Settings(out_dir=tmp_path / "a", use_cache=False, device="cpu")
    first = api.run(api.load(ROOT / "workflows" / "txt2img.yaml"), settings)
    second = api.run(api.load(ROOT / "workflows" / "txt2img.yaml"),
                     Settings(out_dir=tmp_path / "b", use_cache=False, device="cpu"))
    (a,), (b,) = first.files, second.files
    assert a.read_bytes() == b.read_bytes()
    seen = shapes.classify(np.asarray(Image.open(a).convert("RGB")))
    assert (seen.background, seen.colour) == ("white", "red")  # "a red circle on a white background"


def test_training_script_runs_on_tiny_settings(tmp_path):
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train_default_model.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vae step 3/3" in r.stdout and "unet step 3/3" in r.stdout and "wrote" in r.stdout
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.detect import read_header

    header = read_header(out / "flowrun-tiny.safetensors")
    assert any(k.startswith("model.diffusion_model.") for k in header.shapes)  # the original SD layout
    assert {header.dtypes[k] for k in header.shapes if "weight" in k} == {"F16"}
    model, clip, vae = load_bundle(out / "flowrun-tiny.safetensors", "quick")
    assert model.family == "sd1" and clip.models[0].config.hidden_size == 64
