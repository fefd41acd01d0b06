"""Progress events from the runner. Subclass and override what you want to show; the default shows nothing."""

from __future__ import annotations

from typing import Any


class Events:
    # set by a subclass that shows samplers' latent previews (node_preview); off by default, so that
    # samplers compute nothing for previews nobody sees
    wants_previews = False

    def run_start(self, steps: list[Any]) -> None: ...

    def node_start(self, task: Any, index: int, total: int) -> None: ...

    def node_step(self, task: Any, step: int, total: int) -> None: ...

    def node_end(self, task: Any, status: str, seconds: float) -> None: ...

    def node_preview(self, task: Any, blocks: list[list[str]], step: int, total: int, denoised: Any,
                     latent_format: Any) -> None:
        """A sampler's step inside `task`: its prediction of the clean latent (model space; one block of
        rows per entry of `blocks`, which lists the labels of the cells that block stands for) and its
        format (flowrun.diffusion.latent_preview: to_rgb projects it)."""

    def warn(self, message: str) -> None: ...

    def cells_done(self, done: int, total: int, labels: list[str], worker: str, seconds: float) -> None:
        """A cluster worker finished some cells (the Ray executor)."""
