"""The Ray executor on a local cluster started by these tests (2 CPUs): the same bytes as the local
executor, a killed worker's cells retried elsewhere and written once, a cache at a URL shared by the
workers, and a clear message where Ray is not installed."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest

from flowrun import api
from flowrun.execute.ray_options import RayOptions
from flowrun.settings import Settings
from flowrun.spec.sweep import Overrides

from conftest import ROOT, TESTS, flowrun_process

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])  # the test nodes, for the workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def _pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_sweep_renders_the_same_bytes_as_the_local_executor(cluster, cli, tiny_models, tmp_path):
    wf = ROOT / "workflows" / "sweep-2x2.yaml"
    r = cli("run", wf, "--executor", "ray", "--workers", "2", "--max-batch", "2", "--models-dir", tiny_models,
            "--out", tmp_path / "ray", "--cache-dir", tmp_path / "ray-cache")
    assert r.code == 0, r.err
    assert "[cells 4/4]" in r.err
    # the local run with the same torch thread count as each worker (one CPU each)
    local = flowrun_process("run", wf, "--max-batch", "2", "--models-dir", tiny_models, "--out", tmp_path / "local",
                            "--cache-dir", tmp_path / "local-cache", cwd=tmp_path,
                            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLOWRUN_PLUGINS": ""})
    assert local.returncode == 0, local.stderr
    ray_pngs, local_pngs = _pngs(tmp_path / "ray"), _pngs(tmp_path / "local")
    assert len(ray_pngs) == 5 and ray_pngs == local_pngs  # four cells and the contact sheet, byte for byte

    m = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert m["executor"] == "ray" and m["status"] == "ok"
    workers = {c["worker"] for c in m["cells"]}
    assert len(workers) == 2 and all(c["seconds"] > 0 for c in m["cells"])  # both workers rendered cells
    assert {n["worker"] for n in m["nodes"] if n["id"] == "sample"} == workers


KILL = """
version: 1
params: {{n: 1}}
sweep:
  grid: {{n: [1, 2, 3, 4]}}
nodes:
  slow: {{type: Slow, with: {{text: "cell {{{{ n }}}}", seconds: 1.5, log: "{log}"}}}}
  out: {{type: WriteText, in: {{text: slow}}, with: {{filename_prefix: "out-{{{{ n }}}}"}}}}
"""


def test_a_killed_worker_cells_are_retried_and_written_once(cluster, tmp_path):
    log = tmp_path / "log"
    wf = tmp_path / "wf.yaml"
    wf.write_text(KILL.format(log=log))
    killed = {}

    def kill_when_cell_3_starts():
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = log.read_text().splitlines() if log.exists() else []
            starts = [line.split() for line in lines if line.startswith("start") and "cell 3" in line]
            if starts:
                killed["pid"] = int(starts[0][1])
                os.kill(killed["pid"], signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_when_cell_3_starts)
    watcher.start()
    settings = Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", executor="ray",
                        ray_options=RayOptions(workers=2))
    try:
        result = api.run(api.load(wf), settings)
    finally:
        watcher.join()
    assert killed, "the watcher never saw cell 3 start"
    assert result.manifest["status"] == "ok"
    out = tmp_path / "out"
    assert [(out / f"out-{n}.txt").read_text() for n in range(1, 5)] == [f"CELL {n}" for n in range(1, 5)]

    events = [line.split() for line in log.read_text().splitlines()]
    cell3 = [(e[0], int(e[1])) for e in events if e[2:4] == ["cell", "3"]]
    assert [what for what, _ in cell3] == ["start", "start", "end"]  # died once, finished once
    assert cell3[2][1] != killed["pid"]
    cell = next(c for c in result.manifest["cells"] if c["label"] == "n-3")
    assert not cell["worker"].endswith(f":{killed['pid']}")
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".txt") == [f"out-{n}.txt" for n in range(1, 5)]


SHARED = """
version: 1
params: {{n: 1}}
sweep:
  grid: {{n: [1, 2, 3, 4]}}
nodes:
  common: {{type: Slow, with: {{text: shared, seconds: 0.5, log: "{log}"}}}}
  t: {{type: Text, with: {{text: "cell {{{{ n }}}}"}}}}
  j: {{type: Join, in: {{left: common, right: t}}}}
  out: {{type: WriteText, in: {{text: j}}, with: {{filename_prefix: "out-{{{{ n }}}}"}}}}
