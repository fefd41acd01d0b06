"""report.html in a real browser (headless chromium): every image loads, the summary shows summary.json's
counts, filters hide rows, blink is built, user data is escaped; and the difference image amplifies."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from flowrun.regress.compare import heatmap

from test_regress import CASE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BAD_NAME = "bad<img src=x onerror=alert(1)>"  # a case name a page that forgot to escape would turn into an img


def test_a_one_level_difference_is_coloured_not_black():
    golden = np.full((8, 8, 3), 100, np.uint8)
    new = golden.copy()
    new[2, 3, 1] = 101
    new[4, 4] = 140
    golden[5, 5], new[5, 5] = 0, 255
    h = heatmap(new, golden)
    assert tuple(h[2, 3]) == (169, 0, 0)  # 1 level: clearly red
    assert tuple(h[4, 4]) == (255, 87, 0)  # 40 levels: orange
    assert tuple(h[5, 5]) == (255, 255, 0)  # 255 levels: yellow
    h[2, 3] = h[4, 4] = h[5, 5] = 0
    assert not h.any()  # black where equal


def test_a_single_pixel_of_a_large_image_stays_visible_when_shown_small():
    golden = np.zeros((1024, 1024, 3), np.uint8)
    new = golden.copy()
    new[500, 501, 2] = 1
    h = heatmap(new, golden, display=256)
    lit = np.argwhere(h[..., 0] > 0)
    # spread over a 4x4 block (1024 / 256): any sampling of every 4th pixel, as a scaled display does, hits it
    assert len(lit) == 16 and (lit.max(0) - lit.min(0)).tolist() == [3, 3] and [500, 501] in lit.tolist()


class _Dom(HTMLParser):
    """The self-check element's and the table rows' attributes of a dumped page."""

    def __init__(self, page: str):
        super().__init__()
        self.check, self.rows, self.blink_images = {}, [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") == "selfcheck":
            self.check = a
        elif tag == "tr" and "cell" in (a.get("class") or "").split():
            self.rows.append(a)
        elif tag == "img" and a.get("alt") in ("golden", "new") and a.get("class", "") in ("", "off"):
            self.blink_images.append((a["alt"], a.get("class", "")))  # made by the page's script


def _open(url: str, tmp_path) -> _Dom:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=3000", "--dump-dom", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "selfcheck" in r.stdout, r.stderr[-3000:]
    return _Dom(r.stdout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (Debian: apt-get install chromium): "
                                             "the report's browser check cannot run")
def test_report_in_a_browser(cli, tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "blend.yaml").write_text(CASE.replace("[0x3366CC, 0xCC3333]", "[0x3366CC, 0xCC3333, 0x33CC66]"))
    (folder / f"{BAD_NAME}.yaml").write_text(CASE.replace("EmptyImage", "<i>Nope</i>"))
    assert cli("test", folder / "blend.yaml", "--update").code == 0
    goldens = folder / "goldens" / "blend" / "cpu"
    spoil = {"c3366cc.png": lambda p: p.__setitem__((0, 0, 0), p[0, 0, 0] ^ 1),  # 1 level: pass
             "ccc3333.png": lambda p: p.__setitem__((slice(3, 5), slice(3, 5)), np.clip(p[3:5, 3:5] + 40, 0, 255)),
             "c33cc66.png": lambda p: p.__setitem__(Ellipsis, 255 - p)}  # fail
    for name, change in spoil.items():
        pixels = np.asarray(Image.open(goldens / name)).astype(int)
        change(pixels)
        Image.fromarray(pixels.astype(np.uint8)).save(goldens / name)
    record = json.loads((goldens / "golden.json").read_text())
    record["files"]["c33cc66.png"]["graph_key"] = "0" * 64  # as if the workflow had changed: cause graph
    (goldens / "golden.json").write_text(json.dumps(record))

    assert cli("test", folder, "--report", tmp_path / "rep").code == 2  # the invalid case
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["counts"] == {"pass": 1, "warn": 1, "fail": 1, "error": 1}
    assert summary["causes"] == {"nondeterminism": 2, "environment": 0, "graph": 1, "unrecorded": 0}
    report = tmp_path / "rep" / "report.html"
    page = report.read_text()
    assert "<img src=x" not in page and "bad&lt;img src=x onerror=alert(1)&gt;" in page
    assert "http://" not in page and "https://" not in page  # self-contained

    dom = _open(report.as_uri(), tmp_path)
    check = dom.check
    assert check["data-loaded"] == "yes"
    assert int(check["data-images"]) == 3 * 3 + 3 * 2  # golden, new, difference and the blink pair per file
    assert check["data-images-loaded"] == check["data-images"]
    assert check["data-rows"] == check["data-shown-rows"] == "4"
    expected = {**{f"grade:{g}": n for g, n in summary["counts"].items()},
                **{f"cause:{c}": n for c, n in summary["causes"].items()}, "cause:none": 1}
    assert json.loads(check["data-shown-counts"]) == expected  # the summary the page shows
    assert json.loads(check["data-row-counts"]) == {k: v for k, v in expected.items() if v}  # ... and its rows
    assert [r["data-grade"] for r in dom.rows] == ["error", "fail", "warn", "pass"]  # failures first
    assert int(check["data-blink-ticks"]) >= 2
    pairs = [dom.blink_images[i:i + 2] for i in range(0, len(dom.blink_images), 2)]
    assert len(pairs) == 3 and all([alt for alt, _ in p] == ["golden", "new"] for p in pairs)
    assert all(sorted(css for _, css in p) == ["", "off"] for p in pairs)  # stacked, one of them shown

    # the filters as a link gives them: pass is hidden by its grade, warn by its cause
    dom = _open(report.as_uri() + "#grade=error,fail,warn&cause=graph,none", tmp_path)
    assert dom.check["data-shown-rows"] == "2"
    assert [(r["data-grade"], r["data-cause"]) for r in dom.rows if "hidden" not in r] == [("error", "none"),
                                                                                         ("fail", "graph")]
