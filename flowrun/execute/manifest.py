"""run.json: what a run did, cell by cell and node by node, written atomically into the output folder."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flowrun import __version__
from flowrun.execute.runner import NodeRecord
from flowrun.graph.build import Graph
from flowrun.safepath import write_atomic

MANIFEST = "run.json"


def build_manifest(graph: Graph, records: dict[str, NodeRecord], *, status: str, started: datetime,
                   seconds: float, error: str | None = None, cells: dict[int, dict] | None = None,
                   executor: str = "local") -> dict[str, Any]:
    """`cells`: per cell index, where it was rendered (worker, seconds of its unit), from a cluster run."""
    resolved = graph.resolved
    cells = cells or {}
    scores = cell_scores(graph, records)
    return {
        "flowrun_version": __version__,
        "python": platform.python_version(),
        "workflow": {
            "file": resolved.file,
            "name": resolved.spec.name,
            "sha256": hashlib.sha256(resolved.source.text.encode()).hexdigest(),
        },
        "status": status,
        "error": error,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 4),
        "executor": executor,
        "cells": [{"index": c.index, "label": c.label, "values": c.values, "params": c.params,
                   **({"scores": scores[c.label]} if c.label in scores else {}),
                   **cells.get(c.index, {})}
                  for c in resolved.cells],
        "nodes": [
            {
                "id": r.task.node_id,
                "type": r.task.type_name,
                "key": r.task.key,
                "graph_key": r.task.graph_key,
                "cells": graph.cell_labels(r.task),
                "status": r.status,
                "seconds": round(r.seconds, 4),
                "outputs": [] if r.task.node_def.preview else r.files,
                **({"previews": r.files} if r.task.node_def.preview else {}),
                **({"batched": r.batched} if r.batched > 1 else {}),
                **({"metric": r.task.node_def.metric, "score": r.score} if r.task.node_def.metric else {}),
                **({"error": r.error} if r.error else {}),
                **({"worker": r.worker} if r.worker else {}),
            }
            for r in records.values()
        ],
        "failures": [
            {"node": r.task.node_id, "type": r.task.type_name, "cells": graph.cell_labels(r.task), "error": r.error}
            for r in records.values() if r.status == "failed"
        ],
    }


def cell_scores(graph: Graph, records: dict[str, NodeRecord]) -> dict[str, dict[str, float]]:
    """Per cell label, the score of each scoring node (node id -> score) that ran or came from the cache."""
    scores: dict[str, dict[str, float]] = {}
    for r in records.values():
        if r.task.node_def.metric and r.score is not None:
            for label in graph.cell_labels(r.task):
                scores.setdefault(label, {})[r.task.node_id] = r.score
    return scores


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return path


def now() -> datetime:
    return datetime.now(timezone.utc)
