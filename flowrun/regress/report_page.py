"""The HTML page of a regression run: one self-contained file (images inline as data URIs, the style
sheet and script inlined from report.css and report.js beside this module), failures first. Everything
that comes from the user (paths, case names, params, messages) is escaped."""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
from pathlib import Path

from flowrun.regress.cases import GRADE_ORDER, CaseResult, Outcome
from flowrun.regress.compare import heatmap, load_rgb

HERE = Path(__file__).parent
GRADES = ("error", "fail", "warn", "pass")  # the order shown: the worst first
NO_CAUSE = "none"  # a row no cause explains: identical or within-threshold renders, missing goldens, errors
DISPLAY = 256  # the default displayed image width; differences are drawn to stay visible at it


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _img(kind: str, path: Path | None) -> str:
    if path is None or not path.is_file():
        return f"<em>no {kind}</em>"
    return f'<img class="{kind}" alt="{kind}" src="{_data_uri(path.read_bytes())}">'


def _difference(o: Outcome) -> str:
    if o.golden is None or not o.golden.is_file() or not o.new.is_file():
        return "<em>no difference</em>"
    new, golden = load_rgb(o.new), load_rgb(o.golden)
    if new.shape != golden.shape:
        return "<em>sizes differ</em>"
    return f'<img class="diff" alt="difference" src="{_data_uri(_png(heatmap(new, golden, DISPLAY)))}">'


def _metrics(o: Outcome) -> str:
    if o.comparison is None:
        return ""
    m = o.comparison.as_json()
    psnr = "&infin;" if m["psnr"] is None else m["psnr"]
    return f"<br>max diff {m['max_diff']}, PSNR {psnr}, SSIM {m['ssim']}"


def _accept(o: Outcome) -> str:
    if o.grade == "pass" or o.golden is None:
        return ""
    # quoted for a shell: the copied command must work for any path
    cmd = f"flowrun test {shlex.quote(str(o.workflow))} --accept {shlex.quote(o.accept_token)}"
    return f'<div class="accept"><code>{_e(cmd)}</code> <button type="button" class="copy">copy</button></div>'


def _outcome_row(o: Outcome) -> str:
    cause = o.cause or NO_CAUSE
    badge = f' <span class="cause">{_e(o.cause)}</span>' if o.cause else ""
    params = json.dumps(o.params, sort_keys=True)
    return (f'<tr class="cell {_e(o.grade)}" data-grade="{_e(o.grade)}" data-cause="{_e(cause)}">'
            f'<td class="what"><b>{_e(o.case)}</b> {_e(", ".join(o.cells))}<br><small>{_e(params)}</small>'
            f'<br>{_e(o.file)}</td>'
            f'<td class="verdict"><b>{_e(o.grade.upper())}</b>{badge}{_metrics(o)}<br><small>{_e(o.message)}</small>'
            f'{_accept(o)}</td>'
            f'<td>{_img("golden", o.golden)}</td><td>{_img("new", o.new)}</td><td>{_difference(o)}</td>'
            f'<td class="blink"></td></tr>')


def _error_row(r: CaseResult) -> str:
    return (f'<tr class="cell error" data-grade="error" data-cause="{NO_CAUSE}"><td class="what"><b>'
            f'{_e(r.workflow.stem)}</b><br><small>{_e(r.workflow)}</small></td>'
            f'<td class="verdict"><b>ERROR</b><br><small>the case did not render</small></td>'
            f'<td colspan="4"><pre>{_e(r.error)}</pre></td></tr>')


def _chip(name: str, value: str, count: int, css: str = "") -> str:
    return (f'<label class="chip {css}"><input type="checkbox" name="{name}" value="{_e(value)}" checked> '
            f'<b data-count="{name}:{_e(value)}">{count}</b> {_e(value)}</label>')


def _filters(counts: dict[str, int], causes: dict[str, int], rows: int) -> str:
    uncaused = rows - sum(causes.values())
    return ('<form id="filters"><fieldset><legend>grade</legend>'
            + "".join(_chip("grade", g, counts.get(g, 0), g) for g in GRADES)
            + '</fieldset><fieldset><legend>cause</legend>'
            + "".join(_chip("cause", c, n) for c, n in causes.items()) + _chip("cause", NO_CAUSE, uncaused)
            + '</fieldset><fieldset><legend>view</legend><label>image width <select id="size">'
            + "".join(f'<option value="{w}"{" selected" if w == str(DISPLAY) else ""}>{w}</option>'
                      for w in ("128", "256", "512", "full"))
            + '</select></label> <label><input type="checkbox" id="autoblink" checked> blink automatically</label>'
            + '</fieldset></form>')


def render(results: list[CaseResult], counts: dict[str, int], causes: dict[str, int]) -> str:
    """The page for `results`, with the grade and cause counts of summary.json as its summary and filters."""
    outcomes = sorted((o for r in results for o in r.outcomes),
                      key=lambda o: (-GRADE_ORDER[o.grade], o.case, o.file))
    rows = [_error_row(r) for r in results if r.error] + [_outcome_row(o) for o in outcomes]
    style = (HERE / "report.css").read_text()
    script = (HERE / "report.js").read_text()
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>flowrun test report</title>
<style>{style}</style></head><body><h1>flowrun test report</h1>
{_filters(counts, causes, len(rows))}
<p class="note">Showing <b id="shown-count">{len(rows)}</b> of {len(rows)} rows, failures first. Untick a grade or
cause to hide its rows. Difference: black where equal, any difference coloured by size on a log scale, from
1 level <span class="legend"></span> to 255 levels; in images larger than {DISPLAY} px a difference is spread
over the pixels one displayed pixel covers. Blink: golden and new in one place; click to hold and switch.</p>
<noscript><p class="note">Filters and blink need JavaScript.</p></noscript>
<table><thead><tr><th>case, cell, params, file</th><th>grade</th><th>golden</th><th>new</th><th>difference</th>
<th>blink</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table><div id="selfcheck" hidden></div>
<script>{script}</script></body></html>
"""
