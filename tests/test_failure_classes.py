"""Why a regression render no longer matches its golden: goldens record what made them (golden.json), and
a failing cell is classified as a changed graph, a changed environment or nondeterminism; --accept
rewrites exactly the named cells' goldens, --accept-env-drift those that drifted with the environment."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from test_regress import CASE, golden

BLUE, RED = "blend/color-3368652", "blend/color-13382451"


@pytest.fixture
def case(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    path = folder / "blend.yaml"
    path.write_text(CASE)
    return path


def _record(case):
    return json.loads((golden(case).parent / "golden.json").read_text())


def _spoil(path):
    pixels = np.asarray(Image.open(path)).copy()
    pixels[0:4, 0:4] = 255 - pixels[0:4, 0:4]
    Image.fromarray(pixels).save(path)


def test_goldens_record_graph_and_environment(cli, case):
    assert cli("test", case, "--update").code == 0
    record = _record(case)
    assert set(record["files"]) == {"c3366cc.png", "ccc3333.png"}
    blue = record["files"]["c3366cc.png"]
    assert blue["cells"] == ["color-3368652"] and len(blue["graph_key"]) == 64
    env = record["environments"][blue["environment"]]
    assert env["device"] == "cpu" and env["versions"]["numpy"] and env["code"].startswith(env["flowrun"])
    assert record["files"]["c3366cc.png"]["graph_key"] != record["files"]["ccc3333.png"]["graph_key"]


def test_an_edited_workflow_is_a_graph_change_and_accept_takes_one_cell(cli, case, tmp_path):
    cli("test", case, "--update")
    case.write_text(CASE.replace("blend_factor: 0.7", "blend_factor: 0.5"))
    r = cli("test", case)
    assert r.code == 1 and r.out.count("graph: the graph changed") == 2
    assert f"accept with: flowrun test {case} --accept {BLUE}" in r.out
    summary = json.loads((tmp_path / "out" / "flowrun-test" / "summary.json").read_text())
    assert [o["cause"] for o in summary["cases"][0]["outcomes"]] == ["graph", "graph"]
    junit = (tmp_path / "out" / "flowrun-test" / "junit.xml").read_text()
    assert junit.count('type="graph"') == 2
    html = (tmp_path / "out" / "flowrun-test" / "report.html").read_text()
    assert '<span class="cause">graph</span>' in html and f"--accept {RED}" in html

    before_red = golden(case, "ccc3333.png").read_bytes()
    r = cli("test", case, "--accept", BLUE)
    assert r.out.count("golden rewrote") == 1 and "c3366cc.png" in r.out.split("golden rewrote")[1]
    assert r.code == 1 and "1 pass" in r.out and "1 fail" in r.out  # the other cell still fails
    assert golden(case, "ccc3333.png").read_bytes() == before_red
    assert _record(case)["files"]["ccc3333.png"]["graph_key"] != _record(case)["files"]["c3366cc.png"]["graph_key"]
    assert cli("test", case, "--accept", "blend").code == 0  # the whole case


def test_another_environment_is_drift_and_can_be_accepted(cli, case):
    cli("test", case, "--update")
    record = _record(case)
    for env in record["environments"].values():
        env["versions"]["torch"] = "1.0.0"  # as if the goldens were made with another torch
    (golden(case).parent / "golden.json").write_text(json.dumps(record))
    for name in ("c3366cc.png", "ccc3333.png"):
        _spoil(golden(case, name))  # ... which rendered other pixels
    r = cli("test", case)
    assert r.code == 1 and r.out.count("environment: same graph, other environment: torch 1.0.0 -> ") == 2
    r = cli("test", case, "--accept-env-drift")
    assert r.out.count("golden rewrote") == 2 and r.code == 0
    assert all(e["versions"]["torch"] != "1.0.0" for e in _record(case)["environments"].values())


def test_same_graph_same_environment_other_pixels_is_nondeterminism(cli, workflow, tmp_path):
    folder = tmp_path / "nd"
    folder.mkdir()
    wf = folder / "noisy.yaml"
    wf.write_text("version: 1\nnodes:\n  img: {type: UnseededNoiseImage}\n"
                  "  save: {type: SaveImage, in: {images: img}, with: {filename_prefix: noisy}}\n")
    assert cli("test", wf, "--update", "--no-cache").code == 0
    r = cli("test", wf, "--no-cache")
    assert r.code == 1 and "nondeterminism: same graph, same environment, other pixels" in r.out
    r = cli("test", wf, "--no-cache", "--accept-env-drift")
    assert "golden rewrote" not in r.out  # nondeterminism is never accepted as drift
