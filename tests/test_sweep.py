"""Sweep expansion: grid, zip, both, ranges, --set and --sweep, labels, the cell limit; templating types."""

from __future__ import annotations

import pytest

from flowrun import api
from flowrun.errors import WorkflowInvalid
from flowrun.spec.sweep import Overrides, cell_label
from flowrun.spec.templating import TemplateProblem, render_value

BASE = """\
version: 1
params: {seed: 1, cfg: 7.0, prompt: cat, flag: false}
nodes:
  t:
    type: Text
    with: {text: "{{ prompt }} {{ cfg }} {{ flag }}", seed: "{{ seed }}"}
  out:
    type: WriteText
    in: {text: t}
"""


def cells(workflow, sweep: str = "", **over):
    resolved = api.load(workflow(BASE + sweep), Overrides.parse(**over) if over else None)
    return [c.values for c in resolved.cells], resolved


def test_no_sweep_is_one_default_cell(workflow):
    values, resolved = cells(workflow)
    assert values == [{}] and resolved.cells[0].label == "default"
    assert resolved.cells[0].params == {"seed": 1, "cfg": 7.0, "prompt": "cat", "flag": False}


def test_grid_is_cartesian_in_written_order(workflow):
    values, resolved = cells(workflow, "sweep:\n  grid: {seed: [1, 2], cfg: [4, 7.5]}\n")
    assert values == [{"seed": 1, "cfg": 4.0}, {"seed": 1, "cfg": 7.5}, {"seed": 2, "cfg": 4.0}, {"seed": 2, "cfg": 7.5}]
    assert [c.label for c in resolved.cells] == ["seed-1_cfg-4.0", "seed-1_cfg-7.5", "seed-2_cfg-4.0", "seed-2_cfg-7.5"]
    assert isinstance(values[0]["cfg"], float)  # coerced to the param's type


def test_zip_pairs_values(workflow):
    values, _ = cells(workflow, "sweep:\n  zip: {seed: [1, 2, 3], prompt: [a, b, c]}\n")
    assert values == [{"seed": 1, "prompt": "a"}, {"seed": 2, "prompt": "b"}, {"seed": 3, "prompt": "c"}]


def test_zip_crossed_with_grid(workflow):
    values, _ = cells(workflow, "sweep:\n  zip: {seed: [1, 2], prompt: [a, b]}\n  grid: {cfg: [1, 2, 3]}\n")
    assert len(values) == 6
    assert values[:3] == [{"seed": 1, "prompt": "a", "cfg": c} for c in (1.0, 2.0, 3.0)]
    assert values[3] == {"seed": 2, "prompt": "b", "cfg": 1.0}


def test_ranges_int_and_float(workflow):
    values, _ = cells(workflow, "sweep:\n  grid: {seed: {range: [1, 9]}}\n")
    assert [v["seed"] for v in values] == [1, 2, 3, 4, 5, 6, 7, 8]
    values, _ = cells(workflow, "sweep:\n  grid: {cfg: {range: [1.0, 2.0, 0.1]}}\n")
    assert [v["cfg"] for v in values] == [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]
    values, _ = cells(workflow, "sweep:\n  grid: {seed: {range: [10, 0, -5]}}\n")
    assert [v["seed"] for v in values] == [10, 5]


def test_set_overrides_param_with_its_type(workflow):
    _, resolved = cells(workflow, sets=["cfg=3", "prompt=42", "flag=true"])
    cell = resolved.cells[0]
    assert cell.params["cfg"] == 3.0 and isinstance(cell.params["cfg"], float)
    assert cell.params["prompt"] == "42"  # a string param keeps the text as typed
    assert cell.params["flag"] is True
    assert resolved.instances[0]["t"].literals["text"] == "42 3.0 True"


def test_set_pins_a_swept_axis(workflow):
    values, resolved = cells(workflow, "sweep:\n  grid: {seed: [1, 2, 3], cfg: [4, 7]}\n", sets=["seed=2"])
    assert values == [{"seed": 2, "cfg": 4.0}, {"seed": 2, "cfg": 7.0}]
    assert [c.label for c in resolved.cells] == ["cfg-4.0", "cfg-7.0"]


def test_set_pins_a_zip_bundle(workflow):
    values, _ = cells(workflow, "sweep:\n  zip: {seed: [1, 2], prompt: [a, b]}\n", sets=["prompt=b"])
    assert values == [{"seed": 2, "prompt": "b"}]


