"""SaveAnimatedWEBP and SaveAnimatedPNG: one animation per batch, frames in batch order and count, frame
duration from fps, lossless pixels, provenance, the same bytes every time; and regress reads every frame."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageSequence

from flowrun.execute.context import Outputs, RunContext
from flowrun.nodes.registry import default_registry

REG = default_registry(builtin_only=True)


def batch(n: int = 4, size: int = 16) -> np.ndarray:
    """n distinct frames: frame i is filled with grey level 40 * i + 20, with a white pixel at (i, i)."""
    out = np.zeros((n, size, size, 3), np.float32)
    for i in range(n):
        out[i] = (40 * i + 20) / 255.0
        out[i, i, i] = 1.0
    return out


def save(type_name: str, images, **fields) -> dict[str, bytes]:
    nd = REG.get(type_name)
    ctx = RunContext(outputs=Outputs(provenance={"cell": "a", "resolved": "nodes: {}", "prompt": '{"1": {}}'}))
    nd(nd.params(filename_prefix="anim", **fields), ctx, images=images)
    return ctx.outputs.saved


def read_frames(data: bytes) -> tuple[list[np.ndarray], list[int], dict]:
    with Image.open(io.BytesIO(data)) as im:
        info = dict(im.info)
        pictures, durations = [], []
        for frame in ImageSequence.Iterator(im):
            pictures.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info.get("duration"))
    return pictures, durations, info


@pytest.mark.parametrize("type_name, fields, name", [
    ("SaveAnimatedWEBP", {"fps": 8.0, "lossless": True}, "anim.webp"),
    ("SaveAnimatedPNG", {"fps": 8.0, "compress_level": 9}, "anim.png"),
])
def test_one_animation_per_batch_in_frame_order(type_name, fields, name):
    images = batch()
    saved = save(type_name, images, **fields)
    assert list(saved) == [name]
    pictures, durations, _ = read_frames(saved[name])
    assert len(pictures) == 4
    expected = (images * 255).astype(np.uint8)
    for i, picture in enumerate(pictures):  # lossless: each frame is its image, in batch order
        assert np.array_equal(picture, expected[i]), i
    assert durations == [125] * 4  # 1000 / 8 fps
    assert save(type_name, images, **fields) == saved  # the same bytes every time


def test_fps_truncates_to_whole_milliseconds_as_comfyui():
    _, durations, _ = read_frames(save("SaveAnimatedPNG", batch(2), fps=3.0)["anim.png"])
    assert durations == [333, 333]
    _, durations, _ = read_frames(save("SaveAnimatedWEBP", batch(2), fps=6.0)["anim.webp"])
    assert durations == [166, 166]


def test_fields_change_the_file():
    images = batch()
    lossy = save("SaveAnimatedWEBP", images, lossless=False, quality=10, method="fastest")["anim.webp"]
    lossless = save("SaveAnimatedWEBP", images)["anim.webp"]
    assert lossy != lossless
    pictures, _, _ = read_frames(lossy)
    assert len(pictures) == 4
    assert save("SaveAnimatedPNG", images, compress_level=0)["anim.png"] != save("SaveAnimatedPNG", images)["anim.png"]
    assert list(REG.get("SaveAnimatedWEBP").params.model_fields) == ["filename_prefix", "fps", "lossless", "quality",
                                                                    "method"]
    assert list(REG.get("SaveAnimatedPNG").params.model_fields) == ["filename_prefix", "fps", "compress_level"]


def test_provenance_is_carried():
    _, _, info = read_frames(save("SaveAnimatedPNG", batch(2))["anim.png"])
    assert json.loads(info["flowrun"]) == {"cell": "a"} and info["prompt"] == '{"1": {}}'
    with Image.open(io.BytesIO(save("SaveAnimatedWEBP", batch(2))["anim.webp"])) as im:
        exif = im.getexif()
    assert exif[0x0110] == 'prompt:{"1": {}}' and exif[0x010E] == "flowrun_workflow:nodes: {}"


def test_a_repeated_frame_lengthens_the_one_before_in_png():
    images = batch(3)
    images[1] = images[0]
    pictures, durations, _ = read_frames(save("SaveAnimatedPNG", images, fps=10.0)["anim.png"])
    assert len(pictures) == 2 and durations == [200, 100]


def test_regress_compares_every_frame_of_an_animated_png(tmp_path):
    from flowrun.regress.compare import load_rgb

    images = batch(3)
    path = tmp_path / "a.png"
    path.write_bytes(save("SaveAnimatedPNG", images)["anim.png"])
    stacked = load_rgb(path)
    assert stacked.shape == (48, 16, 3)  # the frames one above the other
    assert np.array_equal(stacked[32:], (images[2] * 255).astype(np.uint8))


# --- flowrun run --animate ------------------------------------------------------------------------------------------

def test_run_animate_writes_one_animation_per_node_and_other_axes(cli, tmp_path):
    from conftest import ROOT

    r = cli("run", ROOT / "workflows" / "swatches.yaml", "--out", tmp_path / "o", "--animate", "colour", "--fps", "4")
    assert r.code == 0, r.err
    out = tmp_path / "o"
    manifest = json.loads((out / "run.json").read_text())
    names = sorted(manifest["animations"])
    assert names == sorted(f"animation-{n}_size-{s}.png" for n in ("save_swatch", "save_inverse", "save_tint")
                           for s in (32, 64))
    pictures, durations, _ = read_frames((out / "animation-save_swatch_size-32.png").read_bytes())
    assert durations == [250, 250, 250]  # --fps 4
    # frames in the zip axis's order (red, blue, yellow), each the cell's own PNG
    for picture, colour in zip(pictures, ("red", "blue", "yellow")):
        with Image.open(out / f"swatch-{colour}-32.png") as im:
            assert np.array_equal(picture, np.asarray(im.convert("RGB")))
    assert [tuple(p[0, 0]) for p in pictures] == [(0xE0, 0x40, 0x2A), (0x2A, 0xA0, 0xE0), (0xF0, 0xC0, 0x20)]
    first = (out / "animation-save_swatch_size-32.png").read_bytes()
    assert cli("run", ROOT / "workflows" / "swatches.yaml", "--out", tmp_path / "p", "--animate", "colour",
               "--fps", "4").code == 0
    assert (tmp_path / "p" / "animation-save_swatch_size-32.png").read_bytes() == first  # the same bytes


def test_run_animate_over_a_grid_axis_resizes_to_the_first_frame(cli, tmp_path):
    from conftest import ROOT

    r = cli("run", ROOT / "workflows" / "swatches.yaml", "--out", tmp_path / "o", "--animate", "size")
    assert r.code == 0, r.err
    pictures, durations, _ = read_frames((tmp_path / "o" / "animation-save_tint_colour-blue_color-2793696.png")
                                         .read_bytes())
    # the 64-pixel swatch shrunk to 32 is the 32-pixel one, so the two frames merge into one (Pillow's APNG)
    assert [p.shape for p in pictures] == [(32, 32, 3)]


def test_run_animate_names_the_axes_when_the_axis_is_unknown(cli, tmp_path):
    from conftest import ROOT

    r = cli("run", ROOT / "workflows" / "swatches.yaml", "--out", tmp_path / "o", "--animate", "colours")
    assert r.code == 2 and "Traceback" not in r.err
    assert "--animate colours: not a sweep axis of this run; its axes are: colour, color, size" in r.err
    assert not (tmp_path / "o").exists()


# --- ComfyUI's graphs of it -----------------------------------------------------------------------------------------

def test_comfyui_graphs_import_run_and_export(cli, tiny_models, tmp_path):
    from conftest import ROOT
    from test_interop import _shape

    source = ROOT / "tests" / "comfyui" / "animation-api.json"
    assert cli("import", source, "--out", tmp_path / "wf.yaml").code == 0
    r = cli("run", tmp_path / "wf.yaml", "--models-dir", tiny_models, "--out", tmp_path / "o", "--device", "cpu")
    assert r.code == 0, r.err
    pictures, durations, info = read_frames((tmp_path / "o" / "ComfyUI.png").read_bytes())
    assert len(pictures) == 3 and durations == [83] * 3 and pictures[0].shape == (32, 32, 3)
    full = json.loads(source.read_text())  # the prompt chunk holds the nodes that lead to this output
    assert _shape(json.loads(info["prompt"])) == _shape({k: v for k, v in full.items() if k != "9"})
    webp, webp_durations, _ = read_frames((tmp_path / "o" / "ComfyUI.webp").read_bytes())
    assert len(webp) == 3 and webp_durations == [166] * 3
    assert cli("export", tmp_path / "wf.yaml", "--out", tmp_path / "x").code == 0
    exported = json.loads(next((tmp_path / "x").glob("*.json")).read_text())
    assert _shape(exported) == _shape(json.loads(source.read_text()))
    ui = ROOT / "tests" / "comfyui" / "animation-ui.json"
    assert cli("import", ui, "--out", tmp_path / "ui.yaml").code == 0
    assert cli("validate", tmp_path / "ui.yaml", "--models-dir", tiny_models).code == 0
    text = (tmp_path / "ui.yaml").read_text()
    assert "type: SaveAnimatedWEBP" in text and "lossless: false" in text and "compress_level: 4" in text
