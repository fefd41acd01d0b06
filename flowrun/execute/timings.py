"""Seconds that nodes took in earlier runs, kept in the cache folder, to estimate what a plan will cost.

`timings.json` holds, per node type, the last few execution times, and per cache key the last one (the
exact node, re-run after its cache entry was lost). Estimates prefer the exact key, then the type's median.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from flowrun.safepath import write_atomic

FILE = "timings.json"
KEEP_PER_TYPE = 50
KEEP_KEYS = 5000


def load(cache_dir: Path | None) -> dict[str, Any]:
    if cache_dir is None:
        return {"types": {}, "keys": {}}
    try:
        data = json.loads((Path(cache_dir) / FILE).read_text())
        return {"types": dict(data.get("types", {})), "keys": dict(data.get("keys", {}))}
    except (OSError, ValueError, AttributeError):
        return {"types": {}, "keys": {}}


def record(cache_dir: Path | None, manifest: dict[str, Any]) -> None:
    """Add the executed nodes of a run (best effort: a read-only cache folder is no failure)."""
    if cache_dir is None:
        return
    data = load(cache_dir)
    for n in manifest["nodes"]:
        if n["status"] != "executed":
            continue
        data["types"][n["type"]] = (data["types"].get(n["type"], []) + [n["seconds"]])[-KEEP_PER_TYPE:]
        data["keys"][n["key"]] = n["seconds"]
    if len(data["keys"]) > KEEP_KEYS:
        data["keys"] = dict(list(data["keys"].items())[-KEEP_KEYS:])
    try:
        write_atomic(Path(cache_dir) / FILE, json.dumps(data).encode())
    except OSError:
        pass


def estimate(data: dict[str, Any], tasks: list[Any]) -> tuple[float, list[str]]:
    """(seconds, node types with no history) for the tasks that will run."""
    total, unknown = 0.0, []
    for t in tasks:
        if t.key in data["keys"]:
            total += data["keys"][t.key]
        elif data["types"].get(t.type_name):
            total += statistics.median(data["types"][t.type_name])
        elif t.type_name not in unknown:
            unknown.append(t.type_name)
    return total, unknown
