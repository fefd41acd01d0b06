"""Render regression cases through the engine, compare them with their goldens, optionally update them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from flowrun import pipeline
from flowrun.diffusion.detect import CheckpointError
from flowrun.errors import FlowrunError, Problem, WorkflowInvalid
from flowrun.files import FileLookup
from flowrun.regress import provenance, report, semantic
from flowrun.regress.cases import PASS, CaseResult, current_backend, discover, judge, thresholds_of, update_goldens
from flowrun.settings import Settings


@dataclass
class RegressionRun:
    """What `flowrun test` found: each workflow's result, the goldens it changed, and where the reports went
    (none written when no workflow was found)."""

    paths: list[Path]
    results: list[CaseResult] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    html_report: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    exit_code: int = 2
    selected: list[tuple[Path, str]] = field(default_factory=list)  # with changed_since: each case and why


def run_case(workflow: Path, settings: Settings, out_dir: Path, backend: str, update: bool = False,
             accept: frozenset[str] = frozenset(), accept_env_drift: bool = False) -> tuple[CaseResult, list[str]]:
    """Render one workflow's cases into out_dir and judge them. `update` rewrites all its goldens; `accept`
    (CASE or CASE/CELL) rewrites those cells' goldens that do not match, `accept_env_drift` those whose
    difference comes from the environment alone."""
    result = CaseResult(workflow)
    try:
        resolved = pipeline.load(workflow, plugins=settings.plugins)
    except WorkflowInvalid as exc:
        result.error, result.exit_code = exc.render(), 2
        return result, []
    thresholds = thresholds_of(resolved)
    try:
        judge_semantics = semantic_judge(resolved, thresholds, settings)
        run = pipeline.run(resolved, replace(settings, out_dir=out_dir))
    except FlowrunError as exc:
        result.error, result.exit_code = exc.render(), exc.exit_code
        return result, []
    cmd = f"flowrun test {workflow} --update"
    env = provenance.environment(backend)
    try:
        result.outcomes = judge(workflow, run.manifest, out_dir, backend, thresholds, cmd, env, judge_semantics)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:  # the semantic checks' CLIP model
        result.error, result.exit_code = f"error: {workflow}: test.clip_model: {exc}", 1
        return result, []
    changes: list[str] = []
    only = [o for o in result.outcomes if o.grade != PASS and (
        o.accepted_by(accept) or (accept_env_drift and o.cause == provenance.ENVIRONMENT))]
    if update or only:
        changes = update_goldens(workflow, result.outcomes, backend, env, None if update else only)
        result.outcomes = judge(workflow, run.manifest, out_dir, backend, thresholds, cmd, env, judge_semantics)
    return result, changes


def semantic_judge(resolved, thresholds, settings: Settings) -> "semantic.SemanticJudge | None":
    """The judge of the case's semantic checks, if it asks for any; WorkflowInvalid (at the `test:` block's
    line) when min_clip_score has nothing to score against."""
    if not semantic.wanted(thresholds):
        return None
    metrics = {resolved.registry.get(n.type).metric for n in resolved.spec.nodes.values()
               if resolved.registry.get(n.type) is not None}
    if semantic.missing_text(thresholds, metrics):
        where = resolved.source.where(("test", "min_clip_score"), key=True)
        raise WorkflowInvalid([Problem("semantic-check", "min_clip_score needs a text to score against",
                                       where, field="min_clip_score",
                                       hint="add clip_text to the test block, or a CLIPScore node to the workflow")])
    return semantic.SemanticJudge(thresholds, FileLookup.for_workflow(resolved.file, settings))


def run_cases(paths: list[Path], settings: Settings, out_root: Path, *, update: bool = False,
              backend: str | None = None, accept: frozenset[str] = frozenset(), accept_env_drift: bool = False,
              changed_since: str | None = None) -> tuple[list[CaseResult], list[str], list[tuple[Path, str]]]:
    """Every workflow under `paths` (or, with changed_since, those a change since that git revision can
    alter), each rendered into its own folder below out_root; also (workflow, why) of the chosen ones."""
    backend = backend or current_backend(settings.device, settings.dtype)
    workflows = discover(paths)
    chosen = [(w, "") for w in workflows]
    if changed_since is not None:
        from flowrun.regress.changed import changed_since as select

        chosen = select(workflows, changed_since, settings, backend)
    results, changes, used = [], [], set()
    for workflow, _ in chosen:
        name = workflow.stem
        while name in used:
            name += "_"
        used.add(name)
        result, changed = run_case(workflow, settings, out_root / name, backend, update, accept, accept_env_drift)
        results.append(result)
        changes += changed
    return results, changes, chosen


def run_suite(paths: list[Path], settings: Settings, report_dir: Path, *, update: bool = False,
              backend: str | None = None, accept: frozenset[str] = frozenset(), accept_env_drift: bool = False,
              changed_since: str | None = None) -> RegressionRun:
    """Render the cases under `paths` (default: workflows/, else the current folder) into report_dir/renders,
    and write the HTML, JUnit and JSON reports beside them."""
    paths = list(paths) or [Path("workflows") if Path("workflows").is_dir() else Path(".")]
    results, changes, chosen = run_cases(paths, settings, report_dir / "renders", update=update, backend=backend,
                                         accept=accept, accept_env_drift=accept_env_drift,
                                         changed_since=changed_since)
    if not results:
        return RegressionRun(paths, exit_code=0 if changed_since is not None else 2)
    html_path = report.write_html(results, report_dir / "report.html")
    report.write_junit(results, report_dir / "junit.xml")
    report.write_json(results, report_dir / "summary.json", changes)
    return RegressionRun(paths, results, changes, html_path, report.counts(results), exit_code(results),
                         [(w, why) for w, why in chosen if why])


def exit_code(results: list[CaseResult]) -> int:
    """2 if a workflow is invalid, else 1 if a case failed, else 0."""
    if any(r.exit_code == 2 for r in results):
        return 2
    return 1 if any(r.grade == "fail" for r in results) else 0