def test_sweep_flag_adds_and_replaces_axes(workflow):
    values, _ = cells(workflow, "sweep:\n  grid: {seed: [1, 2]}\n", sweeps=["seed=5,6,7", "cfg=1,2"])
    assert [(v["seed"], v["cfg"]) for v in values] == [(s, c) for s in (5, 6, 7) for c in (1.0, 2.0)]


def test_sweep_flag_value_type_checked(workflow):
    with pytest.raises(WorkflowInvalid) as info:
        cells(workflow, sweeps=["seed=1,x"])
    assert "--sweep seed: expected integer" in info.value.problems[0].message


def test_cell_limit_needs_max_cells(workflow):
    sweep = "sweep:\n  grid: {seed: {range: [0, 100000]}, cfg: {range: [0, 100000]}}\n"
    with pytest.raises(WorkflowInvalid) as info:
        cells(workflow, sweep)
    (p,) = info.value.problems
    assert "10,000,000,000 cells, more than the limit of 1,024" in p.message and "--max-cells" in p.hint
    values, _ = cells(workflow, "sweep:\n  grid: {seed: {range: [0, 2000]}}\n", max_cells=2000)
    assert len(values) == 2000


def test_labels_are_file_safe_and_distinct():
    a = cell_label({"prompt": "a red circle / on white"})
    b = cell_label({"prompt": "a red circle | on white"})
    assert a != b and "/" not in a and " " not in a
    assert cell_label({"seed": 1, "cfg": 7.5}) == "seed-1_cfg-7.5"
    assert cell_label({"flag": True}) == "flag-true"


def test_templates_keep_native_types():
    ctx = {"seed": 42, "cfg": 7.5, "word": "42", "items": [1, 2]}
    assert render_value("{{ seed }}", ctx) == 42
    assert render_value("{{ seed + 1 }}", ctx) == 43
    assert render_value("{{ cfg * 2 }}", ctx) == 15.0
    assert render_value("{{ word }}", ctx) == "42"  # a string stays a string (no literal_eval)
    assert render_value("s{{ seed }}-c{{ cfg }}", ctx) == "s42-c7.5"
    assert render_value({"a": ["{{ items }}", "x"]}, ctx) == {"a": [[1, 2], "x"]}
    assert render_value("{% if seed > 10 %}big{% else %}small{% endif %}", ctx) == "big"
    assert render_value("plain", ctx) == "plain"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{% import 'os' as os %}",
    "{% include '/etc/passwd' %}",
    "{{ undefined_name }}",
    "{{ 1 / 0 }}",
])
def test_templates_are_sandboxed(template):
    with pytest.raises(TemplateProblem):
        render_value(template, {"seed": 1})


FIELD_AXES = """\
version: 1
params: {word: hi}
sweep:
  grid: {t.seed: [1, 2], t.text: [a, b]}
nodes:
  t: {type: Text, with: {text: "{{ word }}", seed: 9}}
  out: {type: WriteText, in: {text: t}, with: {filename_prefix: "x{{ cell.index }}"}}
"""


def test_node_fields_are_axes(workflow):
    resolved = api.load(workflow(FIELD_AXES))
    assert [c.label for c in resolved.cells] == ["t-seed-1_t-text-a", "t-seed-1_t-text-b", "t-seed-2_t-text-a",
                                                 "t-seed-2_t-text-b"]
    assert [resolved.instances[i]["t"].literals for i in (0, 3)] == [{"text": "a", "seed": 1}, {"text": "b", "seed": 2}]
    pinned = api.load(workflow(FIELD_AXES), Overrides.parse(sets=["t.seed=7"], sweeps=["t.text=x,y,z"]))
    assert [c.label for c in pinned.cells] == ["t-text-x", "t-text-y", "t-text-z"]
    assert {i["t"].literals["seed"] for i in pinned.instances} == {7}


def test_node_field_axis_errors(workflow):
    bad = FIELD_AXES.replace("t.seed: [1, 2]", "t.sed: [1, 2]").replace("t.text: [a, b]", "u.text: [a, b]")
    with pytest.raises(WorkflowInvalid) as info:
        api.load(workflow(bad))
    msgs = {p.message: p for p in info.value.problems}
    sed = msgs["axis 't.sed': Text has no literal field 'sed'"]
    assert sed.hint.startswith("did you mean 'seed'") and (sed.location.line, sed.location.col) == (4, 10)
    assert "axis 'u.text' names no node 'u'" in msgs
    with pytest.raises(WorkflowInvalid) as info:
        api.load(workflow(FIELD_AXES), Overrides.parse(sets=["t.seed=-5"]))
    assert "greater than or equal to 0" in info.value.problems[0].message
