"""The HTML page of `flowrun diff --render`: both sides' images of every output cell that changed."""

from __future__ import annotations

import html
from pathlib import Path

from flowrun.graph.diff import WorkflowDiff
from flowrun.safepath import write_atomic


def _files(manifest: dict, node: str, cell: str) -> list[str]:
    return [f for n in manifest["nodes"] if n["id"] == node and cell in n["cells"] for f in n["outputs"]
            if f.lower().endswith(".png")]


def write_page(folder: Path, left: str, right: str, diff: WorkflowDiff, manifests: list[dict]) -> Path:
    """folder/index.html, next to the renders in folder/a and folder/b."""
    rows = []
    for node, cell, status in diff.changed_outputs:
        sides = []
        for side, manifest in zip(("a", "b"), manifests):
            imgs = "".join(f'<img src="{side}/{html.escape(f)}" title="{html.escape(f)}">'
                           for f in _files(manifest, node, cell))
            sides.append(f"<td>{imgs or '<em>none</em>'}</td>")
        rows.append(f"<tr><td>{html.escape(node)}<br><small>{html.escape(cell)}</small><br>{status}</td>{''.join(sides)}</tr>")
    changes = "".join(f"<li>{html.escape(c)}</li>" for c in diff.text) or "<li>no change in the workflow's text</li>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>flowrun diff</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top}} img{{width:192px;image-rendering:pixelated}}
</style></head><body><h1>{html.escape(left)} &rarr; {html.escape(right)}</h1><ul>{changes}</ul>
<p>{len(diff.changed_outputs)} of {len(diff.outputs)} output cells change.</p>
<table><tr><th>output / cell</th><th>{html.escape(left)}</th><th>{html.escape(right)}</th></tr>{''.join(rows)}</table>
</body></html>"""
    path = folder / "index.html"
    write_atomic(path, page.encode())
    return path
