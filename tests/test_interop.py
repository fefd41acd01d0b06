"""ComfyUI API-format export, and reproducing an image from the workflow stored in it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flowrun.graph.comfy_prompt import CORE_NODES

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


def _norm(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _shape(graph: dict) -> set:
    """A graph up to node ids: each node's type, literals (numbers as floats) and linked inputs."""
    types = {k: v["class_type"] for k, v in graph.items()}
    out = set()
    for node in graph.values():
        links = tuple(sorted((k, types[str(v[0])], v[1]) for k, v in node["inputs"].items() if isinstance(v, list)))
        lits = tuple(sorted((k, json.dumps(_norm(v))) for k, v in node["inputs"].items() if not isinstance(v, list)))
        out.add((node["class_type"], lits, links))
    return out


def test_import_api_format_then_run_and_export_round_trip(cli, tmp_path):
    source = ROOT / "tests" / "comfyui" / "txt2img-api.json"
    r = cli("import", source, "--out", tmp_path / "imported.yaml")
    assert r.code == 0
    text = (tmp_path / "imported.yaml").read_text()
    for role in ("ckpt:", "positive:", "negative:", "latent:", "sample:", "decode:", "save:"):
        assert f"\n  {role}" in text
    assert cli("validate", tmp_path / "imported.yaml").code == 0
    assert cli("run", tmp_path / "imported.yaml", "--out", tmp_path / "o").code == 0
    assert (tmp_path / "o" / "ComfyUI.png").is_file()
    cli("export", tmp_path / "imported.yaml", "--out", tmp_path / "e")
    original = json.loads(source.read_text())
    assert _shape(json.loads((tmp_path / "e" / "imported.json").read_text())) == _shape(original)


def test_import_every_example_round_trips(cli, tmp_path):
    cells = {"lora": "strength-1.0", "sweep-2x2": "seed-2_cfg-7.0", "swatches": "colour-blue_color-2793696_size-64"}
    for wf in ("txt2img", "img2img", "hires-fix", "lora", "sweep-2x2", "swatches"):
        cli("export", ROOT / "workflows" / f"{wf}.yaml", "--cell", cells.get(wf, "default"), "--out", tmp_path / wf)
        exported = next((tmp_path / wf).glob("*.json"))
        assert cli("import", exported, "--out", tmp_path / f"{wf}.yaml").code == 0
        cli("export", tmp_path / f"{wf}.yaml", "--out", tmp_path / f"{wf}-again")
        again = next((tmp_path / f"{wf}-again").glob("*.json"))
        assert _shape(json.loads(again.read_text())) == _shape(json.loads(exported.read_text())), wf


def test_import_reports_unknown_nodes_together(cli, tmp_path):
    graph = json.loads((ROOT / "tests" / "comfyui" / "txt2img-api.json").read_text())
    graph["10"] = {"class_type": "UltimateSDUpscale", "inputs": {"upscale_by": 2}}
    graph["11"] = {"class_type": "FaceDetailer", "inputs": {}}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    r = cli("import", tmp_path / "g.json")
    assert r.code == 2 and "ComfyUI nodes flowrun does not implement: FaceDetailer, UltimateSDUpscale" in r.err
    ui = json.loads((ROOT / "tests" / "comfyui" / "txt2img-ui.json").read_text())
    ui["nodes"].append({"id": 20, "type": "IPAdapterApply", "mode": 0, "inputs": [], "outputs": []})
    ui["nodes"].append({"id": 21, "type": "FaceDetailer", "mode": 2, "inputs": [], "outputs": []})  # muted: fine
    (tmp_path / "ui.json").write_text(json.dumps(ui))
    r = cli("import", tmp_path / "ui.json")
    assert r.code == 2 and "does not implement: IPAdapterApply" in r.err and "FaceDetailer" not in r.err


def test_import_ui_format_with_muted_bypassed_primitive_and_reroute(cli, tmp_path):
    from flowrun import api
    from flowrun.interop.comfy_import import load_graph

    source = ROOT / "tests" / "comfyui" / "txt2img-ui.json"
    prompt = load_graph(source, api.registry())
    assert sorted(prompt, key=int) == ["3", "4", "5", "6", "7", "8", "9"]  # muted save, bypass, reroute, primitive gone
    assert prompt["3"]["inputs"]["seed"] == 123  # the primitive's value; "randomize" skipped
    assert prompt["3"]["inputs"]["steps"] == 20 and prompt["3"]["inputs"]["sampler_name"] == "euler"
    assert prompt["8"]["inputs"]["samples"] == ["3", 0]  # through the bypassed LatentUpscaleBy
    assert prompt["8"]["inputs"]["vae"] == ["4", 2]  # through the reroute
    r = cli("import", source, "--out", tmp_path / "ui.yaml")
    assert r.code == 0
    assert cli("run", tmp_path / "ui.yaml", "--out", tmp_path / "o").code == 0
    from flowrun.diffusion import shapes

    seen = shapes.classify(np.asarray(Image.open(tmp_path / "o" / "ComfyUI.png").convert("RGB")))
    assert (seen.background, seen.colour) == ("white", "yellow")
    # the same graph written in the API format imports to the same workflow shape
    cli("export", tmp_path / "ui.yaml", "--out", tmp_path / "e")
    assert _shape(json.loads((tmp_path / "e" / "ui.json").read_text())) == _shape(prompt)


