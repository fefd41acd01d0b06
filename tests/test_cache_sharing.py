"""The disk cache shared and bounded: several processes at once neither corrupt it nor compute an entry
twice; a size limit evicts least recently used entries; `flowrun cache info|prune|clear`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter

from flowrun.cache import housekeeping as hk
from flowrun.cache.disk import DiskStore

from conftest import ROOT, TESTS

SHARED = """
version: 1
params: {{n: 1}}
sweep:
  grid: {{n: [1, 2, 3, 4, 5, 6]}}
nodes:
  slow: {{type: Slow, with: {{text: "cell {{{{ n }}}}", seconds: 0.3, log: "{log}"}}}}
  out: {{type: WriteText, in: {{text: slow}}, with: {{filename_prefix: "out-{{{{ n }}}}"}}}}
"""


def test_four_processes_share_one_cache(tmp_path):
    log = tmp_path / "computed.log"
    wf = tmp_path / "wf.yaml"
    wf.write_text(SHARED.format(log=log))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "FLOWRUN_PLUGINS": "engine_nodes",
           "FLOWRUN_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "flowrun", "run", str(wf), "--out", str(tmp_path / f"out{i}"),
                               "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]

    lines = [line.split() for line in log.read_text().splitlines()]
    starts = Counter(" ".join(parts[2:4]) for parts in lines if parts[0] == "start")
    assert starts == {f"cell {n}": 1 for n in range(1, 7)}, starts  # each entry computed once in all
    executed = Counter()
    for _, out, _ in results:
        for node in json.loads(out)["nodes"]:
            executed[node["status"]] += node["id"] == "slow"
    # the others found them published (or, starting later, did not need them: their outputs were cached)
    assert executed["executed"] == 6 and executed["cached"] + executed["skipped"] == 18, executed

    for i in range(4):
        assert [(tmp_path / f"out{i}" / f"out-{n}.txt").read_text() for n in range(1, 7)] == \
            [f"CELL {n}" for n in range(1, 7)]
    store = DiskStore(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged entry would warn
        keys = [e.key for e in hk.entries(store)]
        assert len(keys) == 12 and all(store.get(k) is not None for k in keys)


def _fill(store: DiskStore, sizes: dict[str, int]) -> None:
    now = time.time()
    for i, (key, size) in enumerate(sizes.items()):
        store.put(key, {"x": b"\0" * size})
        meta = store.base / key[:2] / key / "meta.json"
        os.utime(meta, (now - 1000 + i, now - 1000 + i))  # put in this order, oldest first


def test_prune_evicts_least_recently_used(tmp_path):
    store = DiskStore(tmp_path)
    keys = [f"{c}{c}" + "0" * 62 for c in "abcd"]
    _fill(store, dict.fromkeys(keys, 10_000))
    assert store.get(keys[0]) is not None  # reading the oldest makes it the most recently used
    per_entry = {e.key: e.size for e in hk.entries(store)}[keys[0]]
    removed, freed = hk.prune(store, max_bytes=2 * per_entry)
    assert (removed, freed) == (2, 2 * per_entry)
    assert sorted(e.key for e in hk.entries(store)) == sorted([keys[0], keys[3]])


def test_prune_older_than_and_stale_temporary_folders(tmp_path):
    store = DiskStore(tmp_path)
    keys = [f"{c}{c}" + "1" * 62 for c in "ab"]
    _fill(store, dict.fromkeys(keys, 100))
    stale = store.base / "tmp" / "deadbeef.xyz"
    stale.mkdir(parents=True)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    removed, _ = hk.prune(store, 0, older_than=999.5)  # keys[0] was used 1000 s ago, keys[1] 999 s ago
    assert removed == 1 and [e.key for e in hk.entries(store)] == [keys[1]]
    assert not stale.exists()


def test_run_keeps_the_cache_under_its_limit(cli, workflow, tmp_path, monkeypatch):
    monkeypatch.setenv(hk.MAX_SIZE_ENV, "3K")
    text = SHARED.format(log=tmp_path / "log").replace("seconds: 0.3", "seconds: 0")
    r = cli("run", workflow(text), "--out", tmp_path / "out")
    assert r.code == 0, r.err
    found = hk.entries(DiskStore(tmp_path / "cache"))
    assert 0 < len(found) < 12 and sum(e.size for e in found) <= 3 * 1024


def test_cache_commands(cli, workflow, tmp_path):
    wf = workflow(SHARED.format(log=tmp_path / "log").replace("seconds: 0.3", "seconds: 0"))
    assert cli("run", wf, "--out", tmp_path / "out").code == 0
    r = cli("cache", "info", "--json")
    data = json.loads(r.out)
    assert r.code == 0 and data["entries"] == 12 and data["bytes"] > 0 and data["max_bytes"] == hk.DEFAULT_MAX_BYTES
    assert "entries: 12" in cli("cache", "info").out
    r = cli("cache", "prune", "--max-size", "1K")
    left = json.loads(cli("cache", "info", "--json").out)
    assert r.code == 0 and f"removed {12 - left['entries']} entries" in r.out, r.out
    assert 0 < left["entries"] < 12 and left["bytes"] <= 1024
    assert cli("cache", "prune", "--max-size", "lots").code == 2
    r = cli("cache", "clear", "--yes")
    assert r.code == 0 and f"removed {left['entries']} entr" in r.out
    assert json.loads(cli("cache", "info", "--json").out)["entries"] == 0
    assert cli("run", wf, "--out", tmp_path / "out").code == 0  # a cleared cache fills again


def test_parse_size():
    assert [hk.parse_size(t) for t in ("0", "512", "1K", "1.5G", "2GiB", "3 MB")] == \
        [0, 512, 1024, int(1.5 * 1024**3), 2 * 1024**3, 3 * 1024**2]
