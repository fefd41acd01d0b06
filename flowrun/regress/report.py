"""Reports of a regression run: a self-contained HTML page, JUnit XML for CI systems, a JSON summary."""

from __future__ import annotations

import base64
import html
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from flowrun.regress.cases import GRADE_ORDER, CaseResult
from flowrun.safepath import write_atomic
from flowrun.regress.compare import heatmap, load_rgb


def counts(results: list[CaseResult]) -> dict[str, int]:
    c = {"pass": 0, "warn": 0, "fail": 0, "error": 0}
    for r in results:
        if r.error:
            c["error"] += 1
        for o in r.outcomes:
            c[o.grade] += 1
    return c


def _png_data(array) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_data(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_html(results: list[CaseResult], path: Path) -> Path:
    outcomes = sorted((o for r in results for o in r.outcomes),
                      key=lambda o: (-GRADE_ORDER[o.grade], o.case, o.file))
    c = counts(results)
    rows = []
    for r in results:
        if r.error:
            rows.append(f'<tr class="fail"><td>{html.escape(r.workflow.stem)}</td><td colspan="5"><pre>'
                        f'{html.escape(r.error)}</pre></td></tr>')
    for o in outcomes:
        golden = _file_data(o.golden)
        diff = ""
        if o.golden is not None and o.golden.is_file():
            diff = _png_data(heatmap(load_rgb(o.new), load_rgb(o.golden)))
        m = o.comparison.as_json() if o.comparison else {}
        metrics = "" if not m else (f"max diff {m['max_diff']}<br>PSNR {m['psnr'] if m['psnr'] is not None else '&infin;'}"
                                    f"<br>SSIM {m['ssim']}")
        img = lambda src: f'<img src="{src}">' if src else "<em>none</em>"  # noqa: E731
        params = html.escape(json.dumps(o.params, sort_keys=True))
        cause = f' <span class="cause">{html.escape(o.cause)}</span>' if o.cause else ""
        accept = "" if o.grade == "pass" or o.golden is None else (
            f'<br><code>flowrun test {html.escape(str(o.workflow))} --accept {html.escape(o.accept_token)}</code>')
        rows.append(
            f'<tr class="{o.grade}"><td>{html.escape(o.case)}<br><small>{html.escape(", ".join(o.cells))}</small>'
            f'<br><small>{params}</small></td><td>{html.escape(o.file)}</td><td>{img(golden)}</td>'
            f'<td>{img(_file_data(o.new))}</td><td>{img(diff)}</td>'
            f'<td><b>{o.grade.upper()}</b>{cause}<br>{metrics}<br><small>{html.escape(o.message)}</small>'
            f'{accept}</td></tr>')
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>flowrun test report</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}}
img{{width:128px;image-rendering:pixelated}} tr.fail td:last-child{{background:#fdd}}
tr.warn td:last-child{{background:#ffd}} tr.pass td:last-child{{background:#dfd}} pre{{white-space:pre-wrap}}
</style></head><body><h1>flowrun test report</h1>
<p>{c['pass']} pass, {c['warn']} warn, {c['fail']} fail, {c['error']} case error(s). Failures first.</p>
<table><tr><th>case / cell / params</th><th>file</th><th>golden</th><th>new</th><th>difference</th><th>grade</th></tr>
{''.join(rows)}</table></body></html>"""
    write_atomic(path, page.encode())
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
                ET.SubElement(case, "failure", message=o.message).text = o.message
            elif o.grade == "warn":
                ET.SubElement(case, "system-out").text = f"WARN: {o.message}"
    buf = io.BytesIO()
    ET.ElementTree(suite).write(buf, encoding="utf-8", xml_declaration=True)
    write_atomic(path, buf.getvalue())
    return path


def write_json(results: list[CaseResult], path: Path, changes: list[str]) -> Path:
    data = {"counts": counts(results), "changes": changes,
            "cases": [{"workflow": str(r.workflow), "grade": r.grade, "error": r.error,
                       "outcomes": [o.as_json() for o in r.outcomes]} for r in results]}
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
    return path
