"""Semantic goldens: grade a render by what it shows rather than by its pixels, with a CLIP model.

`min_clip_score` asks that the render match a text (the case's `clip_text`, scored on each output
file, or else the CLIPScore the case's own scoring node recorded for the cell); `min_similarity_to_golden`
asks that its CLIP image embedding stay close to the golden's. A render that moved by a level everywhere
passes; one with another colour or shape does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowrun.regress.compare import FAIL, PASS

CLIP_SCORE_METRIC = "clip_score"


@dataclass(frozen=True)
class SemanticResult:
    grade: str
    reason: str
    metrics: dict[str, float]


def wanted(t: Any) -> bool:
    """Whether thresholds `t` ask for a semantic check."""
    return t.min_clip_score is not None or t.min_similarity_to_golden is not None


def missing_text(t: Any, metrics: set[str]) -> bool:
    """min_clip_score with neither clip_text nor a node recording clip_score (among the workflow's
    `metrics`): nothing to score against."""
    return t.min_clip_score is not None and t.clip_text is None and CLIP_SCORE_METRIC not in metrics


class SemanticJudge:
    """Loads the CLIP model once (on first use) and checks renders against the thresholds."""

    def __init__(self, thresholds: Any, lookup: Any):
        self.t, self.lookup = thresholds, lookup
        self._judge = None

    def judge(self):
        if self._judge is None:
            from flowrun.diffusion.clip_judge import load

            path = self.lookup.path("clip_score", self.t.clip_model)
            self._judge = load(path, self.lookup.fingerprint("clip_score", self.t.clip_model))
        return self._judge

    def check(self, new: Path, golden: Path, cell_scores: dict[str, float], metric_of: dict[str, str]) -> SemanticResult:
        """Grade render `new` (a PNG) against the thresholds; `cell_scores` are its cell's recorded scores by
        node id, `metric_of` each scoring node's metric."""
        import numpy as np

        from flowrun.regress.compare import load_rgb

        image = load_rgb(new)[None].astype(np.float32) / 255.0
        metrics: dict[str, float] = {}
        failed: list[str] = []
        if self.t.min_clip_score is not None:
            if self.t.clip_text is not None:
                scores = self.judge().clip_score(image, self.t.clip_text)
            else:
                scores = [v for nid, v in cell_scores.items() if metric_of.get(nid) == CLIP_SCORE_METRIC]
            metrics["clip_score"] = round(min(scores), 5) if scores else float("nan")
            if not scores or min(scores) < self.t.min_clip_score:
                failed.append(f"CLIPScore {metrics['clip_score']:.3f} < {self.t.min_clip_score}")
        if self.t.min_similarity_to_golden is not None:
            reference = load_rgb(golden)[None].astype(np.float32) / 255.0
            similarity = self.judge().similarity(image, reference)[0]
            metrics["similarity_to_golden"] = round(similarity, 5)
            if similarity < self.t.min_similarity_to_golden:
                failed.append(f"similarity to golden {similarity:.3f} < {self.t.min_similarity_to_golden}")
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in metrics.items())
        if failed:
            return SemanticResult(FAIL, "semantic check failed: " + "; ".join(failed), metrics)
        return SemanticResult(PASS, f"semantic check passed ({shown})", metrics)