@pytest.mark.parametrize("name", ["txt2img-api", "img2img-api", "hires-lora-api", "sdxl-refiner-api", "regional-api",
                                  "custom-sampling-api", "sdxl-split-api", "sdxl-refiner-nodes-api",
                                  "unclip-style-api", "gligen-api", "flow-sampling-api", "inpainting-api",
                                  "outpainting-api", "controlnet-api", "sd3-api", "sd3-split-api",
                                  "auraflow-api", "auraflow-split-api", "qwen-image-api", "zimage-split-api"])
def test_hand_written_api_graphs_round_trip(name, cli, tmp_path):
    source = ROOT / "tests" / "comfyui" / f"{name}.json"
    assert cli("import", source, "--out", tmp_path / "wf.yaml").code == 0
    assert cli("validate", tmp_path / "wf.yaml", "--no-file-check").code == 0
    if name == "sdxl-refiner-api":  # the models it names are not here: both are reported, at once
        r = cli("validate", tmp_path / "wf.yaml")
        assert r.code == 2 and r.err.count("error[file]") == 2 and "sd_xl_refiner_1.0.safetensors" in r.err, r.err
    assert cli("export", tmp_path / "wf.yaml", "--out", tmp_path / "e").code == 0
    assert _shape(json.loads((tmp_path / "e" / "wf.json").read_text())) == _shape(json.loads(source.read_text()))


def test_import_from_png_chunks(cli, tmp_path):
    cli("run", ROOT / "workflows" / "txt2img.yaml", "--out", tmp_path / "r")
    r = cli("import", tmp_path / "r" / "txt2img-seed42.png", "--out", tmp_path / "from-png.yaml")
    assert r.code == 0 and cli("validate", tmp_path / "from-png.yaml").code == 0
    ui = (ROOT / "tests" / "comfyui" / "txt2img-ui.json").read_text()
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("workflow", ui)  # ComfyUI also stores its UI graph
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=meta)
    assert cli("import", tmp_path / "comfy.png", "--out", tmp_path / "from-ui-png.yaml").code == 0
    assert "seed: 123" in (tmp_path / "from-ui-png.yaml").read_text()


@pytest.mark.parametrize("shape", ["img2img", "hires-lora", "sdxl-refiner", "regional", "custom-sampling",
                                   "unclip-style", "gligen", "flow-sampling", "inpainting", "outpainting",
                                   "controlnet", "sd3", "sd3-split", "auraflow", "auraflow-split", "qwen-image",
                                   "zimage-split"])
def test_ui_format_graphs_equal_their_api_twins(shape, cli, tmp_path):
    """Each UI-format graph imports to the same graph as the API-format one beside it, and round-trips."""
    from flowrun import api
    from flowrun.interop.comfy_import import load_graph

    ui = load_graph(ROOT / "tests" / "comfyui" / f"{shape}-ui.json", api.registry())
    twin = json.loads((ROOT / "tests" / "comfyui" / f"{shape}-api.json").read_text())
    assert _shape(ui) == _shape(twin)
    assert cli("import", ROOT / "tests" / "comfyui" / f"{shape}-ui.json", "--out", tmp_path / "wf.yaml").code == 0
    assert cli("export", tmp_path / "wf.yaml", "--out", tmp_path / "e").code == 0
    assert _shape(json.loads((tmp_path / "e" / "wf.json").read_text())) == _shape(twin)


def test_image_prompt_graphs_import_validate_and_run(cli, tmp_path):
    """unCLIP and style-model graphs (UI and API format) on toy models beside the imported workflow."""
    import tiny_image_prompt

    tiny_image_prompt.write_all(tmp_path / "models")
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "red-circle.png").write_bytes((ROOT / "workflows" / "inputs" / "red-circle.png").read_bytes())
    for form in ("api", "ui"):
        assert cli("import", ROOT / "tests" / "comfyui" / f"unclip-style-{form}.json", "--out",
                   tmp_path / f"{form}.yaml").code == 0
        r = cli("validate", tmp_path / f"{form}.yaml")
        assert r.code == 0, r.err
    r = cli("run", tmp_path / "api.yaml", "--out", tmp_path / "o")
    assert r.code == 0, r.err
    image = np.asarray(Image.open(tmp_path / "o" / "unclip-style.png"))
    assert image.shape == (32, 32, 3) and image.std() > 1.0


