"""The cache at an fsspec URL: blobs first, then the entry's record in one write, so a reader never
sees half an entry; checksums on read; runs reuse it like a local folder."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from flowrun.cache.fsspec_store import FsspecStore
from flowrun.cache.location import open_store
from flowrun.cache.store import CacheWarning

pytest.importorskip("fsspec")

KEY = "ab" + "c" * 62


def _memory_store() -> FsspecStore:
    return FsspecStore(f"memory://flowrun-test-{uuid.uuid4().hex}")


def test_round_trip_and_content_addressed_blobs():
    store = _memory_store()
    assert not store.has(KEY) and store.get(KEY) is None
    store.put(KEY, {"a": b"alpha", "b": b"beta"}, {"node": "n"})
    blobs, meta = store.get(KEY)
    assert blobs == {"a": b"alpha", "b": b"beta"} and meta["node"] == "n"
    sha = hashlib.sha256(b"alpha").hexdigest()
    assert store.fs.cat_file(f"{store.base}/blobs/{sha[:2]}/{sha}") == b"alpha"


def test_a_writer_that_died_before_the_record_leaves_nothing_visible():
    store = _memory_store()
    sha = hashlib.sha256(b"data").hexdigest()
    store._write(store._blob(sha), b"data")  # the blob made it, the record did not
    assert not store.has(KEY) and store.get(KEY) is None
    store.put(KEY, {"x": b"data"})  # the next writer publishes it whole
    assert store.get(KEY)[0] == {"x": b"data"}


def test_damaged_blob_is_discarded_with_a_warning():
    store = _memory_store()
    store.put(KEY, {"x": b"original"})
    sha = hashlib.sha256(b"original").hexdigest()
    store.fs.pipe_file(store._blob(sha), b"tampered")
    with pytest.warns(CacheWarning, match="does not match its checksum"):
        assert store.get(KEY) is None
    assert not store.has(KEY)


def test_local_urls_write_then_rename(tmp_path):
    store = open_store(f"file://{tmp_path}/c")
    assert isinstance(store, FsspecStore) and store.local
    store.put(KEY, {"x": b"1"})
    assert store.get(KEY)[0] == {"x": b"1"}
    assert not list((tmp_path / "c").rglob("*.tmp"))


SWEEP = """
version: 1
params: {n: 1}
sweep:
  grid: {n: [1, 2]}
nodes:
  t: {type: Text, with: {text: "cell {{ n }}"}}
  out: {type: WriteText, in: {text: t}, with: {filename_prefix: "out-{{ n }}"}}
"""


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_runs_reuse_a_cache_at_a_url(cli, workflow, tmp_path, scheme):
    url = f"file://{tmp_path}/shared" if scheme == "file" else f"memory://flowrun-{uuid.uuid4().hex}"
    wf = workflow(SWEEP)
    first = json.loads(cli("run", wf, "--cache-dir", url, "--out", tmp_path / "a", "--json").out)
    assert {n["status"] for n in first["nodes"]} == {"executed"}
    second = cli("run", wf, "--cache-dir", url, "--out", tmp_path / "b", "--json")
    assert second.code == 0, second.err
    assert {n["status"] for n in json.loads(second.out)["nodes"]} <= {"cached", "skipped"}
    assert (tmp_path / "b" / "out-2.txt").read_text() == (tmp_path / "a" / "out-2.txt").read_text()
    assert cli("cache", "info", "--cache-dir", url).code == 2  # eviction is for local folders
