"""Nothing touches the network at run time: the examples render with every socket connection refused."""

from __future__ import annotations

import socket

import pytest

from flowrun import api
from flowrun.settings import Settings

from conftest import ROOT


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0] if a else None))
    return attempts


@pytest.mark.parametrize("name", ["txt2img", "lora", "img2img"])
def test_examples_render_offline(name, no_network, tmp_path):
    result = api.run(api.load(ROOT / "workflows" / f"{name}.yaml"),
                     Settings(out_dir=tmp_path / "o", cache_dir=tmp_path / "c", device="cpu"))
    assert result.manifest["status"] == "ok" and result.files
    assert no_network == []  # and nothing even tried
