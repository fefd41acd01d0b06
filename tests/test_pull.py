"""`flowrun models pull` against a local HTTP server on 127.0.0.1 (URL sources) that also serves a folder as
a Hugging Face hub ($HF_ENDPOINT, hf: sources): missing pinned models are fetched, checked and renamed into
place; an interrupted download resumes with a range request; wrong bytes never land; entries without a
source are reported."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

A = b"checkpoint bytes " * 5000  # 85 kB
B = b"lora bytes " * 300


class Hub:
    """Files by URL path; `cut` makes the next response for a path stop after that many bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges: list[str | None] = []


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            data = hub.files.get(self.path.split("?")[0])
            if data is None:
                self.send_error(404)
                return
            start = 0
            wanted = self.headers.get("Range")
            hub.ranges.append(wanted)
            if wanted:
                start = int(wanted.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = hub.cut.pop(self.path, None)
            self.wfile.write(body[:cut] if cut is not None else body)
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

    return Handler


@pytest.fixture
def hub(monkeypatch):
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    yield state
    server.shutdown()


def _lock(tmp_path, entries: dict) -> None:
    (tmp_path / "flowrun.lock").write_text(json.dumps({"version": 1, "models": entries, "inputs": {}}))


def _entry(data: bytes, source: str | None) -> dict:
    e = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {**e, "source": source} if source else e


def test_pull_fetches_url_and_hub_sources(cli, hub, tmp_path):
    hub.files["/files/a.safetensors"] = A
    hub.files["/someone/loras/resolve/abc123/night/b.safetensors"] = B  # the hub's address of a repo file
    _lock(tmp_path, {"checkpoints/a": _entry(A, f"{hub.url}/files/a.safetensors"),
                     "loras/b": _entry(B, "hf:someone/loras@abc123:night/b.safetensors")})
    r = cli("models", "pull", "--models-dir", tmp_path / "models")
    assert r.code == 0, r.err
    assert (tmp_path / "models" / "checkpoints" / "a.safetensors").read_bytes() == A
    assert (tmp_path / "models" / "loras" / "b.safetensors").read_bytes() == B
    assert "2 fetched, 0 missing" in r.out
    again = cli("models", "pull", "--models-dir", tmp_path / "models")
    assert again.code == 0 and "0 fetched" in again.out


def test_an_interrupted_pull_resumes_where_it_stopped(cli, hub, tmp_path):
    hub.files["/files/a.safetensors"] = A
    hub.cut["/files/a.safetensors"] = 30000
    _lock(tmp_path, {"checkpoints/a": _entry(A, f"{hub.url}/files/a.safetensors")})
    first = cli("models", "pull", "--models-dir", tmp_path / "models")
    assert first.code == 1 and "run the command again to resume" in first.err
    part = tmp_path / "models" / "checkpoints" / "a.safetensors.part"
    assert part.stat().st_size == 30000 and not (tmp_path / "models" / "checkpoints" / "a.safetensors").exists()
    second = cli("models", "pull", "--models-dir", tmp_path / "models")
    assert second.code == 0, second.err
    assert hub.ranges == [None, "bytes=30000-"]
    assert (tmp_path / "models" / "checkpoints" / "a.safetensors").read_bytes() == A and not part.exists()


def test_wrong_bytes_never_land_and_sourceless_entries_are_reported(cli, hub, tmp_path):
    hub.files["/files/a.safetensors"] = A[:-1] + b"!"
    _lock(tmp_path, {"checkpoints/a": _entry(A, f"{hub.url}/files/a.safetensors")})
    r = cli("models", "pull", "--models-dir", tmp_path / "models")
    assert r.code == 1 and "the download was removed" in r.err and hashlib.sha256(A).hexdigest() in r.err
    assert not list((tmp_path / "models" / "checkpoints").iterdir())

    _lock(tmp_path, {"checkpoints/a": _entry(A, None)})
    r = cli("models", "pull", "--models-dir", tmp_path / "models")
    assert r.code == 2 and "missing checkpoints/a: no source" in r.err

    (tmp_path / "flowrun.lock").unlink()
    (tmp_path / ".git").mkdir()
    r = cli("models", "pull")
    assert r.code == 2 and "no flowrun.lock" in r.err


def test_pull_for_workflows_fetches_only_what_they_read(cli, hub, tmp_path, workflow):
    hub.files["/files/a.safetensors"] = A
    hub.files["/files/b.safetensors"] = B
    _lock(tmp_path, {"checkpoints/a": _entry(A, f"{hub.url}/files/a.safetensors"),
                     "loras/b": _entry(B, f"{hub.url}/files/b.safetensors")})
    wf = workflow("""\
        version: 1
        nodes:
          model: {type: ReadLoraText, with: {lora_name: b}}
          out: {type: WriteText, in: {text: model}, with: {filename_prefix: out}}
        """)
    r = cli("models", "pull", wf, "--models-dir", tmp_path / "models")
    assert r.code == 0 and "1 fetched" in r.out
    assert (tmp_path / "models" / "loras" / "b.safetensors").exists()
    assert not (tmp_path / "models" / "checkpoints").exists()
    assert cli("run", wf, "--models-dir", tmp_path / "models").code == 0  # and the lock accepts it
