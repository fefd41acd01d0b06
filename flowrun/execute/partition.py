"""Cut a planned run into units of work for a cluster: groups of cells that belong together.

Cells stay together when they batch into one sampler call (so a worker renders the same batch as one
machine would, and the same bytes) or share an output node. Units keep the graph's order, which
already groups cells by the models they load; each unit is tagged with those memory-only models (its
affinity), so the scheduler can send it to a worker that holds them already.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from flowrun.cache.tiers import NodeCache
from flowrun.graph.batching import batch_groups
from flowrun.graph.build import Graph
from flowrun.graph.plan import SKIP, Step


@dataclass
class Unit:
    index: int
    cells: list[int]
    targets: list[str]  # output task keys this unit produces
    affinity: frozenset[str] = field(default_factory=frozenset)  # memory-only tasks (models) it needs


def partition(graph: Graph, steps: list[Step], *, batch: bool = True, max_batch: int | None = None) -> list[Unit]:
    outputs = [s.task for s in steps if s.task.node_def.sink and s.action != SKIP]
    parent = {c: c for t in outputs for c in t.cells}

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    def join(cells) -> None:
        cells = [c for c in cells if c in parent]
        for c in cells[1:]:
            parent[find(c)] = find(cells[0])

    for task in outputs:  # one output file serving several cells is rendered once
        join(task.cells)
    if batch:
        for members in batch_groups(steps, max_batch).values():
            join([c for key in members for c in graph.tasks[key].cells])

    by_root: dict[int, list[str]] = {}
    for task in outputs:  # in execution order
        by_root.setdefault(find(task.cells[0]), []).append(task.key)
    units = []
    for i, targets in enumerate(by_root.values()):
        needed = set().union(*(nx.ancestors(graph.g, key) for key in targets))
        affinity = frozenset(k for k in needed if _memory_only(graph, k))
        cells = sorted({c for key in targets for c in graph.tasks[key].cells})
        units.append(Unit(i, cells, targets, affinity))
    return units


def _memory_only(graph: Graph, key: str) -> bool:
    out_types = graph.tasks[key].out_types
    return out_types is not None and not NodeCache.serializable(out_types)
