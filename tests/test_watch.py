"""flowrun watch: a session re-renders only what an edit changed, renders nothing for a comment, keeps the
last outputs through an invalid save or a failed node and recovers, keeps models in memory between runs;
watchfiles drives it from real saves; the command leaves on Ctrl-C as `run` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from flowrun.settings import Settings
from flowrun.watch.loop import watch
from flowrun.watch.session import FAILED, INVALID, RAN, UNCHANGED, Session

from conftest import ROOT, TESTS

SWATCH = """\
version: 1
name: swatch
params: {colour: 0xE0402A}
sweep: {grid: {size: [8, 16]}}
nodes:
  swatch:
    type: EmptyImage
    with: {width: "{{ size }}", height: 8, color: "{{ colour }}"}
  inverse:
    type: ImageInvert
    in: {image: swatch}
  save:
    type: SaveImage
    in: {images: inverse}
    with: {filename_prefix: "sw-{{ size }}"}
"""


def session(path: Path, tmp_path: Path, **settings) -> Session:
    return Session(path, settings=Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **settings))


def pixel(path: Path) -> tuple[int, ...]:
    """The top left pixel, to the nearest 2 levels (SaveImage's float to 8-bit rounding)."""
    return tuple(int(v) // 2 * 2 for v in np.asarray(Image.open(path))[0, 0, :3])


def test_an_edit_re_renders_only_what_it_changed(workflow, tmp_path):
    wf = workflow(SWATCH)
    s = session(wf, tmp_path)
    first = s.step()
    assert first.status == RAN and len(first.executed) == 6 and first.cached == 0
    out = tmp_path / "out" / "sw-8.png"
    assert pixel(out) == (30, 190, 212)  # 255 - (0xE0, 0x40, 0x2A), within a level
    wf.write_text(SWATCH.replace("0xE0402A", "0x102030"))
    again = s.step()
    assert again.status == RAN
    assert sorted(n.node for n in again.executed) == ["inverse", "inverse", "save", "save", "swatch", "swatch"]
    assert pixel(out) == (238, 222, 206)
    wf.write_text(SWATCH.replace("[8, 16]", "[8, 16, 24]").replace("0xE0402A", "0x102030"))
    grown = s.step()  # a new cell: only its nodes run
    assert [n.cells for n in grown.executed] == [["size-24"]] * 3 and grown.cached == 6
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "ok"


def test_a_save_that_changes_only_comments_renders_nothing(workflow, tmp_path):
    wf = workflow(SWATCH)
    s = session(wf, tmp_path)
    assert s.step().status == RAN
    out = tmp_path / "out" / "sw-8.png"
    before = out.stat().st_mtime_ns
    wf.write_text("# a note\n" + SWATCH.replace("name: swatch", "name: swatch   # same\n\n"))
    same = s.step()
    assert same.status == UNCHANGED and same.executed == [] and same.files == []
    assert out.stat().st_mtime_ns == before


def test_an_invalid_save_keeps_the_outputs_and_the_next_valid_one_renders(workflow, tmp_path):
    wf = workflow(SWATCH)
    s = session(wf, tmp_path)
    assert s.step().status == RAN
    out = tmp_path / "out" / "sw-16.png"
    kept = out.read_bytes()
    wf.write_text(SWATCH.replace("type: ImageInvert", "type: ImageInvrt"))
    bad = s.step()
    assert bad.status == INVALID
    assert f"{wf}:10:11: error[unknown-node-type]: node 'inverse', field 'type': unknown node type 'ImageInvrt'" \
        in bad.message and "did you mean 'ImageInvert'" in bad.message and "Traceback" not in bad.message
    assert out.read_bytes() == kept
    wf.write_text(SWATCH.replace("width: \"{{ size }}\"", "width: \"{{ size }\""))  # broken template
    assert s.step().status == INVALID and f"{wf}:8:" in s.step().message
    wf.write_text(SWATCH.replace("0xE0402A", "0x000000"))
    fixed = s.step()
    assert fixed.status == RAN and pixel(out) == (254, 254, 254)


def test_a_failed_node_is_reported_and_the_next_save_runs_again(workflow, tmp_path):
    text = """\
    version: 1
    params: {broken: true}
    nodes:
      t: {type: Text, with: {text: hello}}
      f: {type: Fail, in: {text: t}, with: {when: "{{ broken }}", message: "out of paint"}}
      w: {type: WriteText, in: {text: f}, with: {filename_prefix: said}}
    """
    wf = workflow(text)
    s = session(wf, tmp_path)
    failed = s.step()
    assert failed.status == FAILED and "node 'f' (Fail)" in failed.message and "out of paint" in failed.message
    wf.write_text(wf.read_text().replace("broken: true", "broken: false"))
    ok = s.step()
    assert ok.status == RAN and [n.node for n in ok.executed] == ["f", "w"]  # t came from the cache
    assert (tmp_path / "out" / "said.txt").read_text() == "hello#0"


def test_models_stay_loaded_between_runs_even_without_a_disk_cache(workflow, tmp_path):
    text = """\
    version: 1
    params: {word: a}
    nodes:
      m: {type: FakeLoader, with: {name: big}}
      t: {type: Text, with: {text: "{{ word }}"}}
      u: {type: UseModel, in: {model: m, text: t}}
      w: {type: WriteText, in: {text: u}, with: {filename_prefix: used}}
    """
    wf = workflow(text)
    s = session(wf, tmp_path, use_cache=False)
    assert [n.node for n in s.step().executed] == ["m", "t", "u", "w"]
    wf.write_text(wf.read_text().replace("word: a", "word: b"))
    assert [n.node for n in s.step().executed] == ["t", "u", "w"]  # the model came from memory
    assert (tmp_path / "out" / "used.txt").read_text() == "big:b#0"
    assert not (tmp_path / "cache").exists()


def test_only_the_watched_files_trigger_a_step(workflow, tmp_path):
    (tmp_path / "note.txt").write_text("hi")
    wf = workflow("""\
    version: 1
    nodes:
      r: {type: ReadText, with: {path: note.txt}}
      w: {type: WriteText, in: {text: r}, with: {filename_prefix: note}}
    """)
    s = session(wf, tmp_path)
    assert s.step().status == RAN
    assert s.watched() == {wf.resolve(), (tmp_path / "note.txt").resolve()}
    assert s.on_change([tmp_path / "elsewhere.yaml"]) is None
    (tmp_path / "note.txt").write_text("changed")  # an input file the workflow reads
    assert s.on_change([str(tmp_path / "note.txt")]).status == RAN
    assert (tmp_path / "out" / "note.txt").read_text() == "changed"


def test_a_real_save_is_seen_through_watchfiles(workflow, tmp_path):
    wf = workflow(SWATCH)
    s = session(wf, tmp_path)
    outcomes, stop = [], threading.Event()
    seen = threading.Condition()

    def report(outcome):
        with seen:
            outcomes.append(outcome)
            seen.notify_all()

    thread = threading.Thread(target=watch, args=(s, report), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        with seen:
            assert seen.wait_for(lambda: len(outcomes) == 1, 30)
        wf.write_text(SWATCH.replace("0xE0402A", "0xFFFFFF"))
        with seen:
            assert seen.wait_for(lambda: len(outcomes) >= 2, 30), "no re-render after the save"
        assert outcomes[1].status == RAN and pixel(tmp_path / "out" / "sw-8.png") == (0, 0, 0)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_file_in_a_missing_folder_is_a_usage_error(cli, tmp_path):
    r = cli("watch", tmp_path / "nowhere" / "wf.yaml")
    assert r.code == 2 and "cannot watch" in r.err and "there is no folder" in r.err


def test_a_save_made_while_a_step_runs_is_not_lost(workflow, tmp_path):
    wf = workflow(SWATCH)

    class SavedMeanwhile(Session):
        def step(self):
            outcome = super().step()
            if wf.read_text() == SWATCH:  # the first render: saved again before the watch is in place
                wf.write_text(SWATCH.replace("0xE0402A", "0xFFFFFF"))
            return outcome

    s = SavedMeanwhile(wf, settings=Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache"))
    outcomes, stop = [], threading.Event()
    thread = threading.Thread(target=watch, args=(s, outcomes.append), kwargs={"stop": stop}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(10)
    assert [o.status for o in outcomes] == [RAN, RAN] and pixel(tmp_path / "out" / "sw-8.png") == (0, 0, 0)


def test_the_command_prints_each_save_and_leaves_on_ctrl_c_as_run_does(workflow, tmp_path):
    wf = workflow(SWATCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
           "FLOWRUN_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "flowrun", "watch", str(wf), "--out", str(tmp_path / "out"), "-q"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if we ignore it
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def wait_lines(n: int) -> None:
        end = time.monotonic() + 60
        while len(lines) < n and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        assert len(lines) >= n, (lines, proc.poll())

    try:
        wait_lines(1)
        assert "re-ran 6 node(s)" in lines[0] and "0 cached" in lines[0]
        wf.write_text(SWATCH + "# only a comment\n")
        wait_lines(2)
        assert "nothing changed" in lines[1]
        wf.write_text(SWATCH.replace("[8, 16]", "[8, 16, 32]"))
        wait_lines(3)
        assert "re-ran 3 node(s): swatch 0." in lines[2] and "6 cached" in lines[2]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 130 and err.rstrip().endswith("interrupted") and "Traceback" not in err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "ok"
    assert (tmp_path / "out" / "sw-32.png").is_file()
