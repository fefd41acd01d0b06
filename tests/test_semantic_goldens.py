"""Semantic goldens with the bundled flowrun-tiny-clip: a render one level off at every pixel fails a strict
pixel check and passes the semantic one; another colour or shape fails it; min_clip_score takes its text
from clip_text or from the case's CLIPScore node, and without either the case is invalid at its line."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from flowrun.diffusion import shapes
from flowrun.regress.run import run_case
from flowrun.settings import Settings

SCENE = shapes.Scene("circle", "red", "white", 30.0, 34.0, 17.0)
CAPTION = SCENE.caption
STRICT = "{pass_max_diff: 0, warn_min_psnr: 99, warn_min_ssim: 1.0}"
SEMANTIC = f"{{pixels: false, clip_text: {CAPTION}, min_clip_score: 2.0, min_similarity_to_golden: 0.9}}"
BOTH = f"{{pass_max_diff: 0, warn_min_psnr: 99, warn_min_ssim: 1.0, clip_text: {CAPTION}, min_similarity_to_golden: 0.9}}"


def _case(tmp_path, image: np.ndarray, test: str, judge_node: str = "") -> tuple:
    """A case that saves input.png as it is, with the golden SCENE; its result."""
    Image.fromarray(image).save(tmp_path / "input.png")
    golden = tmp_path / "goldens" / "case" / "cpu"
    golden.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shapes.render(SCENE)).save(golden / "render.png")
    (tmp_path / "case.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        name: case
        nodes:
          image: {{type: LoadImage, with: {{image: input.png}}}}
          save: {{type: SaveImage, in: {{images: image.image}}, with: {{filename_prefix: render}}}}
        """) + judge_node + f"test: {test}\n")
    result, _ = run_case(tmp_path / "case.yaml", Settings(use_cache=False, device="cpu"), tmp_path / "out", "cpu")
    return result


def _one_level_off(image: np.ndarray) -> np.ndarray:
    """Every channel of every pixel moved by one level (down where it is at 255, else up)."""
    return np.where(image == 255, image - 1, image + 1).astype(np.uint8)


def test_one_level_everywhere_fails_pixels_and_passes_semantics(tmp_path):
    nudged = _one_level_off(shapes.render(SCENE))
    strict = _case(tmp_path, nudged, STRICT)
    assert strict.grade == "fail" and strict.outcomes[0].comparison.max_diff == 1
    semantic = _case(tmp_path, nudged, SEMANTIC)
    outcome = semantic.outcomes[0]
    assert semantic.grade == "pass", outcome.message
    assert "pixels not graded" in outcome.message and "semantic check passed" in outcome.message
    assert outcome.semantic["similarity_to_golden"] > 0.99 and outcome.semantic["clip_score"] >= 2.0
    both = _case(tmp_path, nudged, BOTH)  # besides the pixels: the worse grade counts
    assert both.grade == "fail" and "semantic check passed" in both.outcomes[0].message


@pytest.mark.parametrize("other", [replace(SCENE, colour="blue"), replace(SCENE, shape="square"),
                                   replace(SCENE, shape="triangle", colour="green")],
                         ids=["colour", "shape", "both"])
def test_another_colour_or_shape_fails_the_semantic_check(tmp_path, other):
    result = _case(tmp_path, shapes.render(other), SEMANTIC)
    assert result.grade == "fail", result.outcomes[0].message
    message = result.outcomes[0].message
    assert "semantic check failed: CLIPScore" in message and "; similarity to golden" in message  # both measures


JUDGE = f"""\
  judge: {{type: CLIPScoreModelLoader, with: {{clip_name: flowrun-tiny-clip}}}}
  score: {{type: CLIPScore, in: {{clip_score_model: judge, images: image.image}}, with: {{text: {CAPTION}}}}}
"""


def test_min_clip_score_reads_the_cases_clip_score_node(tmp_path):
    passed = _case(tmp_path, _one_level_off(shapes.render(SCENE)), "{pixels: false, min_clip_score: 2.0}", JUDGE)
    assert passed.grade == "pass", passed.outcomes[0].message
    failed = _case(tmp_path, shapes.render(replace(SCENE, colour="yellow")), "{pixels: false, min_clip_score: 2.0}",
                   JUDGE)
    assert failed.grade == "fail" and "CLIPScore" in failed.outcomes[0].message


def test_min_clip_score_without_a_text_is_invalid_at_its_line(tmp_path):
    result = _case(tmp_path, shapes.render(SCENE), "{min_clip_score: 2.0}")
    assert result.exit_code == 2
    assert "case.yaml:6" in result.error and "min_clip_score needs a text to score against" in result.error
