"""Decide, before anything runs, which nodes execute, which come from the cache, and which are not needed."""

from __future__ import annotations

from dataclasses import dataclass

from flowrun.cache.tiers import NodeCache
from flowrun.graph.build import Graph, Task

RUN, CACHED, SKIP = "run", "cached", "skip"


@dataclass
class Step:
    task: Task
    action: str  # RUN, CACHED or SKIP
    reason: str


def plan(graph: Graph, cache: NodeCache | None, targets: set[str] | None = None) -> list[Step]:
    """One step per task, in execution order. A task runs when an output needs it and no cache holds it;
    tasks whose every consumer is cached are skipped. `targets` limits the outputs wanted to those task
    keys (a worker rendering some of the cells)."""
    demanded: set[str] = set()
    steps: dict[str, Step] = {}
    for key in reversed(graph.order):
        task = graph.tasks[key]
        wanted = task.node_def.sink and (targets is None or key in targets)
        if not (wanted or key in demanded):
            steps[key] = Step(task, SKIP, "not needed: what it feeds is cached")
            continue
        if task.node_def.preview:  # previews are for looking at while iterating: made anew every run
            steps[key] = Step(task, RUN, "a preview: never cached")
            demanded.update(up for up, _ in task.inputs.values())
            continue
        where = cache.where(key, task.out_types) if cache is not None else None
        if where:
            steps[key] = Step(task, CACHED, f"in the {where} cache")
            continue
        if cache is None:
            reason = "cache disabled"
        elif task.out_types is not None and not NodeCache.serializable(task.out_types):
            reason = "its outputs (" + ", ".join(sorted(set(task.out_types.values()))) + ") are kept in memory only"
        else:
            reason = "not in the cache"
        steps[key] = Step(task, RUN, reason)
        demanded.update(up for up, _ in task.inputs.values())
    return [steps[k] for k in graph.order]
