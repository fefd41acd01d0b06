"""What changed between two versions of a workflow: in its text's meaning (params, sweep axes and cell
counts, nodes added, removed, retyped or re-linked, fields changed) and in its results (the output cells
whose cache keys differ: the images the change would alter).

Both sides are planned in this process, so code and environment are the same on both: a key differs only
where the graph does. Files a workflow reads are the current ones for both sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flowrun.graph.resolve import Resolved

CHANGED, UNCHANGED, ADDED, REMOVED = "changed", "unchanged", "added", "removed"


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


@dataclass
class WorkflowDiff:
    """The changes, in words, and each output cell's fate: (node id, cell label, status)."""

    text: list[str] = field(default_factory=list)
    outputs: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def changed_outputs(self) -> list[tuple[str, str, str]]:
        return [o for o in self.outputs if o[2] != UNCHANGED]


def _mapping_changes(what: str, a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            out.append(f"{what} {k} removed (was {_show(a[k])})")
        elif k not in a:
            out.append(f"{what} {k} added: {_show(b[k])}")
        elif a[k] != b[k]:
            out.append(f"{what} {k}: {_show(a[k])} -> {_show(b[k])}")
    return out


def spec_changes(a: Resolved, b: Resolved) -> list[str]:
    """The differences between two workflows as written, in words, in a fixed order."""
    sa, sb = a.spec, b.spec
    out = _mapping_changes("param", sa.params, sb.params)
    grid_a = sa.sweep.grid if sa.sweep else {}
    grid_b = sb.sweep.grid if sb.sweep else {}
    zip_a = sa.sweep.zip if sa.sweep else {}
    zip_b = sb.sweep.zip if sb.sweep else {}
    axes = _mapping_changes("sweep axis", {k: _axis(v) for k, v in grid_a.items()}, {k: _axis(v) for k, v in grid_b.items()})
    axes += _mapping_changes("zipped axis", {k: _axis(v) for k, v in zip_a.items()}, {k: _axis(v) for k, v in zip_b.items()})
    out += axes
    if len(a.cells) != len(b.cells) or axes:
        out.append(f"cells: {len(a.cells)} -> {len(b.cells)}")
    for nid in sorted(set(sa.nodes) | set(sb.nodes)):
        na, nb = sa.nodes.get(nid), sb.nodes.get(nid)
        if nb is None:
            out.append(f"node {nid} removed ({na.type})")
            continue
        if na is None:
            out.append(f"node {nid} added ({nb.type})")
            continue
        if na.type != nb.type:
            out.append(f"node {nid}: type {na.type} -> {nb.type}")
        for name in sorted(set(na.in_) | set(nb.in_)):
            if na.in_.get(name) != nb.in_.get(name):
                out.append(f"node {nid}: input {name} re-linked: {na.in_.get(name) or 'none'} -> {nb.in_.get(name) or 'none'}")
        out += _mapping_changes(f"node {nid}: field", na.with_, nb.with_)
    return out


def _axis(values: Any) -> Any:
    return values.model_dump() if hasattr(values, "model_dump") else values


def output_keys(resolved: Resolved, lookup, device: str | None = None, dtype: str | None = None
                ) -> dict[tuple[str, str], str]:
    """(output node id, cell label) -> the cache key of what it writes there."""
    from flowrun.graph.build import build

    graph = build(resolved, lookup, device, dtype)
    keys = {}
    for task in graph.tasks.values():
        if task.node_def.output:
            for ci in task.cells:
                keys[(task.node_id, resolved.cells[ci].label)] = task.key
    return keys


def diff(a: Resolved, b: Resolved, lookup_a, lookup_b, device: str | None = None, dtype: str | None = None
         ) -> WorkflowDiff:
    """Everything that differs from `a` to `b`."""
    ka, kb = output_keys(a, lookup_a, device, dtype), output_keys(b, lookup_b, device, dtype)
    outputs = []
    for where in sorted(set(ka) | set(kb)):
        status = REMOVED if where not in kb else ADDED if where not in ka else (
            UNCHANGED if ka[where] == kb[where] else CHANGED)
        outputs.append((where[0], where[1], status))
    return WorkflowDiff(spec_changes(a, b), outputs)
