"""Seed batching: tasks that will run and differ only in fields their node can batch (KSampler: seed and
cfg) form one group, executed as a single batched call."""

from __future__ import annotations

from flowrun.cache.keys import canonical_json
from flowrun.graph.plan import RUN, Step


def batch_groups(steps: list[Step], max_batch: int | None = None) -> dict[str, list[str]]:
    """task key -> the keys of its group (in execution order), for every task in a group of two or more.
    With `max_batch`, groups are cut, in order, into consecutive parts of at most that many tasks (the
    same parts on one machine and across a cluster, so both render the same bytes)."""
    groups: dict[str, list[str]] = {}
    for step in steps:
        task = step.task
        nd = task.node_def
        if step.action != RUN or not nd.batch:
            continue
        shared = {k: v for k, v in task.literals.items() if k not in nd.batch_fields}
        signature = canonical_json([nd.type_name, nd.version, shared, sorted(task.inputs.items()), task.fingerprints])
        groups.setdefault(signature, []).append(task.key)
    parts = []
    for members in groups.values():
        size = max_batch or len(members)
        parts += [members[i:i + size] for i in range(0, len(members), size)]
    return {key: part for part in parts if len(part) > 1 for key in part}
