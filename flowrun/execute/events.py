"""Progress events from the runner. Subclass and override what you want to show; the default shows nothing."""

from __future__ import annotations

from typing import Any


class Events:
    def run_start(self, steps: list[Any]) -> None: ...

    def node_start(self, task: Any, index: int, total: int) -> None: ...

    def node_step(self, task: Any, step: int, total: int) -> None: ...

    def node_end(self, task: Any, status: str, seconds: float) -> None: ...

    def warn(self, message: str) -> None: ...

    def cells_done(self, done: int, total: int, labels: list[str], worker: str, seconds: float) -> None:
        """A cluster worker finished some cells (the Ray executor)."""
