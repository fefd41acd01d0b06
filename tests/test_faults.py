"""Faults lose nothing: Ctrl-C stops within a step, exits 130 and records the interruption; SIGKILL at
random moments, again and again, leaves no truncated PNG, no corrupt cache entry, and a valid or absent
manifest, and the next run finishes the work, reusing what was done."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from PIL import Image

from flowrun.cache import housekeeping as hk
from flowrun.cache.disk import DiskStore

from conftest import ROOT, TESTS

STEP_S = 0.5

STEPPED = """
version: 1
params: {{n: 1}}
sweep:
  grid: {{n: [1, 2, 3]}}
nodes:
  t: {{type: Text, with: {{text: "c{{{{ n }}}}"}}}}
  s: {{type: Steps, in: {{text: t}}, with: {{steps: 6, log: "{log}"}}}}
  out: {{type: WriteText, in: {{text: s}}, with: {{filename_prefix: "out-{{{{ n }}}}"}}}}
"""


def _start(args, tmp_path, **env):
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "FLOWRUN_PLUGINS": "engine_nodes",
            "FLOWRUN_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.Popen([sys.executable, "-m", "flowrun", *map(str, args)], env=full, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_ctrl_c_stops_within_one_step_exits_130_and_records_it(tmp_path):
    log = tmp_path / "steps.log"
    wf = tmp_path / "wf.yaml"
    wf.write_text(STEPPED.format(log=log))
    proc = _start(["run", wf, "--out", tmp_path / "out", "--no-batch"], tmp_path, FLOWRUN_TEST_SLOW=str(STEP_S))

    def steps_logged():
        return log.read_text().splitlines() if log.exists() else []

    # interrupt in the middle of the second cell's steps
    assert _wait_for(lambda: any(line.startswith("c2#") and line.split()[1] == "2" for line in steps_logged()))
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped = time.time() - sent
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    later = [line for line in steps_logged() if float(line.split()[2]) > sent]
    assert later == [] and stopped < STEP_S, (later, stopped)  # not one more step, and out within a step

    out = tmp_path / "out"
    assert (out / "out-1.txt").exists() and not (out / "out-2.txt").exists()  # finished outputs kept
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "interrupted" and m["error"] == "interrupted by the user"
    status = {(n["id"], n["cells"][0]): n["status"] for n in m["nodes"]}
    assert status[("out", "n-1")] == "executed" and status[("s", "n-2")] == "interrupted"
    assert status[("s", "n-3")] == "skipped"
    assert not list(out.rglob("*.tmp"))


def test_ctrl_c_during_sampling(tmp_path, tiny_models):
    wf = tmp_path / "wf.yaml"
    wf.write_text((ROOT / "workflows" / "txt2img.yaml").read_text().replace("steps: 20", "steps: 2000"))
    proc = _start(["run", wf, "--out", tmp_path / "out", "--models-dir", tiny_models, "--sweep", "seed=1,2"],
                  tmp_path)
    # wait until the sampler is running: the encoders are cached once their entries appear
    assert _wait_for(lambda: len(hk.entries(DiskStore(tmp_path / "cache"))) >= 2)
    time.sleep(1.0)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert time.time() - sent < 1.0  # out at once: no teardown of torch (0.7 s) after run.json is written
    m = json.loads((tmp_path / "out" / "run.json").read_text())
    assert m["status"] == "interrupted"
    assert [n["status"] for n in m["nodes"] if n["id"] == "sample"][0] == "interrupted"
    assert not list((tmp_path / "out").glob("*.png"))


KILLED = """
version: 1
params: {{n: 1}}
sweep:
  grid: {{n: [1, 2, 3, 4, 5, 6]}}
nodes:
  t: {{type: Text, with: {{text: "c{{{{ n }}}}"}}}}
  s: {{type: Steps, in: {{text: t}}, with: {{steps: 2}}}}
  out: {{type: WriteText, in: {{text: s}}, with: {{filename_prefix: "text-{{{{ n }}}}"}}}}
  noise: {{type: LoadImage, with: {{image: noise.png}}}}
  tint: {{type: EmptyImage, with: {{width: 512, height: 512, color: "{{{{ n * 40000 }}}}"}}}}
  blend: {{type: ImageBlend, in: {{image1: noise.image, image2: tint}}, with: {{blend_factor: 0.3}}}}
  save: {{type: SaveImage, in: {{images: blend}}, with: {{filename_prefix: "img-{{{{ n }}}}"}}}}
