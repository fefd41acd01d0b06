"""pytest plugin: a project's ordinary `pytest` run collects flowrun regression cases, one test item per
case cell. A workflow is collected when `goldens/<name>/` exists beside it. `--flowrun-update` writes or
rewrites the goldens (and then collects every workflow); `--flowrun-models-dir` adds a model folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from flowrun.regress.cases import golden_root, is_workflow

def pytest_addoption(parser):
    group = parser.getgroup("flowrun")
    group.addoption("--flowrun-update", action="store_true", help="rewrite flowrun goldens from the new renders")
    group.addoption("--flowrun-models-dir", action="append", default=[], help="extra model folder for flowrun cases")
    group.addoption("--flowrun-device", default=None, help="torch device for flowrun cases")
    group.addoption("--flowrun-dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="precision of flowrun cases (goldens in <device>-bf16/... for other than float32)")


def pytest_collect_file(file_path: Path, parent):
    """A workflow with goldens beside it is a case; with --flowrun-update every workflow is (to create them)."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    wanted = golden_root(file_path).is_dir() or parent.config.getoption("flowrun_update")
    if wanted and is_workflow(file_path):
        return WorkflowCase.from_parent(parent, path=file_path)
    return None


class WorkflowCase(pytest.File):
    def collect(self):
        from flowrun import pipeline
        from flowrun.errors import WorkflowInvalid

        try:
            resolved = pipeline.load(self.path)
        except WorkflowInvalid as exc:
            # a case whose only problem is a missing optional extra (e.g. flowrun[upscale]) is skipped
            if exc.problems and all(p.kind == "missing-extra" for p in exc.problems):
                pytest.skip("; ".join(f"{p.message} ({p.hint})" for p in exc.problems))
            raise
        self._result = None
        for cell in resolved.cells:
            yield CellItem.from_parent(self, name=cell.label, cell=cell.label)

    def result(self):
        """Render the whole case once (all cells share nodes), then every cell item reads from it."""
        if self._result is None:
            from flowrun.regress.cases import current_backend
            from flowrun.regress.run import run_case
            from flowrun.settings import Settings

            opt = self.config.getoption
            settings = Settings(models_dirs=tuple(opt("flowrun_models_dir")), device=opt("flowrun_device"),
                                dtype=opt("flowrun_dtype"))
            out = Path(tempfile.mkdtemp(prefix=f"flowrun-{self.path.stem}-"))
            self._result = run_case(self.path, settings, out, current_backend(settings.device, settings.dtype),
                                    update=opt("flowrun_update"))
        return self._result


class FlowrunRegression(Exception):
    pass


class CellItem(pytest.Item):
    def __init__(self, *, cell: str, **kwargs):
        super().__init__(**kwargs)
        self.cell = cell

    def runtest(self):
        result, changes = self.parent.result()
        if result.error:
            raise FlowrunRegression(result.error)
        mine = [o for o in result.outcomes if self.cell in o.cells]
        for change in changes:
            self.add_report_section("call", "flowrun", change)
        failed = [o for o in mine if o.grade == "fail"]
        for o in mine:
            if o.grade == "warn":
                self.add_report_section("call", "flowrun", f"WARN {o.file}: {o.message}")
        if failed:
            raise FlowrunRegression("\n".join(f"{o.file}: {o.message}" for o in failed))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, FlowrunRegression):
            return f"{self.path.name} [{self.cell}]: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"flowrun case {self.path.stem} [{self.cell}]"
