"""`flowrun rank`: the cells of a finished run ordered by a score its scoring nodes recorded in run.json
(CLIPScore's `clip_score`, CLIPImageSimilarity's `clip_similarity`, or a node id), best first, with the
files each cell's output nodes wrote; optionally copied into a folder, the rank leading each file name."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from flowrun.errors import UsageError
from flowrun.execute.manifest import MANIFEST


@dataclass(frozen=True)
class RankedCell:
    rank: int
    label: str
    score: float
    files: tuple[str, ...]  # relative to the run's output folder


def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no {MANIFEST} in {run_dir}: give the output folder of a flowrun run") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not readable JSON ({exc})") from None


def scoring_node(manifest: dict, by: str) -> str:
    """The id of the scoring node that `by` names: a node id, or a metric that one node records."""
    scorers = {n["id"]: n["metric"] for n in manifest["nodes"] if n.get("metric")}
    if by in scorers:
        return by
    matching = sorted({nid for nid, metric in scorers.items() if metric == by})
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise UsageError(f"several nodes record '{by}' ({', '.join(matching)}): give one of their ids to --by")
    known = sorted(set(scorers.values()) | set(scorers))
    raise UsageError(f"the run records no score '{by}'; it has: {', '.join(known) if known else 'none'} "
                     "(add a CLIPScore or CLIPImageSimilarity node to the workflow)")


def rank(run_dir: str | Path, by: str, top: int | None = None) -> list[RankedCell]:
    """The cells with a score from the node `by` names, highest first (ties keep the sweep's order)."""
    manifest = read_manifest(run_dir)
    node_id = scoring_node(manifest, by)
    files: dict[str, list[str]] = {}
    for n in manifest["nodes"]:
        for label in n["cells"]:
            files.setdefault(label, []).extend(n.get("outputs", []))
    scored = [(c["scores"][node_id], c["index"], c["label"]) for c in manifest["cells"]
              if node_id in c.get("scores", {})]
    scored.sort(key=lambda s: (-s[0], s[1]))
    ranked = [RankedCell(i + 1, label, score, tuple(files.get(label, ()))) for i, (score, _, label) in enumerate(scored)]
    return ranked[:top] if top is not None else ranked


def copy_ranked(run_dir: str | Path, ranked: list[RankedCell], dest: str | Path) -> list[Path]:
    """Copy each ranked cell's files into `dest` as `<rank>-<name>` (rank zero-padded); the copies' paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    width = len(str(len(ranked)))
    copied = []
    for cell in ranked:
        for name in cell.files:
            target = dest / f"{cell.rank:0{width}d}-{Path(name).name}"
            shutil.copy2(Path(run_dir) / name, target)
            copied.append(target)
    return copied