def test_gligen_graphs_import_validate_and_run(cli, tmp_path):
    """A GLIGEN text box on the bundled tiny model, its GLIGEN file written beside the imported workflow."""
    import tiny_image_prompt

    tiny_image_prompt.write_bundled_gligen(tmp_path / "models")
    for form in ("api", "ui"):
        assert cli("import", ROOT / "tests" / "comfyui" / f"gligen-{form}.json", "--out", tmp_path / f"{form}.yaml").code == 0
        r = cli("validate", tmp_path / f"{form}.yaml")
        assert r.code == 0, r.err
    r = cli("run", tmp_path / "ui.yaml", "--out", tmp_path / "o")
    assert r.code == 0, r.err
    assert np.asarray(Image.open(tmp_path / "o" / "gligen.png")).shape == (64, 64, 3)


def test_upscale_graphs_import_validate_run_and_round_trip(cli, tmp_path):
    """The hand-written upscale graph (ComfyUI's hires fix with an upscale model), in both formats: they
    import to the same graph, which validates, runs on the bundled models and exports back to itself."""
    pytest.importorskip("spandrel", reason="needs the upscale extra: pip install 'flowrun[upscale]'")
    from flowrun import api
    from flowrun.interop.comfy_import import load_graph

    source = ROOT / "tests" / "comfyui" / "upscale-api.json"
    twin = json.loads(source.read_text())
    assert _shape(load_graph(ROOT / "tests" / "comfyui" / "upscale-ui.json", api.registry())) == _shape(twin)
    for fmt in ("api", "ui"):
        assert cli("import", ROOT / "tests" / "comfyui" / f"upscale-{fmt}.json", "--out", tmp_path / f"{fmt}.yaml").code == 0
        assert cli("validate", tmp_path / f"{fmt}.yaml").code == 0
        assert cli("export", tmp_path / f"{fmt}.yaml", "--out", tmp_path / f"e-{fmt}").code == 0
        assert _shape(json.loads((tmp_path / f"e-{fmt}" / f"{fmt}.json").read_text())) == _shape(twin)
    assert cli("run", tmp_path / "api.yaml", "--out", tmp_path / "o").code == 0
    out = Image.open(tmp_path / "o" / "upscaled.png")
    assert out.size == (96, 96) and np.asarray(out).std() > 0
    assert "UpscaleModelLoader" in {n["class_type"] for n in json.loads(out.info["prompt"]).values()}  # opens in ComfyUI


@pytest.mark.parametrize("shape", ["flux-txt2img", "flux-kontext", "flux-fill"])
def test_flux_graphs_import_validate_run_and_round_trip(shape, cli, tmp_path):
    """Flux txt2img (UNETLoader, DualCLIPLoader flux, VAELoader ae, FluxGuidance, SamplerCustomAdvanced), a
    Kontext edit (ReferenceLatent) and a Fill inpaint, in both formats: they import to the same graph, which
    validates, runs on toy Flux files beside it and exports back to itself."""
    import tiny_flux

    from flowrun import api
    from flowrun.interop.comfy_import import load_graph

    tiny_flux.write_split(tmp_path / "models", "fill" if shape == "flux-fill" else "dev")
    (tmp_path / "inputs").mkdir()
    circle = Image.open(ROOT / "workflows" / "inputs" / "red-circle.png").convert("RGBA")
    (tmp_path / "inputs" / "red-circle.png").write_bytes((ROOT / "workflows" / "inputs" / "red-circle.png").read_bytes())
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[16:48, 16:48] = 0  # LoadImage's mask is 1 - alpha: the square to repaint
    circle.putalpha(Image.fromarray(alpha))
    circle.save(tmp_path / "inputs" / "circle-masked.png")
    source = ROOT / "tests" / "comfyui" / f"{shape}-api.json"
    twin = json.loads(source.read_text())
    assert _shape(load_graph(ROOT / "tests" / "comfyui" / f"{shape}-ui.json", api.registry())) == _shape(twin)
    for fmt in ("api", "ui"):
        assert cli("import", ROOT / "tests" / "comfyui" / f"{shape}-{fmt}.json", "--out", tmp_path / f"{fmt}.yaml").code == 0
        r = cli("validate", tmp_path / f"{fmt}.yaml")
        assert r.code == 0, r.err
        assert cli("export", tmp_path / f"{fmt}.yaml", "--out", tmp_path / f"e-{fmt}").code == 0
        assert _shape(json.loads((tmp_path / f"e-{fmt}" / f"{fmt}.json").read_text())) == _shape(twin)
    r = cli("run", tmp_path / "api.yaml", "--out", tmp_path / "o")
    assert r.code == 0, r.err
    image = np.asarray(Image.open(tmp_path / "o" / f"{shape}.png"))
    assert image.shape == (64, 64, 3) and image.std() > 1.0
