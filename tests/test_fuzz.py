"""Property-based fuzzing of loading, validation and planning: random bytes, generated documents and
mutated valid workflows raise nothing but flowrun's own WorkflowInvalid.

Profiles: `ci` (the default, about 150 examples per property, a few seconds) and `long` for local
runs: `HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py --hypothesis-show-statistics`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowrun import api
from flowrun.errors import WorkflowInvalid
from flowrun.settings import Settings

from conftest import ROOT, TESTS

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SEEDS = sorted((ROOT / "workflows").glob("*.yaml")) + sorted((TESTS / "workflows").glob("*.yaml"))
SEED_TEXTS = [p.read_text() for p in SEEDS]
NODE_TYPES = ["Text", "WriteText", "Number", "EmptyImage", "SaveImage", "KSampler", "CheckpointLoaderSimple",
              "CLIPTextEncode", "ImageInvert", "Nope"]
FIELDS = ["text", "seed", "image", "model", "steps", "cfg", "width", "filename_prefix", "value", "a", "b"]


def _check(tmp_path: Path, text: str | bytes) -> None:
    """Load, validate, expand and plan; only WorkflowInvalid may come out."""
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        resolved = api.load(path)
        api.plan(resolved, Settings(use_cache=False, out_dir=tmp_path / "out"))
    except WorkflowInvalid as exc:
        assert exc.problems and all(p.message for p in exc.problems)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(NODE_TYPES + FIELDS + ["a", "a.IMAGE", "{{ seed }}",
                                                                               "{{ x }}", "{% for %}", "../x"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                                                       inner, max_size=4)), max_leaves=20)
node = st.fixed_dictionaries({"type": st.sampled_from(NODE_TYPES)},
                             optional={"in": st.dictionaries(st.sampled_from(FIELDS), values, max_size=3),
                                       "with": st.dictionaries(st.sampled_from(FIELDS), values, max_size=3),
                                       "extra": values})
workflows = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 2, "1", None]),
     "nodes": st.dictionaries(st.sampled_from(["a", "b", "c", "out", "1x", "x y"]), node, max_size=4)},
    optional={"params": st.dictionaries(st.sampled_from(["seed", "word", "n", "x"]), values, max_size=3),
              "sweep": st.dictionaries(st.sampled_from(["grid", "zip", "other"]),
                                       st.dictionaries(st.sampled_from(["seed", "word", "x"]), values, max_size=2),
                                       max_size=2),
              "outputs": values})


@given(st.binary(max_size=400))
def test_random_bytes(tmp_path, data):
    _check(tmp_path, data)


@given(values)
def test_generated_documents(tmp_path, doc):
    _check(tmp_path, yaml.safe_dump(doc, allow_unicode=True))


@given(workflows)
def test_generated_workflows(tmp_path, doc):
    _check(tmp_path, yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


def _mutate(text: str, edits: list[tuple[int, int, int, str]]) -> str:
    for kind, at, length, insert in edits:
        at %= max(len(text), 1)
        if kind == 0:  # delete a span
            text = text[:at] + text[at + length:]
        elif kind == 1:  # insert characters
            text = text[:at] + insert + text[at:]
        elif kind == 2:  # duplicate a span
            text = text[:at] + text[at:at + length] + text[at:]
        else:  # swap two lines
            lines = text.splitlines(keepends=True)
            if len(lines) > 1:
                i, j = at % len(lines), length % len(lines)
                lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
    return text


edit = st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 40),
                 st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#%@` \n\tx0{}.")), max_size=6))


@given(st.sampled_from(range(len(SEED_TEXTS))), st.lists(edit, min_size=1, max_size=4))
def test_mutated_workflows(tmp_path, index, edits):
    if not (tmp_path / "inputs").exists():  # the examples' input images, so mutations reach the planner
        shutil.copytree(ROOT / "workflows" / "inputs", tmp_path / "inputs")
    _check(tmp_path, _mutate(SEED_TEXTS[index], edits))


def test_seeds_are_valid(tmp_path):
    # the mutation seeds themselves load, so mutations start from real workflows
    assert len(SEED_TEXTS) >= 6
    for path in SEEDS:
        api.load(path)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
