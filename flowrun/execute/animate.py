"""`flowrun run --animate AXIS`: the cells along one sweep axis as animated PNGs, one per output node and
per combination of the other axes' values, frames in the axis's order (the order the sweep lists it).

A frame is the first PNG the node wrote for that cell (a cell that writes a batch gives its first image);
frames of another size than the first are resized to it (Lanczos). Encoded as SaveAnimatedPNG encodes
(flowrun.nodes.animation), so the same frames give the same bytes; like it, a frame identical to the one
before lengthens that one instead of being written again.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from flowrun.safepath import write_atomic
from flowrun.spec.sweep import cell_label

FPS = 6.0


def axis_problem(axis: str, cells: list[Any]) -> str | None:
    """Why `axis` cannot be animated over these cells (resolved cells, with `.values`), or None."""
    axes = list(cells[0].values) if cells else []
    if axis not in axes:
        named = ", ".join(axes) if axes else "none (the workflow has one cell)"
        return f"--animate {axis}: not a sweep axis of this run; its axes are: {named}"
    return None


def strips(manifest: dict[str, Any], axis: str, partners: frozenset[str] = frozenset()
           ) -> dict[str, list[tuple[dict[str, Any], list[str]]]]:
    """node id -> [(the other axes' values, cell labels along `axis` in order)] for each output node;
    `partners` are axes zipped with `axis` (they move with it, so they are not other axes)."""
    cells = manifest["cells"]
    groups: dict[tuple, tuple[dict[str, Any], list[str]]] = {}
    for c in cells:  # cells come in sweep order, so each group lists the axis in its written order
        others = {k: v for k, v in c["values"].items() if k != axis and k not in partners}
        groups.setdefault(tuple(others.items()), (others, []))[1].append(c["label"])
    writers = [n for n in manifest["nodes"] if any(f.lower().endswith(".png") for f in n["outputs"])]
    by_node: dict[str, list] = {}
    for node_id in dict.fromkeys(n["id"] for n in writers):
        by_node[node_id] = list(groups.values())
    return by_node


def _first_pngs(manifest: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(node id, cell label) -> the first PNG the node wrote for that cell."""
    out = {}
    for n in manifest["nodes"]:
        pngs = [f for f in n["outputs"] if f.lower().endswith(".png")]
        for label in n["cells"]:
            if pngs:
                out.setdefault((n["id"], label), pngs[0])
    return out


def write_animations(manifest: dict[str, Any], out_dir: Path, axis: str, fps: float = FPS,
                     partners: frozenset[str] = frozenset()) -> list[str]:
    """Write animation-<node>[_<other axes>].png for every output node; the names written."""
    from PIL import Image

    from flowrun.nodes.animation import duration_ms

    files = _first_pngs(manifest)
    written = []
    for node_id, groups in strips(manifest, axis, partners).items():
        for others, labels in groups:
            paths = [out_dir / files[(node_id, label)] for label in labels if (node_id, label) in files]
            if not paths:
                continue
            frames = []
            for path in paths:
                with Image.open(path) as im:
                    frame = im.convert("RGB")
                if frames and frame.size != frames[0].size:
                    frame = frame.resize(frames[0].size, Image.LANCZOS)
                frames.append(frame)
            name = f"animation-{node_id}" + (f"_{cell_label(others)}" if others else "") + ".png"
            buf = io.BytesIO()
            frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:], duration=duration_ms(fps),
                           compress_level=6)
            write_atomic(out_dir / name, buf.getvalue())
            written.append(name)
    return written