"""
TRIALS = int(os.environ.get("FLOWRUN_KILL_TRIALS", "12"))


def _check_nothing_lost(out: Path, cache: Path) -> None:
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            im.load()  # a truncated PNG raises here
    for tmp in out.glob(".*"):
        assert tmp.suffix == ".tmp"  # only write_atomic's temporaries, never a visible partial file
    manifest = out / "run.json"
    if manifest.exists():
        assert json.loads(manifest.read_text())["status"] in {"ok", "failed", "interrupted"}
    store = DiskStore(cache)
    shards = [p for p in store.base.glob("??") if p.is_dir()] if store.base.is_dir() else []
    half = [e for shard in shards for e in shard.iterdir() if not (e / "meta.json").is_file()]
    assert half == []  # an entry is published whole by one rename, or not at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt entry would be discarded with a CacheWarning
        for entry in hk.entries(store):
            assert store.get(entry.key) is not None


def _unreadable_png(out: Path, seen: dict) -> bool:
    for png in out.glob("*.png"):
        try:
            stamp = png.stat()
            if seen.get(png.name) == (stamp.st_size, stamp.st_mtime_ns):
                continue
            with Image.open(png) as im:
                im.load()
            seen[png.name] = (stamp.st_size, stamp.st_mtime_ns)
        except (OSError, SyntaxError):
            return True
    return False


def _writing(out: Path, cache: Path, seen: dict) -> bool:
    """A write in progress: an output's temporary file, a cache entry not yet published, or (which must
    never happen) a visible PNG that does not decode."""
    if _unreadable_png(out, seen):
        return True
    tmp = cache / "v1" / "tmp"
    if tmp.is_dir() and any(True for _ in tmp.iterdir()):
        return True
    shards = [p for p in (cache / "v1").glob("??")] if (cache / "v1").is_dir() else []
    return any(not (e / "meta.json").exists() for s in shards for e in s.iterdir()) or any(out.glob(".*.tmp"))


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(KILLED.format())
    noise = random.Random(1).randbytes(512 * 512 * 3)  # incompressible: each PNG takes a while to write
    Image.frombytes("RGB", (512, 512), noise).save(tmp_path / "noise.png")
    reference = _start(["run", wf, "--out", tmp_path / "ref", "--cache-dir", tmp_path / "ref-cache"], tmp_path,
                       FLOWRUN_TEST_SLOW="0.05")
    t0 = time.time()
    assert reference.wait(timeout=120) == 0, reference.communicate()[1]
    full = time.time() - t0

    rng = random.Random(int(os.environ.get("FLOWRUN_KILL_SEED", "7")))
    out, cache = tmp_path / "out", tmp_path / "cache"
    survived = caught_writing = 0
    for trial in range(TRIALS):
        proc = _start(["run", wf, "--out", out, "-q"], tmp_path, FLOWRUN_TEST_SLOW="0.05")
        if trial % 2:  # at a random moment
            time.sleep(rng.uniform(0.2, full))
        else:  # the moment a file or cache entry is seen being written, when a kill hurts most
            seen: dict = {}
            caught_writing += _wait_for(lambda: proc.poll() is not None or _writing(out, cache, seen), timeout=60) \
                and proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _check_nothing_lost(out, cache)
        survived += 1

    proc = _start(["run", wf, "--out", out, "--json"], tmp_path, FLOWRUN_TEST_SLOW="0.05")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    m = json.loads(stdout)
    reused = sum(n["status"] in {"cached", "skipped"} for n in m["nodes"])
    assert reused > 0  # finished work was kept
    ref = tmp_path / "ref"
    names = sorted(p.name for p in ref.iterdir() if p.suffix in {".png", ".txt"})  # 6 + 6 + contact sheet
    assert len(names) == 13 and sorted(p.name for p in out.iterdir() if p.suffix in {".png", ".txt"}) == names
    assert all((out / n).read_bytes() == (ref / n).read_bytes() for n in names)
    assert not list(out.glob(".*.tmp"))  # the completed run cleared what killed runs left
    print(f"kill trials survived: {survived}, of which killed mid-write: {caught_writing}")
    assert survived == TRIALS and caught_writing >= 1
