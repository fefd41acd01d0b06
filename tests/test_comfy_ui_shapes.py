"""ComfyUI UI-format shapes beyond plain nodes: group nodes, subgraphs, older editors' boolean seed
controls, nodes saved without widget values; and booleans refused where numbers are expected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from test_interop import _shape

COMFY = ROOT / "tests" / "comfyui"


def _load(path):
    from flowrun import api
    from flowrun.interop.comfy_import import load_graph

    return load_graph(path, api.registry())


def _plain_twin() -> dict:
    """The txt2img graph both fixtures wrap, written out node by node."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flowrun-tiny"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a yellow triangle on a white background", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 123, "steps": 20, "cfg": 7, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


@pytest.mark.parametrize("shape", ["group", "subgraph"])
def test_group_nodes_and_subgraphs_expand_to_their_inner_nodes(shape):
    prompt = _load(COMFY / f"txt2img-{shape}-ui.json")
    assert _shape(prompt) == _shape(_plain_twin())
    inner = {"group": {"20:0", "20:1"}, "subgraph": {"30:1", "30:2"}}[shape]  # ComfyUI's execution ids
    assert inner <= set(prompt)


def test_expanded_graphs_run_and_round_trip(cli, tmp_path):
    from flowrun.diffusion import shapes

    images = []
    for shape in ("group", "subgraph"):
        wf = tmp_path / f"{shape}.yaml"
        assert cli("import", COMFY / f"txt2img-{shape}-ui.json", "--out", wf).code == 0
        assert cli("validate", wf).code == 0
        assert cli("run", wf, "--out", tmp_path / shape).code == 0
        images.append(np.asarray(Image.open(tmp_path / shape / "ComfyUI.png").convert("RGB")))
        assert cli("export", wf, "--out", tmp_path / f"{shape}-e").code == 0
        exported = json.loads((tmp_path / f"{shape}-e" / f"{shape}.json").read_text())
        assert _shape(exported) == _shape(_plain_twin())
    assert np.array_equal(images[0], images[1])  # the same graph, however it was folded
    seen = shapes.classify(images[0])
    assert (seen.background, seen.colour) == ("white", "yellow")


def test_a_group_widget_made_an_input_feeds_its_inner_node(tmp_path):
    ui = json.loads((COMFY / "txt2img-group-ui.json").read_text())
    group = next(n for n in ui["nodes"] if n["id"] == 20)
    # the second encoder's text: a repeated widget name, which the editor prefixes with the node's title
    group["inputs"].append({"name": "CLIPTextEncode text", "type": "STRING", "link": 30,
                            "widget": {"name": "CLIPTextEncode text"}})
    ui["nodes"].append({"id": 21, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                        "outputs": [{"name": "STRING", "type": "STRING", "links": [30],
                                     "widget": {"name": "CLIPTextEncode text"}}], "widgets_values": ["dark"]})
    ui["links"].append([30, 21, 0, 20, 2, "STRING"])
    (tmp_path / "g.json").write_text(json.dumps(ui))
    prompt = _load(tmp_path / "g.json")
    assert prompt["20:1"]["inputs"]["text"] == "dark"
    assert prompt["20:0"]["inputs"]["text"] == "a yellow triangle on a white background"


def test_subgraphs_nest(tmp_path):
    ui = json.loads((COMFY / "txt2img-subgraph-ui.json").read_text())
    (outer,) = ui["definitions"]["subgraphs"]
    inner = json.loads(json.dumps(outer))
    inner["id"] = "inner-0000"
    outer_nodes = [dict(n) for n in outer["nodes"]]
    outer["nodes"] = [dict(n, type="inner-0000") if n["type"] == "KSampler" else n for n in outer_nodes]
    inner["nodes"] = [n for n in inner["nodes"] if n["type"] == "KSampler"]  # the sampler, one level down
    inner["outputs"] = [{"id": "o0", "name": "LATENT", "type": "LATENT", "linkIds": [105]}]
    inner["inputs"] = inner["inputs"][:4]
    inner["links"] = [l for l in inner["links"] if l["id"] <= 104] + [
        {"id": 105, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"}]
    ui["definitions"]["subgraphs"].append(inner)
    (tmp_path / "n.json").write_text(json.dumps(ui))
    prompt = _load(tmp_path / "n.json")
    assert "30:1:1" in prompt and prompt["30:2"]["inputs"]["samples"] == ["30:1:1", 0]
    assert _shape(prompt) == _shape(_plain_twin())


def test_group_node_muted_mutes_its_inner_nodes(tmp_path):
    ui = json.loads((COMFY / "txt2img-group-ui.json").read_text())
    next(n for n in ui["nodes"] if n["id"] == 20)["mode"] = 2
    (tmp_path / "g.json").write_text(json.dumps(ui))
    prompt = _load(tmp_path / "g.json")
    assert "20:0" not in prompt and "positive" not in prompt["3"]["inputs"]


def test_boolean_seed_control_of_older_editors_is_skipped(tmp_path):
    ui = json.loads((COMFY / "txt2img-ui.json").read_text())
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    for control in (True, False):
        sampler["widgets_values"] = [5, control, 12, 6.5, "heun", "karras", 0.75]
        (tmp_path / "old.json").write_text(json.dumps(ui))
        inputs = _load(tmp_path / "old.json")["3"]["inputs"]
        assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"], inputs["denoise"]) == \
            (12, 6.5, "heun", "karras", 0.75)


def test_a_node_without_widget_values_gets_its_defaults(tmp_path):
    ui = json.loads((COMFY / "txt2img-ui.json").read_text())
    for node in ui["nodes"]:
        if node["type"] in ("KSampler", "EmptyLatentImage"):
            node.pop("widgets_values")
    (tmp_path / "bare.json").write_text(json.dumps(ui))
    prompt = _load(tmp_path / "bare.json")
    sampler = prompt["3"]["inputs"]
    assert sampler["seed"] == 123  # still the primitive's
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"], sampler["denoise"]) == \
        (20, 8.0, "euler", "normal", 1.0)
    assert prompt["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}


def test_booleans_are_not_numbers(cli, workflow):
    wf = workflow("""
        version: 1
        nodes:
          ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: flowrun-tiny}}
          pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: a}}
          latent: {type: EmptyLatentImage, with: {width: 64, height: 64, batch_size: 1}}
          sample:
            type: KSampler
            in: {model: ckpt.model, positive: pos, negative: pos, latent_image: latent}
            with:
              steps: true
              cfg: false
          decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
          save: {type: SaveImage, in: {images: decode}}
    """)
    r = cli("validate", wf, "--no-file-check")
    assert r.code == 2
    assert "wf.yaml:10:14: error[invalid-value]: node 'sample', field 'steps': expected an integer, got the boolean true" in r.err
    assert "wf.yaml:11:12: error[invalid-value]: node 'sample', field 'cfg': expected a number, got the boolean false" in r.err
