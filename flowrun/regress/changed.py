"""`flowrun test --changed-since REV`: the regression cases whose renders a change since REV can alter,
so that a pull request that touches one workflow tests one workflow.

A case is selected when its workflow is new or invalid on either side, when the cache keys of its output
cells differ between REV's text and the working tree's (planned in this process: same code, same
environment, so only the graph can differ), or when the environment its goldens were rendered in
differs from this one (then any render may move: every such case runs).
"""

from __future__ import annotations

from pathlib import Path

from flowrun import pipeline
from flowrun.errors import FlowrunError
from flowrun.regress import provenance
from flowrun.regress.cases import golden_dir
from flowrun.settings import Settings


def _environment_moved(workflow: Path, backend: str, env: dict) -> bool:
    records = provenance.read(golden_dir(workflow, backend))
    envs = records.get("environments", {})
    return not envs or any(provenance.differences(e, env) for e in envs.values())


def changed_since(workflows: list[Path], rev: str, settings: Settings, backend: str) -> list[tuple[Path, str]]:
    """(workflow, why) for each case to test."""
    from flowrun.files import FileLookup
    from flowrun.graph.diff import output_keys
    from flowrun.revisions import text_at

    env = provenance.environment(backend)
    chosen = []
    for wf in workflows:
        text = text_at(rev, wf)
        if text is None:
            chosen.append((wf, f"new since {rev}"))
            continue
        try:
            before = pipeline.load_text(text, wf, plugins=settings.plugins)
            now = pipeline.load(wf, plugins=settings.plugins)
            lookup = FileLookup.for_workflow(wf, settings)
            if (output_keys(before, lookup, settings.device, settings.dtype)
                    != output_keys(now, lookup, settings.device, settings.dtype)):
                chosen.append((wf, f"its graph changed since {rev}"))
            elif _environment_moved(wf, backend, env):
                chosen.append((wf, "its goldens were rendered in another environment"))
        except FlowrunError:
            chosen.append((wf, "invalid on one side"))
    return chosen
