"""`flowrun watch --serve`: a page on 127.0.0.1 that shows the sweep grid as it renders.

The page (page.html beside this module) asks `state.json?since=N`, which answers as soon as the state is
newer than N (long polling: a new image shows at once and an idle page costs nothing). The state holds the
grid (the cells laid out by their sweep values: the first swept axis along the columns, the others down
the rows), each cell's latest output files, the node running, the last error, and the latest latent
preview of each cell while it samples (flowrun.diffusion.latent_preview; the runner asks for previews only
because `PreviewEvents.wants_previews` is set). Files are served from the run's output folder only.
"""

from __future__ import annotations

import itertools
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlparse

from flowrun.execute.events import Events
from flowrun.safepath import inside
from flowrun.watch.session import FAILED, INVALID, RAN, Outcome

PAGE = Path(__file__).with_name("page.html")
LONG_POLL_SECONDS = 20.0


def caption(values: dict[str, Any]) -> str:
    """A cell's sweep values as the page shows them under its images: "seed=1, cfg=4.0"."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def grid(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The cells (run.json's: label, values) as a table: the first swept axis's values as columns, every
    combination of the others as a row (titled with its values), each slot a cell label or None."""
    from flowrun.execute.contact_sheet import swept_axes

    axes = swept_axes(cells) if cells else []
    col_name, col_values = axes[0] if axes else ("", [None])
    others = axes[1:]
    where = {}
    for c in cells:
        v = c["values"]
        where.setdefault((tuple(v[n] for n, _ in others), v[col_name] if col_name else None), c["label"])
    rows = []
    for combo in itertools.product(*[vals for _, vals in others]):
        title = ", ".join(f"{n}={v}" for (n, _), v in zip(others, combo))
        rows.append({"title": title, "cells": [where.get((combo, v)) for v in col_values]})
    return {"column_axis": col_name, "columns": [f"{col_name}={v}" if col_name else "" for v in col_values],
            "rows": rows}


class WatchState:
    """What the page shows, changed by the watch loop and the runner's events, read by the server's
    threads; every change bumps `version` and wakes the waiting requests."""

    def __init__(self, workflow: str):
        self.workflow = workflow
        self.version = 0
        self.runs = 0  # completed runs: part of file URLs, so a browser never shows a stale image
        self.out_dir: Path | None = None
        self.cells: list[dict[str, Any]] = []
        self.files: dict[str, list[str]] = {}  # cell label -> its output files, relative to out_dir
        self.status = "starting"
        self.message = ""
        self.running = ""  # the node running now
        self.previews: dict[str, tuple[bytes, int, int, int]] = {}  # cell label -> (PNG, step, total, version)
        self.waiting = 0
        self._changed = threading.Condition()

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    def outcome(self, outcome: Outcome) -> None:
        """A step ended: new outputs (RAN), or an error shown over the outputs the page already has."""
        with self._changed:
            self.running = ""
            self.previews.clear()
            self.status = outcome.status
            self.message = outcome.message if outcome.status in (INVALID, FAILED) else ""
            if outcome.status == RAN and outcome.manifest is not None:
                self.runs += 1
                self.out_dir = outcome.out_dir
                self.cells = [{"label": c["label"], "values": c["values"]} for c in outcome.manifest["cells"]]
                self.files = {c["label"]: [] for c in self.cells}
                for n in outcome.manifest["nodes"]:
                    for label in n["cells"]:
                        self.files.setdefault(label, []).extend(f for f in n["outputs"] if f.endswith(".png"))
            self._bump()

    def lay_out(self, cells: list[dict[str, Any]]) -> None:
        """A run starts with these cells (label, values): show them before their files exist, so that a
        first render or new sweep values show their previews; the files of cells that stay are kept."""
        with self._changed:
            if [c["label"] for c in cells] != [c["label"] for c in self.cells]:
                self.cells = [{"label": c["label"], "values": c["values"]} for c in cells]
                self.files = {c["label"]: self.files.get(c["label"], []) for c in self.cells}
                self._bump()

    def node_running(self, node: str) -> None:
        with self._changed:
            self.status, self.running = "running", node
            self._bump()

    def preview(self, cells: list[str], pngs: list[bytes], step: int, total: int) -> None:
        with self._changed:
            self._bump()
            for label, data in zip(cells, pngs):
                self.previews[label] = (data, step, total, self.version)

    def snapshot(self, since: int | None = None, timeout: float = LONG_POLL_SECONDS) -> dict[str, Any]:
        """The state as JSON data; with `since`, first wait (up to `timeout`) until it is newer than that."""
        with self._changed:
            if since is not None:
                self.waiting += 1  # pages waiting for news (tests wait for a page to be there)
                try:
                    self._changed.wait_for(lambda: self.version > since, timeout)
                finally:
                    self.waiting -= 1
            return {
                "workflow": self.workflow, "version": self.version, "runs": self.runs, "status": self.status,
                "message": self.message, "running": self.running,
                "grid": grid(self.cells),
                "cells": [{"label": c["label"], "index": i, "values": c["values"], "caption": caption(c["values"]),
                           "files": self.files.get(c["label"], []),
                           "preview": _preview_info(self.previews.get(c["label"]))}
                          for i, c in enumerate(self.cells)],
            }

    def preview_png(self, index: int) -> bytes | None:
        with self._changed:
            if not 0 <= index < len(self.cells):
                return None
            item = self.previews.get(self.cells[index]["label"])
            return item[0] if item else None

    def file(self, name: str) -> Path | None:
        """An output file of the current run (None for any other name)."""
        with self._changed:
            if self.out_dir is None or not any(name in files for files in self.files.values()):
                return None
            return inside(self.out_dir, name)

    def wake(self) -> None:
        """Release waiting requests (the server is closing)."""
        with self._changed:
            self._bump()


