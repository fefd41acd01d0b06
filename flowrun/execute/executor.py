"""One executor protocol, and the one place that picks the executor a run's Settings ask for.

An executor renders a plan's steps: the local `Runner` in this process, or the Ray driver that spreads
cells over a cluster. The pipeline needs only what the protocol names, and `cells` where it exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flowrun.execute.events import Events
from flowrun.graph.plan import RUN
from flowrun.settings import Settings

if TYPE_CHECKING:  # typing only: the runner imports pydantic and the cache tiers
    from flowrun.cache.tiers import NodeCache
    from flowrun.execute.context import Services
    from flowrun.execute.runner import NodeRecord
    from flowrun.graph.build import Graph
    from flowrun.graph.plan import Step


class Executor(Protocol):
    """Renders a plan. `records` holds each step's outcome, filled in as it goes, so that an interrupted or
    failed run still has them for run.json. A cluster executor also has `cells`: who rendered each cell."""

    records: dict[str, "NodeRecord"]

    def run(self) -> dict[str, "NodeRecord"]:
        """Render every step; raises RunFailed for failed nodes (after the others, with keep_going)."""


def cells_of(executor: Executor) -> dict[int, dict[str, Any]] | None:
    """Where and how long each cell rendered, for an executor that spreads cells; None for the local one."""
    return getattr(executor, "cells", None)


def make_executor(settings: Settings, graph: "Graph", steps: list["Step"], cache: "NodeCache | None",
                  out_dir: Path, services: "Services", events: Events | None) -> Executor:
    """The Ray driver for `--executor ray` with cells to render, else the local Runner (which also serves a
    cluster run whose every node is cached: it only restores files)."""
    if settings.executor == "ray":
        from flowrun.execute.ray_options import RayOptions, require_ray

        require_ray()  # a missing Ray is reported even when there is nothing to render
        if any(s.action == RUN for s in steps):
            from flowrun.execute.ray_driver import RayExecutor

            return RayExecutor(graph, steps, settings, out_dir, events or Events(),
                               settings.ray_options or RayOptions())
    from flowrun.execute.runner import Runner

    return Runner(graph, steps, cache, out_dir, services, events, batch=settings.batch,
                  keep_going=settings.keep_going, max_batch=settings.max_batch)
