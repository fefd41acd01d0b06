"""Reports of a regression run: a self-contained HTML page, JUnit XML for CI systems, a JSON summary."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from flowrun.regress import provenance, report_page
from flowrun.regress.cases import CaseResult
from flowrun.safepath import write_atomic

CAUSES = (provenance.NONDETERMINISM, provenance.ENVIRONMENT, provenance.GRAPH, provenance.UNRECORDED)


def counts(results: list[CaseResult]) -> dict[str, int]:
    """Output files per grade, and `error`: cases that did not render."""
    c = {"pass": 0, "warn": 0, "fail": 0, "error": 0}
    for r in results:
        if r.error:
            c["error"] += 1
        for o in r.outcomes:
            c[o.grade] += 1
    return c


def causes(results: list[CaseResult]) -> dict[str, int]:
    """How many output files each cause explains (flowrun.regress.provenance); the loudest first."""
    c = dict.fromkeys(CAUSES, 0)
    for o in (o for r in results for o in r.outcomes if o.cause):
        c[o.cause] = c.get(o.cause, 0) + 1
    return c


def write_html(results: list[CaseResult], path: Path) -> Path:
    """The self-contained page a reviewer opens (flowrun.regress.report_page)."""
    write_atomic(path, report_page.render(results, counts(results), causes(results)).encode())
    return path


def write_junit(results: list[CaseResult], path: Path) -> Path:
    c = counts(results)
    suite = ET.Element("testsuite", name="flowrun", tests=str(sum(len(r.outcomes) + bool(r.error) for r in results)),
                       failures=str(c["fail"]), errors=str(c["error"]), skipped="0")
    for r in results:
        if r.error:
            case = ET.SubElement(suite, "testcase", classname=r.workflow.stem, name="render")
            ET.SubElement(case, "error", message=r.error.splitlines()[0] if r.error else "").text = r.error
        for o in r.outcomes:
            case = ET.SubElement(suite, "testcase", classname=o.case, name=f"{','.join(o.cells)}/{o.file}")
            if o.grade == "fail":
                ET.SubElement(case, "failure", message=o.message, type=o.cause or "render").text = o.message
            elif o.grade == "warn":
                ET.SubElement(case, "system-out").text = f"WARN: {o.message}"
    buf = io.BytesIO()
    ET.ElementTree(suite).write(buf, encoding="utf-8", xml_declaration=True)
    write_atomic(path, buf.getvalue())
    return path


def write_json(results: list[CaseResult], path: Path, changes: list[str]) -> Path:
    data = {"counts": counts(results), "causes": causes(results), "changes": changes,
            "cases": [{"workflow": str(r.workflow), "grade": r.grade, "error": r.error,
                       "outcomes": [o.as_json() for o in r.outcomes]} for r in results]}
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
    return path
