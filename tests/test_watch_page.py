"""flowrun watch --serve: the latent-to-RGB projection (fixed numbers), the samplers' preview hook, the
page's server (index, state, the latest outputs, previews, nothing else), and the page in a real browser
(headless chromium): it shows the grid's images with their sweep values and updates after a new render."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from flowrun.diffusion import latent_preview
from flowrun.execute.events import Events
from flowrun.settings import Settings
from flowrun.watch.serve import PageServer, PreviewEvents, WatchState, grid
from flowrun.watch.session import Session

from test_watch import SWATCH

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_the_projection_gives_comfyuis_latent2rgb_colours():
    latent = np.zeros((1, 4, 1, 3), np.float32)
    latent[0, 0, 0, 0] = 1.0  # SD1's first channel: 0.3512, 0.2297, 0.3227
    latent[0, 3, 0, 1] = -1.0  # minus the fourth: 0.2120, 0.2616, 0.7177
    latent[0, :, 0, 2] = [4.0, 4.0, 0.0, 0.0]  # out of range: clipped at white
    rgb = latent_preview.to_rgb(torch.from_numpy(latent), latent_preview.SD15)
    # (x + 1) / 2 * 255, truncated: 172.28, 156.79, 168.65 | 154.53, 160.85, 219.01 | 255
    assert rgb.tolist() == [[[[172, 156, 168], [154, 160, 219], [255, 255, 255]]]]
    zero = latent_preview.to_rgb(np.zeros((2, 4, 2, 2), np.float32), latent_preview.SDXL)
    assert zero.shape == (2, 2, 2, 3) and (zero == [141, 125, 127]).all()  # SDXL's bias alone
    flux = np.zeros((1, 16, 1, 1), np.float32)
    flux[0, 15] = 1.0
    assert latent_preview.to_rgb(flux, latent_preview.FLUX).tolist() == [[[[107, 105, 106]]]]  # last row + bias: 107.21, 105.83, 106.73


def test_a_vae_gets_its_own_format_and_an_unknown_one_none():
    assert latent_preview.format_for("sd1", 4, 0.18215) is latent_preview.SD15
    assert latent_preview.format_for("sd2", 4, 0.18215) is latent_preview.SD15
    assert latent_preview.format_for("sdxl_refiner", 4, 0.13025) is latent_preview.SDXL
    assert latent_preview.format_for("sd3", 16, 1.5305) is latent_preview.SD3
    assert latent_preview.format_for("sd1", 4, 0.30224) is latent_preview.FLOWRUN_TINY  # the bundled model's VAE
    assert latent_preview.format_for("sd1", 4, 0.5) is None  # another VAE: SD1's factors would mislead
    assert latent_preview.format_for("sdxl", 16, 0.13025) is None  # channels that are not the format's
    assert latent_preview.format_for("unknown", 4, 0.18215) is None


def test_the_sampler_previews_each_steps_prediction(tiny_bundle):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import ksample_batch
    from flowrun.diffusion.noise import SeedNoise
    from flowrun.values import Latent

    model, clip, _ = tiny_bundle
    cond = encode(clip, "a red circle")
    seen = []
    out = ksample_batch(model, noise=SeedNoise([1, 2]), cfgs=[5.0], steps=3, sampler_name="euler",
                        scheduler="normal", positive=cond, negative=encode(clip, ""),
                        latent=Latent(torch.zeros(1, 4, 4, 4)),
                        preview=lambda step, total, x0, fmt: seen.append((step, total, x0.clone(), fmt)))
    assert [(s, t, f.name) for s, t, _, f in seen] == [(1, 3, "sd15"), (2, 3, "sd15"), (3, 3, "sd15")]
    assert seen[0][2].shape == (2, 4, 4, 4)  # both cells' rows
    # euler's last step lands on its prediction: the last preview is the result, in the model's space
    final = model.latent_in(torch.cat([o.samples for o in out]))
    torch.testing.assert_close(seen[-1][2], final, atol=1e-5, rtol=1e-5)


class _Recorder(Events):
    def __init__(self, wants: bool):
        self.wants_previews = wants
        self.calls = []

    def node_preview(self, task, blocks, step, total, denoised, fmt):
        self.calls.append((task.node_id, blocks, step, total, denoised.clone(), fmt.name))


def test_the_runner_asks_for_previews_only_when_someone_listens(tiny_models, workflow, tmp_path):
    from flowrun import api

    # seeds 2 and 10: the batch's rows in sweep order, which is not the labels' alphabetical order
    wf = workflow("""\
    version: 1
    sweep: {grid: {seed: [2, 10]}}
    nodes:
      ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}
      pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: a red circle}}
      latent: {type: EmptyLatentImage, with: {width: 32, height: 32}}
      sample: {type: KSampler, in: {model: ckpt.model, positive: pos, negative: pos, latent_image: latent},
               with: {seed: "{{ seed }}", steps: 2, cfg: 1.0}}
      decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
      save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: "s{{ seed }}"}}
    """)
    settings = Settings(out_dir=tmp_path / "out", use_cache=False, models_dirs=(str(tiny_models),))
    quiet = _Recorder(False)
    api.run(api.load(wf), settings, events=quiet)
    assert quiet.calls == []
    batched = _Recorder(True)
    api.run(api.load(wf), settings, events=batched)
    h = 32 // 8
    assert [(n, b, s, t, tuple(x.shape), f) for n, b, s, t, x, f in batched.calls] == [
        ("sample", [["seed-2"], ["seed-10"]], s, 2, (2, 4, h, h), "sd15") for s in (1, 2)]
    settings.batch = False
    alone = _Recorder(True)
    api.run(api.load(wf), settings, events=alone)
    last = {b[0][0]: x for _, b, s, _, x, _ in alone.calls if s == 2}
    assert sorted(last) == ["seed-10", "seed-2"] and all(x.shape[0] == 1 for x in last.values())
    for row, block in enumerate(batched.calls[-1][1]):  # each block's rows are that cell's
        torch.testing.assert_close(batched.calls[-1][4][row:row + 1], last[block[0]], atol=1e-4, rtol=1e-4)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _watched(tmp_path, workflow):
    wf = workflow(SWATCH)
    state = WatchState(str(wf))
    session = Session(wf, settings=Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache"))
    session.events = PreviewEvents(state, lambda: [{"label": c.label, "values": c.values}
                                                   for c in session.resolved.cells])
    state.outcome(session.step())
    return wf, state, session


def test_the_grid_puts_the_first_axis_along_the_columns():
    cells = [{"label": f"a-{a}_b-{b}", "values": {"a": a, "b": b, "fixed": 1}} for b in (1, 2) for a in ("x", "y")]
    assert grid(cells) == {"column_axis": "a", "columns": ["a=x", "a=y"],
                           "rows": [{"title": "b=1", "cells": ["a-x_b-1", "a-y_b-1"]},
                                    {"title": "b=2", "cells": ["a-x_b-2", "a-y_b-2"]}]}
    assert grid([{"label": "only", "values": {}}])["rows"] == [{"title": "", "cells": ["only"]}]


def test_the_server_serves_the_page_the_state_the_latest_outputs_and_previews(tmp_path, workflow):
    wf, state, session = _watched(tmp_path, workflow)
    with PageServer(state) as server:
        url = server.url
        assert url.startswith("http://127.0.0.1:")
        code, page = _get(url)
        assert code == 200 and b"state.json" in page and b"selfcheck" in page
        code, body = _get(url + "state.json")
        data = json.loads(body)
        assert data["runs"] == 1 and data["status"] == "ran"
        assert data["grid"]["columns"] == ["size=8", "size=16"]
        assert [(c["label"], c["files"]) for c in data["cells"]] == [("size-8", ["sw-8.png"]), ("size-16", ["sw-16.png"])]
        code, png = _get(url + "files/sw-16.png")
        assert code == 200 and png == (tmp_path / "out" / "sw-16.png").read_bytes()
        for name in ("run.json", "../out/sw-8.png", "%2e%2e/out/sw-8.png", "nope.png"):  # only the outputs
            assert _get(url + "files/" + name)[0] == 404, name
        assert _get(url + "preview/0.png")[0] == 404  # nothing is sampling

        # a sampler step: each cell's first image projected, served as PNG while it samples
        latent = torch.zeros(2, 4, 1, 2)
        latent[1, 0] = 1.0  # the second cell's image: SD1's first channel
        task = SimpleNamespace(node_id="sample")
        session.events.node_preview(task, [["size-8"], ["size-16"]], 3, 10, latent, latent_preview.SD15)
        code, png = _get(url + "preview/1.png")
        assert code == 200 and np.asarray(Image.open(io.BytesIO(png))).tolist() == [[[172, 156, 168]] * 2]
        code, png = _get(url + "preview/0.png")
        assert np.asarray(Image.open(io.BytesIO(png))).tolist() == [[[127, 127, 127]] * 2]
        data = json.loads(_get(url + "state.json")[1])
        assert data["cells"][1]["preview"] == {"step": 3, "total": 10, "version": data["version"]}

        # a long poll answers as soon as something changes
        version = data["version"]
        answer = {}
        waiting = threading.Thread(target=lambda: answer.update(json.loads(_get(f"{url}state.json?since={version}")[1])))
        waiting.start()
        deadline = time.monotonic() + 10
        while state.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        wf.write_text(SWATCH.replace("0xE0402A", "0x000000"))
        state.outcome(session.step())
        waiting.join(10)
        # the first news: a node of the new run started (the answer may come a node or two later)
        assert answer["version"] > version and answer["status"] == "running"
        assert answer["running"] in ("swatch", "inverse", "save")
        data = json.loads(_get(url + "state.json")[1])
        assert data["runs"] == 2 and data["status"] == "ran"
        assert all(c["preview"] is None for c in data["cells"])  # previews end with the run

        # a new sweep value: its cell is laid out when the run starts, before its file exists
        seen_cells = []
        original = state.node_running
        state.node_running = lambda node: (seen_cells.append([c["files"] for c in state.snapshot()["cells"]]),
                                           original(node))
        wf.write_text(SWATCH.replace("[8, 16]", "[8, 16, 24]").replace("0xE0402A", "0x000000"))
        state.outcome(session.step())
        state.node_running = original
        assert seen_cells[0] == [["sw-8.png"], ["sw-16.png"], []]
        assert [c["files"] for c in json.loads(_get(url + "state.json")[1])["cells"]] == [
            ["sw-8.png"], ["sw-16.png"], ["sw-24.png"]]


class _SelfCheck(HTMLParser):
    def __init__(self, page: str):
        super().__init__()
        self.check = {}
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") == "selfcheck":
            self.check = a


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (Debian: apt-get install chromium): "
                                             "the watch page's browser check cannot run")
def test_the_page_in_a_browser_shows_the_grid_and_updates_after_a_new_render(tmp_path, workflow):
    wf, state, session = _watched(tmp_path, workflow)
    with PageServer(state) as server:
        def edit_when_the_page_waits():
            deadline = time.monotonic() + 60

            def page_waits_for(version: int) -> None:
                while (state.waiting == 0 or state.version < version) and time.monotonic() < deadline:
                    time.sleep(0.02)

            page_waits_for(state.version)  # the page is there, waiting for news
            latent = torch.zeros(2, 4, 1, 1)
            latent[0, 0] = 1.0  # cell size-8's preview: SD1's first channel
            session.events.node_preview(SimpleNamespace(node_id="sample"), [["size-8"], ["size-16"]], 1, 2,
                                        latent, latent_preview.SD15)
            page_waits_for(state.version)
            time.sleep(0.5)  # the previews load (virtual time stands still while they do)
            wf.write_text(SWATCH.replace("0xE0402A", "0x2040E0"))
            state.outcome(session.step())
            while (state.waiting == 0 or state.runs < 2) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.0)  # the new images load (virtual time stands still while they do)
            server.close()  # the page's next poll fails, and its time budget runs out

        editor = threading.Thread(target=edit_when_the_page_waits, daemon=True)
        editor.start()
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
               server.url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        editor.join(10)
    assert r.returncode == 0 and "selfcheck" in r.stdout, r.stderr[-3000:]
    check = _SelfCheck(r.stdout).check
    assert check["data-runs"] == "2" and check["data-status"] == "ran"
    assert check["data-images"] == check["data-images-loaded"] == "2"
    assert json.loads(check["data-sources"]) == ["files/sw-8.png?run=2", "files/sw-16.png?run=2"]
    assert json.loads(check["data-captions"]) == ["size=8", "size=16"]
    assert json.loads(check["data-columns"]) == ["", "size=8", "size=16"]
    assert check["data-previews-loaded"] == "2" and json.loads(check["data-preview-pixels"]) == {"0": "172,156,168", "1": "127,127,127"}
    assert check["data-previews"] == "0"  # gone once the run is done
    new = np.asarray(Image.open(tmp_path / "out" / "sw-8.png"))[0, 0, :3]
    assert check["data-first-pixel"] == ",".join(str(int(v)) for v in new)  # the new render's colour
    assert tuple(int(v) // 4 for v in new) == (0xDF // 4, 0xBF // 4, 0x1F // 4)  # 255 - 0x2040E0