"""


def test_workers_share_a_cache_at_a_url(cluster, workflow, tmp_path):
    url = f"file://{tmp_path}/shared-cache"
    log = tmp_path / "log"
    wf = workflow(SHARED.format(log=log))

    def ray_run(out, sweep):
        settings = Settings(out_dir=tmp_path / out, cache_dir=url, executor="ray", ray_options=RayOptions(workers=2))
        return api.run(api.load(wf, Overrides.parse(sweeps=[sweep])), settings).manifest

    first = ray_run("a", "n=1,2")
    assert len({c["worker"] for c in first["cells"]}) == 2 and (tmp_path / "shared-cache" / "v1" / "entries").is_dir()
    # the node both workers need was computed by one of them; the other took it from the shared cache
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]
    common = [n for n in first["nodes"] if n["id"] == "common"]
    assert [n["status"] for n in common] == ["executed"]

    # new workers render the new cells and take the first run's cells from the cache
    second = ray_run("b", "n=1,2,3,4")
    status = {(n["id"], n["cells"][0]): n["status"] for n in second["nodes"]}
    assert status[("out", "n-1")] == status[("out", "n-2")] == "cached"
    assert status[("out", "n-3")] == status[("out", "n-4")] == "executed"
    assert all(c["worker"] for c in second["cells"])
    assert (tmp_path / "b" / "out-1.txt").read_text() == (tmp_path / "a" / "out-1.txt").read_text()
    assert len(log.read_text().splitlines()) == 2  # `common` was never computed again


def test_without_ray_the_executor_says_how_to_install_it(cli, workflow, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    r = cli("run", workflow(SHARED.format(log=tmp_path / "log")), "--executor", "ray")
    assert r.code == 2 and "pip install 'flowrun[ray]'" in r.err and "Traceback" not in r.err, r.err


FAILING = """
version: 1
params: {n: 1}
sweep:
  grid: {n: [1, 2, 3, 4]}
nodes:
  t: {type: Text, with: {text: "cell {{ n }}"}}
  f: {type: Fail, in: {text: t}, with: {message: "cell {{ n }} broke", when: "{{ n == 2 }}"}}
  out: {type: WriteText, in: {text: f}, with: {filename_prefix: "out-{{ n }}"}}
"""


def test_a_failing_cell_on_a_worker_names_node_and_cell(cluster, cli, workflow, tmp_path):
    r = cli("run", workflow(FAILING), "--executor", "ray", "--workers", "2", "--keep-going", "--out", tmp_path / "o")
    assert r.code == 1 and "node 'f' (Fail) in cell n-2 failed: cell 2 broke" in r.err, r.err
    m = json.loads((tmp_path / "o" / "run.json").read_text())
    assert m["status"] == "failed" and [(f["node"], f["cells"]) for f in m["failures"]] == [("f", ["n-2"])]
    assert sorted(p.name for p in (tmp_path / "o").glob("out-*.txt")) == ["out-1.txt", "out-3.txt", "out-4.txt"]


def test_ray_options_are_checked(cluster, cli, workflow, tmp_path):
    wf = workflow(FAILING)
    r = cli("run", wf, "--executor", "ray", "--gpus-per-worker", "1", "--out", tmp_path / "o")
    assert r.code == 2 and "--gpus-per-worker 1: the cluster has 0 GPU(s)" in r.err, r.err
    r = cli("run", wf, "--address", "auto", "--out", tmp_path / "o")
    assert r.code == 2 and "go with --executor ray" in r.err, r.err


def test_a_worker_with_other_library_versions_is_refused():
    from flowrun import __version__
    from flowrun.execute.ray_worker import _environment_mismatch
    from flowrun.graph.build import environment_info

    expected = {"flowrun": __version__, **environment_info(None)}
    assert _environment_mismatch(expected, None) is None
    other = {**expected, "versions": {**expected["versions"], "torch": "2.4.0"}}
    message = _environment_mismatch(other, None)
    assert "torch" in message and "(driver: 2.4.0)" in message and "install the driver's versions" in message


def test_scores_recorded_on_workers_reach_the_manifest(cluster, workflow, tmp_path):
    wf = workflow("""
        version: 1
        params: {color: 0xFF0000}
        sweep: {grid: {color: [0xFF0000, 0x00FF00, 0x0000FF]}}
        nodes:
          image: {type: EmptyImage, with: {width: 32, height: 32, color: "{{ color }}"}}
          judge: {type: CLIPScoreModelLoader, with: {clip_name: flowrun-tiny-clip}}
          score: {type: CLIPScore, in: {clip_score_model: judge, images: image}, with: {text: a red square}}
          save: {type: SaveImage, in: {images: image}, with: {filename_prefix: "c{{ cell.index }}"}}
        """)
    local = api.run(api.load(wf), Settings(out_dir=tmp_path / "local", use_cache=False)).manifest
    settings = Settings(out_dir=tmp_path / "ray", use_cache=False, executor="ray",
                        ray_options=RayOptions(workers=2))
    remote = api.run(api.load(wf), settings).manifest
    assert [c["scores"] for c in remote["cells"]] == [c["scores"] for c in local["cells"]]
    assert len({c["scores"]["score"] for c in remote["cells"]}) == 3
