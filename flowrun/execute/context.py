"""The run context: a node's only door to the outside world (progress, output files, provenance, files)."""

from __future__ import annotations

import json
from typing import Any

from flowrun.cache.fingerprints import FileEnv
from flowrun.execute.events import Events
from flowrun.safepath import relative_name_problem


class RunContext:
    def __init__(self, task: Any, cell_labels: list[str], events: Events, files: FileEnv):
        self.task = task
        self.cell_labels = cell_labels
        self.files = files
        self._events = events
        self.saved: dict[str, bytes] = {}

    def progress(self, step: int, total: int) -> None:
        """Report step `step` of `total` inside a long node (a sampler's steps)."""
        self._events.node_step(self.task, step, total)

    def output_stem(self, prefix: str) -> str:
        """The file stem for an output node: its prefix, plus a suffix when other cells would collide."""
        return prefix + self.task.output_suffix

    def provenance_text(self) -> dict[str, str]:
        """Text chunks for output files: what made them, as JSON, and the resolved workflow as YAML.
        Only what the cache key covers goes in, so a cached file and a fresh one are the same bytes."""
        prov = dict(self.task.provenance or {})
        resolved = prov.pop("resolved", "")
        prompt = prov.pop("prompt", None)
        text = {"flowrun": json.dumps(prov, sort_keys=True, ensure_ascii=False), "flowrun_workflow": resolved}
        if prompt:
            text["prompt"] = prompt  # ComfyUI reads this chunk: the image opens there as a graph
        return text

    def save(self, name: str, data: bytes) -> None:
        """Hand a file to the runner; it is written atomically into the output folder after the node ends."""
        problem = relative_name_problem(name)
        if problem:
            raise ValueError(f"output name '{name}' is not allowed: {problem}")
        if name in self.saved:
            raise ValueError(f"output '{name}' written twice by one node")
        self.saved[name] = data
