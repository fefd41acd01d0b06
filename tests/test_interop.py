"""ComfyUI API-format export, and reproducing an image from the workflow stored in it."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from flowrun.interop.comfyui import CORE_NODES

from conftest import ROOT


def test_export_one_file_per_cell_or_the_cell_asked_for(cli, tmp_path):
    r = cli("export", ROOT / "workflows" / "sweep-2x2.yaml", "--out", tmp_path / "x")
    assert r.code == 0 and r.out.count("wrote") == 4
    graph = json.loads((tmp_path / "x" / "sweep-2x2-seed-2_cfg-7.0.json").read_text())
    assert set(graph) == {"ckpt", "pos", "neg", "latent", "sample", "decode", "save"}
    assert graph["sample"]["class_type"] == "KSampler"
    assert graph["sample"]["inputs"]["seed"] == 2 and graph["sample"]["inputs"]["cfg"] == 7.0
    assert graph["sample"]["inputs"]["positive"] == ["pos", 0] and graph["decode"]["inputs"]["vae"] == ["ckpt", 2]
    assert all(node["class_type"] in CORE_NODES for node in graph.values())
    r = cli("export", ROOT / "workflows" / "txt2img.yaml", "--out", tmp_path / "y")
    assert (tmp_path / "y" / "txt2img.json").is_file()
    r = cli("export", ROOT / "workflows" / "sweep-2x2.yaml", "--cell", "nope")
    assert r.code == 2 and "no cell 'nope'" in r.err


def test_export_matches_the_png_prompt_chunk(cli, tmp_path):
    cli("run", ROOT / "workflows" / "txt2img.yaml", "--out", tmp_path / "r")
    chunk = json.loads(Image.open(tmp_path / "r" / "txt2img-seed42.png").info["prompt"])
    cli("export", ROOT / "workflows" / "txt2img.yaml", "--out", tmp_path / "e")
    assert json.loads((tmp_path / "e" / "txt2img.json").read_text()) == chunk


def test_reproduce_renders_the_image_again(cli, tmp_path):
    cli("run", ROOT / "workflows" / "img2img.yaml", "--out", tmp_path / "r")
    image = tmp_path / "r" / "img2img-denoise0.6.png"
    r = cli("reproduce", image, "--workflow-dir", ROOT / "workflows", "--out", tmp_path / "again", "--no-cache")
    assert r.code == 0 and "identical" in r.out
    changed = np.asarray(Image.open(image)).copy()
    changed[0, 0] = 255 - changed[0, 0]
    info = Image.open(image).info
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    for k, v in info.items():
        if isinstance(v, str):
            meta.add_itxt(k, v)
    Image.fromarray(changed).save(tmp_path / "edited.png", pnginfo=meta)
    r = cli("reproduce", tmp_path / "edited.png", "--workflow-dir", ROOT / "workflows", "--out", tmp_path / "a2")
    assert r.code == 1 and "differs: max difference" in r.out
    Image.fromarray(changed).save(tmp_path / "bare.png")
    r = cli("reproduce", tmp_path / "bare.png")
    assert r.code == 2 and "carries no flowrun workflow" in r.err
