"""A corpus of malformed workflows (tests/malformed/): each gives its exit code, a message at the expected
line and column, no traceback, and writes nothing."""

from __future__ import annotations

import json

import pytest

from conftest import TESTS

CORPUS = TESTS / "malformed"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def test_corpus_is_large_enough():
    assert len(EXPECTED) >= 40 and sorted(EXPECTED) == sorted(p.name for p in CORPUS.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_workflow(name, cli, tmp_path):
    want = EXPECTED[name]
    path = CORPUS / name
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == want["exit"], r.err
    assert "Traceback" not in r.err + r.out
    assert f"{path}:{want['line']}:{want['col']}:" in r.err, r.err
    assert want["fragment"] in r.err, r.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing written
