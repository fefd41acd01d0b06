"""Every example in workflows/ validates and runs; the swatches example draws the right pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from flowrun import api
from flowrun.settings import Settings

from conftest import ROOT, missing_extra

EXAMPLES = sorted((ROOT / "workflows").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_and_runs(path, tmp_path, tiny_models):
    if missing_extra(path):
        pytest.skip(f"needs {missing_extra(path)}, an optional extra")
    resolved = api.load(path)
    result = api.run(resolved, Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
                                        models_dirs=(str(tiny_models),), device="cpu"))
    assert result.manifest["status"] == "ok"
    assert result.files and all(f.exists() and f.stat().st_size > 0 for f in result.files)


def test_swatches_pixels_and_provenance(tmp_path):
    resolved = api.load(ROOT / "workflows" / "swatches.yaml")
    assert len(resolved.cells) == 6
    api.run(resolved, Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache"))
    out = tmp_path / "out"
    red = Image.open(out / "swatch-red-32.png")
    assert red.size == (32, 32) and red.getpixel((5, 5)) == (0xE0, 0x40, 0x2A)
    inverse = Image.open(out / "inverse-red-32.png").getpixel((0, 0))
    assert max(abs(a - (255 - b)) for a, b in zip(inverse, (0xE0, 0x40, 0x2A))) <= 1  # float32, then truncated
    # white multiplied by the colour, mixed half and half with white: 0.5 + 0.5 * c, truncated like ComfyUI
    tint = np.asarray(Image.open(out / "tint-blue-64.png"))[0, 0]
    expected = np.floor(255 * (0.5 + 0.5 * np.array([0x2A, 0xA0, 0xE0]) / 255)).astype(np.uint8)
    assert np.abs(tint.astype(int) - expected).max() <= 1
    info = Image.open(out / "swatch-yellow-64.png").info
    prov = json.loads(info["flowrun"])
    assert prov["params"] == {"colour": "yellow", "color": 0xF0C020, "size": 64}
    resolved_yaml = yaml.safe_load(info["flowrun_workflow"])
    assert resolved_yaml["nodes"]["swatch"]["with"]["color"] == 0xF0C020
    assert set(resolved_yaml["nodes"]) == {"swatch", "save_swatch"}  # only what the image came from


def test_same_workflow_same_bytes(tmp_path):
    path = ROOT / "workflows" / "swatches.yaml"
    for name in ("a", "b"):
        api.run(api.load(path), Settings(out_dir=tmp_path / name, use_cache=False))
    pngs = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert len(pngs) == 18 + 3  # and a contact sheet per output node
    for name in pngs:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
