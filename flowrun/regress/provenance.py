"""What made each golden, and why a render no longer matches it.

Each golden folder (`goldens/<case>/<backend>/`) keeps `golden.json`: for every golden file, the graph key
of the node that wrote it (the cache key without code identity and environment: what the workflow asks
for) and the environment it was rendered in (flowrun's version and code identity, library versions, the
machine, the device and its name), environments stored once by digest.

A render that differs from its golden is then classified:
- `graph`: the graph key differs: the workflow, a file it reads or a node's version changed (probably
  intended: accept the new image);
- `environment`: same graph, another environment: numeric drift from a library, flowrun's code or the
  hardware (accept with --accept-env-drift once reviewed);
- `nondeterminism`: same graph, same environment, other pixels: the loudest kind;
- `unrecorded`: the golden predates these records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowrun.cache.keys import digest
from flowrun.safepath import write_atomic

FILE = "golden.json"
GRAPH, ENVIRONMENT, NONDETERMINISM, UNRECORDED = "graph", "environment", "nondeterminism", "unrecorded"


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        # goldens of a backend may be compared on a machine without it (--backend cuda on a CPU)
        return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else "no CUDA device"
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """The environment a render happens in (`device`: the backend's torch device, cpu or cuda)."""
    from flowrun import __version__
    from flowrun.cache.code_identity import package_identity
    from flowrun.graph.build import environment_info

    info = environment_info(device)
    return {"flowrun": __version__, "code": package_identity(), "versions": info["versions"],
            "machine": info["machine"], "device": device, "device_name": _device_name(device)}


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two environments, in words ("torch 2.13.0 -> 2.14.1")."""
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key} {a} -> {b}" if key != "code" else "flowrun's code")
    return out


def read(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(folder: Path, files: dict[str, dict[str, Any]], env: dict[str, Any], keep_others: bool) -> None:
    """Write `golden.json` in `folder` for `files` (name -> {"graph_key", "cells"}) rendered in `env`;
    with keep_others, the other files' records stay (they were not rewritten)."""
    data = read(folder) if keep_others else {}
    envs = dict(data.get("environments", {}))
    records = dict(data.get("files", {})) if keep_others else {}
    env_id = digest(env)[:16]
    envs[env_id] = env
    for name, info in files.items():
        records[name] = {**info, "environment": env_id}
    used = {r["environment"] for r in records.values()}
    data = {"environments": {k: v for k, v in sorted(envs.items()) if k in used}, "files": dict(sorted(records.items()))}
    write_atomic(folder / FILE, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def classify(folder: Path, name: str, graph_key: str, env: dict[str, Any]) -> tuple[str, str]:
    """(cause, explanation) of a render of golden `name` in `folder` that does not match it."""
    data = read(folder)
    rec = data.get("files", {}).get(name)
    if rec is None:
        return UNRECORDED, "no record of what made the golden (written before golden.json existed)"
    if rec.get("graph_key") != graph_key:
        return GRAPH, "the graph changed (workflow, files or node versions): probably intended"
    before = data.get("environments", {}).get(rec.get("environment"), {})
    changed = differences(before, env)
    if changed:
        return ENVIRONMENT, "same graph, other environment: " + ", ".join(changed)
    return NONDETERMINISM, "same graph, same environment, other pixels: the render is not deterministic"
