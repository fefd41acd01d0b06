"""Regression cases: a workflow plus the expected images ("goldens") kept next to it.

Layout: `<folder>/<name>.yaml` and `<folder>/goldens/<name>/<backend>/<output file>`, where backend is
`cpu` or `cuda` (different hardware legitimately differs); a backend without goldens of its own falls back
to `cpu`. A case renders through the normal engine (and its cache), then each output is compared with
its golden. `--update` writes the goldens and says which ones changed; nothing is updated silently.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowrun.regress import provenance
from flowrun.regress.compare import FAIL, PASS, WARN, Comparison, Thresholds, compare, load_rgb

GOLDENS = "goldens"
SKIP_DIRS = {GOLDENS, "out", "node_modules", "__pycache__"}
_WORKFLOW = re.compile(rb"^version:\s*1\s*$", re.M)
_NODES = re.compile(rb"^nodes:", re.M)
GRADE_ORDER = {PASS: 0, WARN: 1, FAIL: 2}


def is_workflow(path: Path) -> bool:
    try:
        head = path.read_bytes()[:262144]
    except OSError:
        return False
    return bool(_WORKFLOW.search(head) and _NODES.search(head))


def discover(paths: list[Path]) -> list[Path]:
    """Workflow files among `paths` (files, or folders searched recursively)."""
    found: list[Path] = []
    for p in paths:
        if p.is_file():
            found.append(p)
            continue
        for f in sorted(p.rglob("*.y*ml")):
            rel = f.relative_to(p).parts[:-1]
            if any(part in SKIP_DIRS or part.startswith(".") for part in rel):
                continue
            if is_workflow(f):
                found.append(f)
    return list(dict.fromkeys(found))


def golden_root(workflow: Path) -> Path:
    return workflow.parent / GOLDENS / workflow.stem


def golden_dir(workflow: Path, backend: str) -> Path:
    """The folder holding this backend's goldens, falling back to cpu's."""
    root = golden_root(workflow)
    for name in (backend, "cpu"):
        if (root / name).is_dir() and any((root / name).iterdir()):
            return root / name
    return root / backend


def current_backend(device: str | None, dtype: str | None = None) -> str:
    """The goldens' folder for renders on `device` in `dtype` (None: the device's default): `cpu`,
    `cpu-bf16`, `cuda-fp16`... (flowrun.precision.backend_name)."""
    from flowrun.precision import backend_name, resolved

    if device:
        kind = "cuda" if device.startswith("cuda") else device.split(":")[0]
    else:
        import torch

        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return backend_name(kind, resolved(kind, dtype))


@dataclass
class Outcome:
    """One output file of one case: how it compares with its golden."""

    case: str
    workflow: Path
    file: str
    cells: list[str]
    params: dict[str, Any]
    new: Path
    golden: Path | None
    grade: str
    comparison: Comparison | None
    message: str
    graph_key: str = ""
    cause: str | None = None  # why a render differs from its golden (flowrun.regress.provenance)
    semantic: dict[str, float] | None = None  # the semantic checks' measures (flowrun.regress.semantic)

    @property
    def accept_token(self) -> str:
        """What `flowrun test --accept` takes to rewrite this golden: CASE/CELL."""
        return f"{self.case}/{self.cells[0]}" if self.cells else self.case

    def accepted_by(self, tokens: set[str]) -> bool:
        return self.case in tokens or any(f"{self.case}/{c}" in tokens for c in self.cells)

    def as_json(self) -> dict[str, Any]:
        return {"case": self.case, "workflow": str(self.workflow), "file": self.file, "cells": self.cells,
                "params": self.params, "grade": self.grade, "message": self.message, "cause": self.cause,
                "accept": self.accept_token if self.grade != PASS else None,
                "golden": str(self.golden) if self.golden else None, "new": str(self.new),
                "metrics": self.comparison.as_json() if self.comparison else None,
                **({"semantic": self.semantic} if self.semantic is not None else {})}


@dataclass
class CaseResult:
    workflow: Path
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None  # the case could not render (invalid, or a node failed)
    exit_code: int = 0

    @property
    def grade(self) -> str:
        if self.error:
            return FAIL
        return max((o.grade for o in self.outcomes), key=GRADE_ORDER.__getitem__, default=PASS)


def thresholds_of(resolved: Any) -> Thresholds:
    spec = resolved.spec.test
    return Thresholds(**spec.model_dump()) if spec is not None else Thresholds()


def judge(workflow: Path, manifest: dict[str, Any], out_dir: Path, backend: str, thresholds: Thresholds,
          update_cmd: str, env: dict[str, Any] | None = None, semantic: Any = None) -> list[Outcome]:
    """Each PNG the run wrote against its golden; a render that is not identical is classified against
    the golden's record (provenance.classify) when `env`, the current environment, is given. With
    `semantic` (a flowrun.regress.semantic.SemanticJudge), the semantic checks grade too: besides the
    pixels (the worse grade counts), or instead of them when the thresholds say `pixels: false`."""
    cells = {c["label"]: c["params"] for c in manifest["cells"]}
    scores = {c["label"]: c.get("scores", {}) for c in manifest["cells"]}
    metric_of = {n["id"]: n["metric"] for n in manifest["nodes"] if n.get("metric")}
    gdir = golden_dir(workflow, backend)
    outcomes = []
    for node in manifest["nodes"]:
        for name in node["outputs"]:
            if not name.lower().endswith(".png"):
                continue
            new = out_dir / name
            golden = gdir / name
            params = cells.get(node["cells"][0], {}) if node["cells"] else {}
            graph_key = node.get("graph_key", "")
            if not golden.is_file():
                outcomes.append(Outcome(workflow.stem, workflow, name, node["cells"], params, new, None, FAIL, None,
                                        f"no golden {golden}; create it with: {update_cmd}", graph_key))
                continue
            result = compare(load_rgb(new), load_rgb(golden), thresholds)
            grade = result.grade if thresholds.pixels else PASS
            reason = result.reason if thresholds.pixels else f"pixels not graded ({result.reason})"
            outcome = Outcome(workflow.stem, workflow, name, node["cells"], params, new, golden, grade,
                              result, reason, graph_key)
            if semantic is not None:
                cell_scores = scores.get(node["cells"][0], {}) if node["cells"] else {}
                checked = semantic.check(new, golden, cell_scores, metric_of)
                outcome.semantic = checked.metrics
                outcome.grade = max(grade, checked.grade, key=GRADE_ORDER.__getitem__)
                outcome.message = f"{reason}; {checked.reason}"
            if env is not None and not result.identical:
                outcome.cause, why = provenance.classify(gdir, name, graph_key, env)
                outcome.message = f"{outcome.message}; {outcome.cause}: {why}"
            outcomes.append(outcome)
    return outcomes


def update_goldens(workflow: Path, outcomes: list[Outcome], backend: str, env: dict[str, Any],
                   only: list[Outcome] | None = None) -> list[str]:
    """Write this backend's goldens from the new renders (all of them, removing goldens no longer rendered;
    or `only` these) and their records in golden.json; returns what changed (written, rewritten, removed)."""
    target = golden_root(workflow) / backend
    target.mkdir(parents=True, exist_ok=True)
    changes = []
    produced = set()
    chosen = outcomes if only is None else only
    for o in chosen:
        dest = target / o.file
        produced.add(dest)
        new_bytes = o.new.read_bytes()
        if dest.is_file() and (dest.read_bytes() == new_bytes or (o.comparison and o.comparison.identical)):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        changes.append(f"{'rewrote' if dest.is_file() else 'wrote'} {dest}")
        shutil.copyfile(o.new, dest)
    if only is None:
        for stale in sorted(p for p in target.rglob("*.png") if p not in produced):
            stale.unlink()
            changes.append(f"removed {stale} (no longer rendered)")
    provenance.record(target, {o.file: {"graph_key": o.graph_key, "cells": o.cells} for o in chosen}, env,
                      keep_others=only is not None)
    return changes
