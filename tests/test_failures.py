"""A node that raises ends the run with exit 1 and a message naming the node and the cell; with
--keep-going the other cells finish and the manifest lists each failure."""

from __future__ import annotations

import json

SWEEP = """
version: 1
params: {{n: 1}}
sweep:
  grid: {{n: [1, 2, 3, 4]}}
nodes:
  t: {{type: Text, with: {{text: "cell {{{{ n }}}}"}}}}
  f: {{type: Fail, in: {{text: t}}, with: {{kind: {kind}, message: "cell {{{{ n }}}} broke", when: "{{{{ n in {bad} }}}}"}}}}
  out: {{type: WriteText, in: {{text: f}}, with: {{filename_prefix: "out-{{{{ n }}}}"}}}}
"""


def _manifest(tmp_path):
    return json.loads((tmp_path / "out" / "run.json").read_text())


def test_failure_names_node_and_cell_and_stops(cli, workflow, tmp_path):
    r = cli("run", workflow(SWEEP.format(kind="node", bad=[2])), "--out", tmp_path / "out")
    assert r.code == 1 and "Traceback" not in r.err
    assert "error: node 'f' (Fail) in cell n-2 failed: cell 2 broke" in r.err, r.err
    m = _manifest(tmp_path)
    assert m["status"] == "failed" and [f["cells"] for f in m["failures"]] == [["n-2"]]
    assert not (tmp_path / "out" / "out-3.txt").exists()  # the run stopped at the failure


def test_out_of_memory_is_a_node_failure(cli, workflow, tmp_path):
    r = cli("run", workflow(SWEEP.format(kind="memory", bad=[1])), "--out", tmp_path / "out")
    assert r.code == 1 and "Traceback" not in r.err
    assert "node 'f' (Fail) in cell n-1 failed: MemoryError: cell 1 broke (out of memory" in r.err, r.err


def test_keep_going_finishes_the_other_cells(cli, workflow, tmp_path):
    r = cli("run", workflow(SWEEP.format(kind="bug", bad=[2, 4])), "--out", tmp_path / "out", "--keep-going")
    assert r.code == 1 and "Traceback" not in r.err
    assert "2 nodes failed" in r.err and "in cell n-2" in r.err and "in cell n-4" in r.err, r.err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("out-*.txt")) == ["out-1.txt", "out-3.txt"]
    m = _manifest(tmp_path)
    assert m["status"] == "failed"
    assert [(f["node"], f["cells"]) for f in m["failures"]] == [("f", ["n-2"]), ("f", ["n-4"])]
    assert all("RuntimeError: cell" in f["error"] for f in m["failures"])
    blocked = [n for n in m["nodes"] if n["status"] == "blocked"]
    assert [(n["id"], n["cells"]) for n in blocked] == [("out", ["n-2"]), ("out", ["n-4"])]
    assert all(n["error"] == "not run: node 'f' failed" for n in blocked)


def test_keep_going_then_fixed_rerun_reuses_finished_cells(cli, workflow, tmp_path):
    cli("run", workflow(SWEEP.format(kind="node", bad=[3])), "--out", tmp_path / "out", "--keep-going")
    r = cli("run", workflow(SWEEP.format(kind="node", bad=[])), "--out", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)
    statuses = {(n["id"], n["cells"][0]): n["status"] for n in m["nodes"]}
    assert statuses[("t", "n-1")] == "skipped" and statuses[("out", "n-1")] == "cached"
    assert statuses[("f", "n-3")] == "executed"


BATCH = """
version: 1
params: {n: 1}
sweep:
  grid: {n: [1, 2, 3]}
nodes:
  t: {type: Text, with: {text: same}}
  e: {type: Echo, in: {text: t}, with: {n: "{{ n }}", max_batch: 1}}
  out: {type: WriteText, in: {text: e}, with: {filename_prefix: "out-{{ n }}"}}
"""


def test_a_failed_batch_is_retried_cell_by_cell(cli, workflow, tmp_path):
    r = cli("run", workflow(BATCH), "--out", tmp_path / "out")
    assert r.code == 0, r.err
    assert "batch of 3 failed (MemoryError: a batch of 3" in r.err and "retrying its cells one by one" in r.err
    assert [(tmp_path / "out" / f"out-{n}.txt").read_text() for n in (1, 2, 3)] == ["same#0#1", "same#0#2", "same#0#3"]
    statuses = [n["status"] for n in _manifest(tmp_path)["nodes"] if n["id"] == "e"]
    assert statuses == ["executed"] * 3
