"""flowrun test: goldens, grades, updates, per-backend goldens, reports, the pytest plugin, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from flowrun.regress.compare import Thresholds, compare

from conftest import ROOT, TESTS

CASE = """\
version: 1
params: {size: 32, color: 0x3366CC}
sweep:
  grid: {color: [0x3366CC, 0xCC3333]}
nodes:
  a: {type: EmptyImage, with: {width: 32, height: 32, color: "{{ color }}"}}
  b: {type: EmptyImage, with: {width: 32, height: 32, color: 0xFFFFFF}}
  mix: {type: ImageBlend, in: {image1: b, image2: a}, with: {blend_factor: 0.7, blend_mode: multiply}}
  save: {type: SaveImage, in: {images: mix}, with: {filename_prefix: "c{{ '%06x' % color }}"}}
"""


@pytest.fixture
def case(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    path = folder / "blend.yaml"
    path.write_text(CASE)
    return path


def golden(case_path, name="c3366cc.png", backend="cpu"):
    return case_path.parent / "goldens" / case_path.stem / backend / name


def test_missing_golden_fails_with_the_command_that_creates_it(cli, case):
    r = cli("test", case)
    assert r.code == 1
    assert "FAIL  blend [color-3368652] c3366cc.png: no golden" in r.out
    assert f"create it with: flowrun test {case} --update" in r.out


def test_update_then_pass_then_warn_then_fail(cli, case, tmp_path):
    r = cli("test", case, "--update")
    assert r.code == 0
    assert r.out.count("golden wrote") == 2 and golden(case).is_file()
    r = cli("test", case)
    assert r.code == 0 and "2 pass, 0 warn, 0 fail" in r.out and "identical" in r.out

    pixels = np.asarray(Image.open(golden(case))).copy()
    pixels[3:5, 3:5] = np.clip(pixels[3:5, 3:5].astype(int) + 40, 0, 255)  # a few pixels off
    Image.fromarray(pixels).save(golden(case))
    r = cli("test", case)
    assert r.code == 0 and "WARN  blend [color-3368652] c3366cc.png: max difference 40" in r.out

    Image.fromarray(255 - pixels).save(golden(case))  # a lot off
    r = cli("test", case)
    assert r.code == 1 and "FAIL  blend [color-3368652] c3366cc.png: max difference" in r.out

    r = cli("test", case, "--update")
    assert "golden rewrote" in r.out and r.out.count("golden ") == 1  # only the changed one is listed
    (golden(case).parent / "stale.png").write_bytes(golden(case).read_bytes())
    r = cli("test", case, "--update")
    assert "golden removed" in r.out and not (golden(case).parent / "stale.png").exists()


def test_thresholds_from_the_workflow(cli, case):
    cli("test", case, "--update")
    pixels = np.asarray(Image.open(golden(case))).copy()
    pixels[0, 0] = np.clip(pixels[0, 0].astype(int) + 5, 0, 255)
    Image.fromarray(pixels).save(golden(case))
    assert "WARN" in cli("test", case).out
    case.write_text(CASE + "test: {pass_max_diff: 8}\n")
    r = cli("test", case)
    assert r.code == 0 and "max difference 5 <= 8" in r.out


def test_goldens_per_backend_with_fallback(cli, case):
    cli("test", case, "--update")
    r = cli("test", case, "--backend", "cuda")
    assert r.code == 0 and "2 pass" in r.out  # no cuda goldens: falls back to cpu's
    cuda = golden(case, backend="cuda")
    cuda.parent.mkdir(parents=True)
    pixels = np.asarray(Image.open(golden(case)))
    Image.fromarray(255 - pixels).save(cuda)
    (cuda.parent / "ccc3333.png").write_bytes(golden(case, "ccc3333.png").read_bytes())
    assert cli("test", case, "--backend", "cuda").code == 1  # the cuda set is used once it exists
    assert cli("test", case).code == 0


def test_reports(cli, case, tmp_path):
    cli("test", case, "--update")
    Image.fromarray(255 - np.asarray(Image.open(golden(case)))).save(golden(case))
    cli("test", case, "--report", tmp_path / "rep")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6  # golden, new, difference for 2 files
    assert page.index("c3366cc.png") < page.index("ccc3333.png")  # failures first
    assert "FAIL" in page and "&quot;color&quot;: 3368652" in page
    suite = ET.parse(tmp_path / "rep" / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["counts"] == {"pass": 1, "warn": 0, "fail": 1, "error": 0}


def test_invalid_case_exit_2(cli, case):
    case.write_text(CASE.replace("EmptyImage", "EmptyImag"))
    r = cli("test", case)
    assert r.code == 2 and "unknown node type 'EmptyImag'" in r.err


def test_compare_grades():
    a = np.zeros((16, 16, 3), np.uint8)
    t = Thresholds()
    assert compare(a, a, t).reason == "identical"
    b = a.copy()
    b[0, 0] = 2
    assert compare(b, a, t).grade == "pass"
    assert compare(np.full_like(a, 255), a, t).grade == "fail"
    assert compare(a[:8], a, t).reason.startswith("size differs")


def test_pytest_plugin_collects_one_item_per_cell(case, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}:{ROOT}"}
    env.pop("FLOWRUN_PLUGINS", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(case.parent)]
    r = subprocess.run(cmd + ["-q", "--flowrun-update"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
    r = subprocess.run(cmd + ["-v"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "blend.yaml::color-3368652 PASSED" in r.stdout and "blend.yaml::color-13382451 PASSED" in r.stdout
    Image.fromarray(255 - np.asarray(Image.open(golden(case)))).save(golden(case))
    r = subprocess.run(cmd + ["-q"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout
    assert "blend.yaml [color-3368652]: c3366cc.png: max difference" in r.stdout


def test_bit_identical_across_processes_and_thread_counts(tmp_path):
    """The bundled model's txt2img in fresh processes with 1 and 2 torch threads: the same PNG bytes."""
    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        env.pop("FLOWRUN_PLUGINS", None)
        out = tmp_path / f"t{threads}"
        r = subprocess.run([sys.executable, "-m", "flowrun", "run", str(ROOT / "workflows" / "txt2img.yaml"),
                            "--no-cache", "--out", str(out), "-q"], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        outs.append((out / "txt2img-seed42.png").read_bytes())
    assert outs[0] == outs[1]
