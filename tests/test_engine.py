"""The graph, the cache and the runner, on small pure-Python nodes."""

from __future__ import annotations

import json
import os

import pytest

from flowrun import api
from flowrun.cache.disk import DiskStore
from flowrun.cache.keys import canonical_json, node_key
from flowrun.cache.memory import MemoryCache
from flowrun.cache.store import CacheWarning
from flowrun.errors import RunFailed
from flowrun.settings import Settings
from flowrun.spec.sweep import Overrides

from conftest import flowrun_process

SWEPT = """\
version: 1
params: {seed: 1, word: cat}
sweep:
  grid: {seed: [1, 2, 3, 4]}
nodes:
  model:
    type: FakeLoader
    with: {name: tiny}
  prompt:
    type: Text
    with: {text: "{{ word }}"}
  seeded:
    type: Text
    with: {text: noise, seed: "{{ seed }}"}
  both:
    type: Join
    in: {left: prompt, right: seeded}
  use:
    type: UseModel
    in: {model: model, text: both}
  save:
    type: WriteText
    in: {text: use}
    with: {filename_prefix: "img-{{ seed }}"}
  dangling:
    type: Text
"""


def settings(tmp_path, **kw) -> Settings:
    return Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", **kw)


def statuses(manifest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in manifest["nodes"]:
        out.setdefault(n["id"], []).append(n["status"])
    return out


def test_identical_nodes_merge_across_cells(workflow, tmp_path):
    graph, steps = api.plan(api.load(workflow(SWEPT)), settings(tmp_path))
    per_id: dict[str, int] = {}
    for t in graph.tasks.values():
        per_id[t.node_id] = per_id.get(t.node_id, 0) + 1
    # the loader and the seed-free prompt are shared by the 4 cells; everything seed-dependent is per cell
    assert per_id == {"model": 1, "prompt": 1, "seeded": 4, "both": 4, "use": 4, "save": 4}
    model = next(t for t in graph.tasks.values() if t.node_id == "model")
    assert graph.cell_labels(model) == ["seed-1", "seed-2", "seed-3", "seed-4"]
    assert graph.unused == ["dangling"]  # leads to no output: never runs
    assert len(steps) == 18 and {s.action for s in steps} == {"run"}


def test_run_outputs_and_manifest(workflow, tmp_path):
    result = api.run(api.load(workflow(SWEPT)), settings(tmp_path))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["img-1.txt", "img-2.txt", "img-3.txt", "img-4.txt", "index.html",
                                                     "run.json"]
    assert (out / "img-3.txt").read_text() == "tiny:cat#0 noise#3"
    manifest = json.loads((out / "run.json").read_text())
    assert manifest == result.manifest
    assert manifest["status"] == "ok" and manifest["flowrun_version"]
    assert [c["params"]["seed"] for c in manifest["cells"]] == [1, 2, 3, 4]
    assert [c["label"] for c in manifest["cells"]] == ["seed-1", "seed-2", "seed-3", "seed-4"]
    assert statuses(manifest)["model"] == ["executed"]
    save = [n for n in manifest["nodes"] if n["id"] == "save"]
    assert [n["outputs"] for n in save] == [["img-1.txt"], ["img-2.txt"], ["img-3.txt"], ["img-4.txt"]]
    assert [n["cells"] for n in save] == [["seed-1"], ["seed-2"], ["seed-3"], ["seed-4"]]
    assert all(n["seconds"] >= 0 and len(n["key"]) == 64 for n in manifest["nodes"])


def test_rerun_executes_nothing(workflow, tmp_path):
    path = workflow(SWEPT)
    api.run(api.load(path), settings(tmp_path))
    (tmp_path / "out" / "img-1.txt").unlink()
    again = api.run(api.load(path), settings(tmp_path))
    st = statuses(again.manifest)
    assert set(st["save"]) == {"cached"}
    assert all(s in ("cached", "skipped") for v in st.values() for s in v)
    assert (tmp_path / "out" / "img-1.txt").read_text() == "tiny:cat#0 noise#1"  # restored from the cache


def test_changing_the_seed_reruns_only_what_depends_on_it(workflow, tmp_path):
    path = workflow(SWEPT)
    api.run(api.load(path), settings(tmp_path))
    changed = api.run(api.load(path, Overrides.parse(sweeps=["seed=1,9"])), settings(tmp_path))
    st = statuses(changed.manifest)
    assert st["seeded"] == ["skipped", "executed"]  # seed 1's result is cached, so its inputs are not needed
    assert st["prompt"] == ["cached"]  # needed by the new cell, taken from the disk cache
    assert st["model"] == ["executed"]  # models are memory-only: loaded again in a new run
    assert st["save"] == ["cached", "executed"]


def test_two_processes_share_one_cache_folder(workflow, tmp_path):
    path = workflow(SWEPT)
    env = {"FLOWRUN_CACHE_DIR": str(tmp_path / "shared-cache")}
    first = flowrun_process("run", path, "--out", tmp_path / "a", "--json", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    second = flowrun_process("run", path, "--out", tmp_path / "b", "--json", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    st1, st2 = statuses(json.loads(first.stdout)), statuses(json.loads(second.stdout))
    assert set(st1["save"]) == {"executed"}
    assert set(st2["save"]) == {"cached"} and "executed" not in {s for v in st2.values() for s in v}
    for name in ("img-1.txt", "img-4.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    third = flowrun_process("run", path, "--out", tmp_path / "c", "--json", "--sweep", "seed=2,5", cwd=tmp_path, env=env)
    st3 = statuses(json.loads(third.stdout))
    assert st3["save"] == ["cached", "executed"] and st3["seeded"] == ["skipped", "executed"]


def test_no_cache_runs_everything_and_writes_nothing(workflow, tmp_path):
    path = workflow(SWEPT)
    api.run(api.load(path), settings(tmp_path))
    result = api.run(api.load(path), settings(tmp_path, use_cache=False))
    assert {s for v in statuses(result.manifest).values() for s in v} == {"executed"}


def test_memory_tier_serves_models_between_runs(workflow, tmp_path):
    path = workflow(SWEPT)
    memory = MemoryCache()
    api.run(api.load(path), settings(tmp_path), memory=memory)
    again = api.run(api.load(path, Overrides.parse(sets=["seed=7"])), settings(tmp_path), memory=memory)
    assert statuses(again.manifest)["model"] == ["cached"]


def test_progress_events(workflow, tmp_path):
    from flowrun.execute.events import Events

    class Record(Events):
        def __init__(self):
            self.seen = []

        def node_step(self, task, step, total):
            self.seen.append((task.node_id, step, total))

        def node_end(self, task, status, seconds):
            self.seen.append((task.node_id, status))

    path = workflow("""
        version: 1
        nodes:
          t: {type: Text, with: {text: x}}
          s: {type: Steps, in: {text: t}, with: {steps: 3}}
          out: {type: WriteText, in: {text: s}}
        """)
    rec = Record()
    api.run(api.load(path), settings(tmp_path), events=rec)
    assert rec.seen == [("t", "executed"), ("s", 1, 3), ("s", 2, 3), ("s", 3, 3), ("s", "executed"), ("out", "executed")]


def test_widget_fed_by_link_and_optional_input(workflow, tmp_path):
    path = workflow("""
        version: 1
        nodes:
          n: {type: Number, with: {value: 5}}
          s: {type: Scale, in: {x: n, factor: n}}
          total: {type: Add, in: {a: n}}
          f: {type: Scale, in: {x: total}, with: {factor: 0.5, mode: floor}}
          out: {type: WriteNumber, in: {value: s}}
          out2: {type: WriteNumber, in: {value: f}, with: {filename_prefix: half}}
        """)
    api.run(api.load(path), settings(tmp_path))
    assert (tmp_path / "out" / "out.txt").read_text() == "25.0"  # INT output feeding a FLOAT field
    assert (tmp_path / "out" / "half.txt").read_text() == "2.0"


def test_link_fed_value_out_of_range_fails_at_run_time(workflow, tmp_path):
    path = workflow("""
        version: 1
        nodes:
          n: {type: Number, with: {value: 500}}
          s: {type: Scale, in: {x: n, factor: n}}
          out: {type: WriteNumber, in: {value: s}}
        """)
    with pytest.raises(RunFailed) as info:
        api.run(api.load(path), settings(tmp_path))
    assert "value for 'factor' from its link is invalid" in info.value.render()


def test_colliding_output_names_get_cell_suffixes(workflow, tmp_path):
    path = workflow(SWEPT.replace('with: {filename_prefix: "img-{{ seed }}"}', "with: {filename_prefix: img}"))
    api.run(api.load(path), settings(tmp_path))
    names = sorted(p.name for p in (tmp_path / "out").glob("*.txt"))
    assert names == ["img_seed-1.txt", "img_seed-2.txt", "img_seed-3.txt", "img_seed-4.txt"]


def test_failure_is_recorded_and_raised(workflow, tmp_path):
    path = workflow("""
        version: 1
        nodes:
          t: {type: Text, with: {text: x}}
          f: {type: Fail, in: {text: t}, with: {message: "the model exploded"}}
          out: {type: WriteText, in: {text: f}}
        """)
    with pytest.raises(RunFailed) as info:
        api.run(api.load(path), settings(tmp_path))
    assert info.value.render() == "error: node 'f' (Fail) failed: the model exploded"
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "failed" and "the model exploded" in manifest["error"]
    assert statuses(manifest) == {"t": ["executed"], "f": ["failed"], "out": ["skipped"]}
    assert not (tmp_path / "out" / "out.txt").exists()


def test_fingerprint_of_read_files_enters_the_key(workflow, tmp_path):
    (tmp_path / "prompt.txt").write_text("first")
    path = workflow("""
        version: 1
        nodes:
          r: {type: ReadText, with: {path: prompt.txt}}
          out: {type: WriteText, in: {text: r}}
        """)
    api.run(api.load(path), settings(tmp_path))
    same = api.run(api.load(path), settings(tmp_path))
    assert statuses(same.manifest)["out"] == ["cached"]
    (tmp_path / "prompt.txt").write_text("second")
    os.utime(tmp_path / "prompt.txt", ns=(1, 1))
    changed = api.run(api.load(path), settings(tmp_path))
    assert statuses(changed.manifest) == {"r": ["executed"], "out": ["executed"]}
    assert (tmp_path / "out" / "out.txt").read_text() == "second"


def test_cache_keys_are_stable_and_sensitive():
    base = dict(node_type="KSampler", version=1, code="0.1.0:" + "e" * 64, literals={"seed": 1, "cfg": 7.0},
                inputs={"model": ("ab" * 32, "model")})
    k = node_key(**base)
    assert k == node_key(**{**base, "literals": {"cfg": 7.0, "seed": 1}})  # key order does not matter
    assert k != node_key(**{**base, "literals": {"seed": 2, "cfg": 7.0}})
    assert k != node_key(**{**base, "version": 2})
    assert k != node_key(**{**base, "code": "0.1.0:" + "f" * 64})
    assert k != node_key(**{**base, "inputs": {"model": ("cd" * 32, "model")}})
    assert k != node_key(**base, fingerprints={"ckpt": "0" * 64})
    # fixed: a change here silently invalidates every user's cache, so it must be deliberate
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'


def test_disk_store_detects_damage(tmp_path):
    store = DiskStore(tmp_path)
    key = "ab" + "0" * 62
    store.put(key, {"value": b"hello"}, {"node": "x"})
    blobs, meta = store.get(key)
    assert blobs == {"value": b"hello"} and meta["node"] == "x"
    blob = next((tmp_path / "v1" / "ab" / key).glob("*.bin"))
    blob.write_bytes(b"hellO")
    with pytest.warns(CacheWarning, match="does not match its checksum"):
        assert store.get(key) is None
    assert not store.has(key)
    assert not list((tmp_path / "v1" / "tmp").iterdir())


def test_disk_store_publish_is_all_or_nothing(tmp_path, monkeypatch):
    store = DiskStore(tmp_path)
    key = "cd" + "1" * 62
    real_dump = json.dump

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        store.put(key, {"a": b"1"})
    monkeypatch.setattr(json, "dump", real_dump)
    assert not store.has(key) and not (tmp_path / "v1" / "cd" / key).exists()
    assert not list((tmp_path / "v1" / "tmp").iterdir())


def test_memory_cache_is_bounded_lru():
    import numpy as np

    cache = MemoryCache(max_bytes=3000)
    for i in range(4):
        cache.put(f"k{i}", np.zeros(1000 // 4, dtype=np.float32))  # 1000 bytes each
        if i == 1:
            cache.get("k0")  # k0 becomes the most recent
    assert "k0" in cache and "k1" not in cache and "k3" in cache
    assert cache.nbytes <= 3000


def test_extending_an_axis_renders_only_the_new_cells(workflow, tmp_path):
    path = workflow(SWEPT)
    api.run(api.load(path, Overrides.parse(sweeps=["seed=1,2"])), settings(tmp_path))
    more = api.run(api.load(path, Overrides.parse(sweeps=["seed=1,2,3"])), settings(tmp_path))
    st = statuses(more.manifest)
    assert st["save"] == ["cached", "cached", "executed"] and st["seeded"] == ["skipped", "skipped", "executed"]


def test_fully_cached_rerun_imports_no_torch(tiny_models, tmp_path):
    """A no-op re-run of a diffusion sweep answers from the cache without importing torch."""
    from conftest import ROOT, TESTS

    wf = ROOT / "workflows" / "sweep-2x2.yaml"
    env = {"FLOWRUN_CACHE_DIR": str(tmp_path / "c")}
    first = flowrun_process("run", wf, "--models-dir", tiny_models, "--out", tmp_path / "a", "-q", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    probe = ("import sys, runpy\nsys.argv = ['flowrun'] + sys.argv[1:]\ntry:\n    runpy.run_module('flowrun', "
             "run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\nprint('TORCH', 'torch' in sys.modules, "
             "'EXIT', code)")
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", probe, "run", str(wf), "--models-dir", str(tiny_models), "--out",
                        str(tmp_path / "b"), "-q"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": f"{TESTS}:{ROOT}", **env})
    assert "TORCH False EXIT 0" in r.stdout, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "b").glob("seed*.png")) == sorted(
        p.name for p in (tmp_path / "a").glob("seed*.png"))


TWO_MODELS = """\
version: 1
params: {seed: 1, name: a}
sweep:
  grid: {seed: [1, 2, 3], name: [a, b]}
nodes:
  model: {type: FakeLoader, with: {name: "{{ name }}"}}
  t: {type: Text, with: {text: x, seed: "{{ seed }}"}}
  use: {type: UseModel, in: {model: model, text: t}}
  save: {type: WriteText, in: {text: use}, with: {filename_prefix: "{{ name }}-{{ seed }}"}}
"""


def test_sweep_over_two_models_loads_each_once_and_runs_them_grouped(workflow, tmp_path):
    path = workflow(TWO_MODELS)
    graph, steps = api.plan(api.load(path), settings(tmp_path))
    order = [(graph.tasks[s.task.key].node_id, graph.cell_labels(s.task)[0]) for s in steps]
    models = [o for o in order if o[0] == "model"]
    assert len(models) == 2  # one load per model although the model axis is the inner one
    uses = [label for nid, label in order if nid == "use"]
    # every cell of model a runs before any cell of model b
    assert uses == ["seed-1_name-a", "seed-2_name-a", "seed-3_name-a", "seed-1_name-b", "seed-2_name-b",
                    "seed-3_name-b"]
    b_load = order.index(models[1])
    assert all(order.index(("use", label)) < b_load for label in uses[:3])
    result = api.run(api.load(path), settings(tmp_path))
    assert statuses(result.manifest)["model"] == ["executed", "executed"]
