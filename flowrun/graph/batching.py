"""Seed batching: tasks that will run and differ only in fields their node can batch (KSampler: seed and
cfg) form one group, executed as a single batched call."""

from __future__ import annotations

from flowrun.cache.keys import canonical_json
from flowrun.graph.plan import RUN, Step


def batch_groups(steps: list[Step]) -> dict[str, list[str]]:
    """task key -> the keys of its group (in execution order), for every task in a group of two or more."""
    groups: dict[str, list[str]] = {}
    for step in steps:
        task = step.task
        nd = task.node_def
        if step.action != RUN or nd.batch is None:
            continue
        shared = {k: v for k, v in task.literals.items() if k not in nd.batch_fields}
        signature = canonical_json([nd.type_name, nd.version, shared, sorted(task.inputs.items()), task.fingerprints])
        groups.setdefault(signature, []).append(task.key)
    return {key: members for members in groups.values() if len(members) > 1 for key in members}
