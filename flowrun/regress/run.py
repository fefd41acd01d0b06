"""Render regression cases through the engine, compare them with their goldens, optionally update them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flowrun import api
from flowrun.errors import FlowrunError, WorkflowInvalid
from flowrun.regress.cases import CaseResult, current_backend, discover, judge, thresholds_of, update_goldens
from flowrun.settings import Settings


def run_case(workflow: Path, settings: Settings, out_dir: Path, backend: str, update: bool = False
             ) -> tuple[CaseResult, list[str]]:
    result = CaseResult(workflow)
    try:
        resolved = api.load(workflow, plugins=settings.plugins)
    except WorkflowInvalid as exc:
        result.error, result.exit_code = exc.render(), 2
        return result, []
    try:
        run = api.run(resolved, replace(settings, out_dir=out_dir))
    except FlowrunError as exc:
        result.error, result.exit_code = exc.render(), exc.exit_code
        return result, []
    cmd = f"flowrun test {workflow} --update"
    result.outcomes = judge(workflow, run.manifest, out_dir, backend, thresholds_of(resolved), cmd)
    changes: list[str] = []
    if update:
        changes = update_goldens(workflow, result.outcomes, backend)
        result.outcomes = judge(workflow, run.manifest, out_dir, backend, thresholds_of(resolved), cmd)
    return result, changes


def run_cases(paths: list[Path], settings: Settings, out_root: Path, *, update: bool = False,
              backend: str | None = None) -> tuple[list[CaseResult], list[str]]:
    backend = backend or current_backend(settings.device)
    results, changes, used = [], [], set()
    for workflow in discover(paths):
        name = workflow.stem
        while name in used:
            name += "_"
        used.add(name)
        result, changed = run_case(workflow, settings, out_root / name, backend, update)
        results.append(result)
        changes += changed
    return results, changes


def exit_code(results: list[CaseResult]) -> int:
    if any(r.exit_code == 2 for r in results):
        return 2
    return 1 if any(r.grade == "fail" for r in results) else 0
