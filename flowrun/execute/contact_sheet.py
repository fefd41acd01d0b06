"""Contact sheets of a sweep: one labelled grid image per output node, and an HTML page of the run.

When the workflow scores its cells (CLIPScore and other scoring nodes), each thumbnail carries its cell's
scores beneath it, on the sheet and on the page. The first swept axis runs along the columns, the second down the rows, and any further axes make a
column of sub-grids, each titled with its values. Labels use Pillow's built-in font (present on a bare
machine). Thumbnails shrink so that a sheet stays within MAX_SIDE pixels; past MAX_CELLS cells no sheet
is drawn (the page still lists every cell). The page shows the same grid, each image linking to its file.
"""

from __future__ import annotations

import html
import io
import itertools
import json
from pathlib import Path
from typing import Any

from flowrun.safepath import write_atomic

MAX_SIDE = 8192
MAX_CELLS = 4096
PAD, LABEL_H = 4, 16


def _fmt(name: str, value: Any) -> str:
    return f"{name}={value}"


def swept_axes(cells: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Axes whose value changes between cells, each with its values in order of first appearance."""
    axes = []
    for name in cells[0]["values"]:
        seen = []
        for c in cells:
            v = c["values"][name]
            if v not in seen:
                seen.append(v)
        if len(seen) > 1:
            axes.append((name, seen))
    return axes


def _layout(cells, axes):
    """(columns axis, rows axis, sub-grid axes) and the cell label at each (sub, row, col)."""
    col = axes[0] if axes else ("", [None])
    row = axes[1] if len(axes) > 1 else ("", [None])
    subs = axes[2:]
    sub_keys = list(itertools.product(*[vals for _, vals in subs])) or [()]
    where = {}
    for c in cells:
        v = c["values"]
        key = (tuple(v[n] for n, _ in subs), v.get(row[0]) if row[0] else None, v.get(col[0]) if col[0] else None)
        where.setdefault(key, c["label"])
    return col, row, subs, sub_keys, where


def score_captions(manifest: dict[str, Any]) -> dict[str, str]:
    """Per cell label, its recorded scores as a short caption ("clip_score 0.712"), for cells that have any."""
    metric = {n["id"]: n["metric"] for n in manifest["nodes"] if n.get("metric")}
    several = len(set(metric.values())) < len(metric)  # two nodes record the same metric: name them by id
    captions = {}
    for c in manifest["cells"]:
        parts = [f"{nid if several else metric.get(nid, nid)} {value:.3f}" for nid, value in c.get("scores", {}).items()]
        if parts:
            captions[c["label"]] = ", ".join(parts)
    return captions


def draw_sheet(files: dict[str, Path], cells: list[dict[str, Any]], title: str, path: Path,
               captions: dict[str, str] | None = None) -> Path | None:
    """The grid image of one output node's files (None: too many cells, or no files); `captions` (per
    cell label) are written under the thumbnails."""
    from PIL import Image, ImageDraw, ImageFont

    axes = swept_axes(cells)
    if len(cells) > MAX_CELLS or not files:
        return None
    col, row, subs, sub_keys, where = _layout(cells, axes)
    sample = Image.open(next(iter(files.values())))
    tw, th = sample.size
    ncol, nrow = len(col[1]), len(row[1])
    font = ImageFont.load_default()
    row_label_w = 8 + max((int(font.getlength(_fmt(row[0], v))) for v in row[1]), default=0) if row[0] else 0
    col_label_w = max((int(font.getlength(_fmt(col[0], v))) for v in col[1]), default=0) if col[0] else 0
    captions = captions or {}
    caption_h = LABEL_H if captions else 0
    col_label_w = max([col_label_w] + [int(font.getlength(t)) for t in captions.values()])
    scale = 1.0
    while True:
        cw, ch = max(1, int(tw * scale)), max(1, int(th * scale))
        pitch = max(cw, col_label_w) + PAD  # a column is as wide as its thumbnail or its label
        width = row_label_w + ncol * pitch + PAD
        block_h = LABEL_H + nrow * (ch + caption_h + PAD)
        height = LABEL_H + len(sub_keys) * (block_h + (LABEL_H if subs else 0)) + PAD
        if max(width, height) <= MAX_SIDE or scale < 0.05:
            break
        scale *= 0.8
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 2), title, fill=(0, 0, 0), font=font)
    y = LABEL_H
    for sk in sub_keys:
        if subs:
            draw.text((PAD, y + 2), ", ".join(_fmt(n, v) for (n, _), v in zip(subs, sk)), fill=(0, 0, 160), font=font)
            y += LABEL_H
        for ci, cv in enumerate(col[1]):
            if col[0]:
                draw.text((row_label_w + PAD + ci * pitch, y + 2), _fmt(col[0], cv), fill=(0, 0, 0), font=font)
        y += LABEL_H
        for ri, rv in enumerate(row[1]):
            if row[0]:
                draw.text((4, y + ri * (ch + caption_h + PAD) + ch // 2 - 6), _fmt(row[0], rv), fill=(0, 0, 0),
                          font=font)
            for ci, cv in enumerate(col[1]):
                label = where.get((sk, rv if row[0] else None, cv if col[0] else None))
                if label is None or label not in files:
                    continue
                im = Image.open(files[label]).convert("RGB")
                if (cw, ch) != im.size:
                    im = im.resize((cw, ch), Image.Resampling.LANCZOS)
                x0, y0 = row_label_w + PAD + ci * pitch, y + ri * (ch + caption_h + PAD)
                sheet.paste(im, (x0, y0))
                if label in captions:
                    draw.text((x0, y0 + ch + 2), captions[label], fill=(120, 0, 0), font=font)
        y += nrow * (ch + caption_h + PAD)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)
    write_atomic(path, buf.getvalue())  # a run killed here leaves the old sheet or none, never half of one
    return path


def write_sheets(manifest: dict[str, Any], out_dir: Path) -> list[str]:
    """A contact sheet per output node that wrote PNGs for more than one cell, plus index.html."""
    cells = manifest["cells"]
    if len(cells) < 2:
        return []
    by_node: dict[str, dict[str, Path]] = {}
    for n in manifest["nodes"]:
        pngs = [f for f in n["outputs"] if f.lower().endswith(".png")]
        if not pngs:
            continue
        for label in n["cells"]:
            by_node.setdefault(n["id"], {}).setdefault(label, out_dir / pngs[0])
    written = []
    captions = score_captions(manifest)
    for node_id, files in by_node.items():
        sheet = draw_sheet(files, cells, f"{manifest['workflow']['name'] or ''} {node_id}".strip(),
                           out_dir / f"contact-{node_id}.png", captions)
        if sheet is not None:
            written.append(sheet.name)
    _write_page(manifest, by_node, written, out_dir / "index.html", captions)
    return written + ["index.html"]


def _write_page(manifest, by_node, sheets, path: Path, captions: dict[str, str]) -> None:
    cells = manifest["cells"]
    axes = swept_axes(cells)
    col, row, subs, sub_keys, where = _layout(cells, axes)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(str(manifest['workflow']['name']))}"
             "</title><style>body{font-family:system-ui,sans-serif;margin:1.5em} td,th{padding:3px;text-align:center}"
             "img{width:96px;image-rendering:pixelated} table{border-collapse:collapse} .cells td{text-align:left;"
             "border-top:1px solid #ddd}</style></head><body>",
             f"<h1>{html.escape(str(manifest['workflow']['name'] or manifest['workflow']['file']))}</h1>",
             f"<p>{len(cells)} cells; axes: {html.escape(', '.join(n for n, _ in axes))}. "
             f"Sheets: {' '.join(f'<a href={html.escape(s)}>{html.escape(s)}</a>' for s in sheets)}</p>"]
    for node_id, files in by_node.items():
        parts.append(f"<h2>{html.escape(node_id)}</h2>")
        for sk in sub_keys:
            if subs:
                parts.append(f"<h3>{html.escape(', '.join(_fmt(n, v) for (n, _), v in zip(subs, sk)))}</h3>")
            parts.append("<table><tr><th></th>" + "".join(f"<th>{html.escape(_fmt(col[0], v) if col[0] else '')}</th>"
                                                          for v in col[1]) + "</tr>")
            for rv in row[1]:
                parts.append(f"<tr><th>{html.escape(_fmt(row[0], rv) if row[0] else '')}</th>")
                for cv in col[1]:
                    label = where.get((sk, rv if row[0] else None, cv if col[0] else None))
                    f = files.get(label) if label else None
                    caption = f"<br><small class='score'>{html.escape(captions[label])}</small>" if label in captions else ""
                    parts.append(f"<td><a href='{html.escape(f.name)}'><img src='{html.escape(f.name)}' "
                                 f"title='{html.escape(label)}'></a>{caption}</td>" if f else "<td></td>")
                parts.append("</tr>")
            parts.append("</table>")
    score_head = "<th>scores</th>" if captions else ""
    parts.append(f"<h2>cells</h2><table class='cells'><tr><th>#</th><th>label</th>{score_head}<th>params</th></tr>")
    for c in cells:
        score = f"<td>{html.escape(captions.get(c['label'], ''))}</td>" if captions else ""
        parts.append(f"<tr><td>{c['index']}</td><td>{html.escape(c['label'])}</td>{score}"
                     f"<td><code>{html.escape(json.dumps(c['params'], sort_keys=True))}</code></td></tr>")
    parts.append("</table></body></html>")
    write_atomic(path, "".join(parts).encode())