def _preview_info(item: tuple[bytes, int, int, int] | None) -> dict[str, int] | None:
    """A cell's preview as the state shows it: its step and total, and the version that brought it (the
    page fetches the image again only when that changes)."""
    return None if item is None else {"step": item[1], "total": item[2], "version": item[3]}


class PreviewEvents(Events):
    """Runner events for the page: which node runs, and each sampler step's latent preview per cell."""

    wants_previews = True

    def __init__(self, state: WatchState, cells: Callable[[], list[dict[str, Any]]] | None = None):
        self.state = state
        self.cells = cells  # the cells (label, values) of the workflow about to run

    def run_start(self, steps):
        if self.cells is not None:
            self.state.lay_out(self.cells())

    def node_start(self, task, index, total):
        self.state.node_running(task.node_id)

    def node_preview(self, task, blocks, step, total, denoised, fmt):
        from flowrun.diffusion.latent_preview import png, to_rgb

        if not blocks:
            return
        rows = max(1, denoised.shape[0] // len(blocks))
        images = [png(image) for image in to_rgb(denoised[::rows][: len(blocks)], fmt)]  # each block's first
        self.state.preview([label for block in blocks for label in block],
                           [image for block, image in zip(blocks, images) for _ in block], step, total)


class Fanout(Events):
    """Every event to each of several listeners (the console and the page)."""

    def __init__(self, *listeners: Events):
        self.listeners = listeners
        self.wants_previews = any(e.wants_previews for e in listeners)

    def run_start(self, steps):
        for e in self.listeners:
            e.run_start(steps)

    def node_start(self, task, index, total):
        for e in self.listeners:
            e.node_start(task, index, total)

    def node_step(self, task, step, total):
        for e in self.listeners:
            e.node_step(task, step, total)

    def node_end(self, task, status, seconds):
        for e in self.listeners:
            e.node_end(task, status, seconds)

    def node_preview(self, task, blocks, step, total, denoised, fmt):
        for e in self.listeners:
            if e.wants_previews:
                e.node_preview(task, blocks, step, total, denoised, fmt)

    def warn(self, message):
        for e in self.listeners:
            e.warn(message)


def _handler(state: WatchState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name): no access log on stderr
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            path = unquote(url.path)
            if path in ("/", "/index.html"):
                return self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            if path == "/state.json":
                since = parse_qs(url.query).get("since", [None])[0]
                data = state.snapshot(int(since) if since and since.isdigit() else None)
                return self._send(HTTPStatus.OK, json.dumps(data).encode(), "application/json")
            if path.startswith("/preview/") and path.endswith(".png") and path[9:-4].isdigit():
                data = state.preview_png(int(path[9:-4]))
                if data is not None:
                    return self._send(HTTPStatus.OK, data, "image/png")
            if path.startswith("/files/"):
                try:
                    found = state.file(path[len("/files/"):])
                except ValueError:
                    found = None
                if found is not None and found.is_file():
                    return self._send(HTTPStatus.OK, found.read_bytes(),
                                      "image/png" if found.suffix == ".png" else "application/octet-stream")
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser that closes a tab mid-answer is no error; anything else is said in one line."""
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            sys.stderr.write(f"flowrun watch: the page's server: {type(exc).__name__}: {exc}\n")


class PageServer:
    """The page's HTTP server on 127.0.0.1 in a daemon thread (port 0: a free one)."""

    def __init__(self, state: WatchState, port: int = 0):
        self.state = state
        self.httpd = _Server(("127.0.0.1", port), _handler(state))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="flowrun-watch-page", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "PageServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.state.wake()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "PageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

