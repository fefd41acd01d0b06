"""Every validation error kind: its message, its position (file:line:col), its node and field."""

from __future__ import annotations

import textwrap

import pytest

from flowrun import api
from flowrun.errors import WorkflowInvalid
from flowrun.spec.sweep import Overrides

GOOD = """\
version: 1
params: {word: hello, n: 2}
nodes:
  a:
    type: Text
    with: {text: "{{ word }}", seed: "{{ n }}"}
  out:
    type: WriteText
    in: {text: a}
"""

# (case id, yaml, kind, line, col, node, field, fragment of the message or hint)
CASES = [
    ("yaml-syntax", "version: 1\nnodes:\n  a: [unclosed\n", "yaml-syntax", 4, 1, None, None, "invalid YAML"),
    ("yaml-bad-indent", "version: 1\nnodes:\n  a:\n    type: Text\n   with: {}\n", "yaml-syntax", 5, 4, None, None,
     "invalid YAML"),
    ("duplicate-key", GOOD.replace("    type: Text\n", "    type: Text\n    type: Number\n"), "duplicate-key", 6, 5,
     None, None, "key 'type' appears twice (first at line 5)"),
    ("yaml-tag", "version: 1\nnodes: !!python/object:os.system {}\n", "yaml-tag", 2, 8, None, None, "unsupported YAML"),
    ("empty-file", "# nothing here\n", "empty-file", 1, 1, None, None, "holds no YAML document"),
    ("not-a-mapping", "- version: 1\n", "not-a-mapping", 1, 1, None, None, "got a list"),
    ("unknown-key", GOOD.replace("params:", "parms:"), "unknown-key", 2, 1, None, None, "did you mean 'params'"),
    ("unknown-node-key", GOOD.replace("    with: {text", "    width: {text"), "unknown-key", 6, 5, "a", None,
     "unknown key 'width'"),
    ("missing-version", GOOD.replace("version: 1\n", ""), "missing-key", 1, 1, None, None,
     "missing required key 'version'"),
    ("missing-type", GOOD.replace("    type: Text\n", ""), "missing-key", 4, 3, "a", None, "missing required key 'type'"),
    ("version", GOOD.replace("version: 1", "version: 3"), "version", 1, 10, None, "version",
     "unsupported workflow version 3"),
    ("no-nodes", "version: 1\nnodes: {}\n", "no-nodes", 2, 8, None, "nodes", "declares no nodes"),
    ("nodes-list", "version: 1\nnodes: [a, b]\n", "invalid-value", 2, 8, None, "nodes", "expected a mapping"),
    ("link-not-string", GOOD.replace("in: {text: a}", "in: {text: 3}"), "bad-link", 9, 16, "out", "text",
     "'in:' holds links only"),
    ("link-malformed", GOOD.replace("in: {text: a}", "in: {text: 'a b'}"), "bad-link", 9, 16, "out", "text",
     "is not a link"),
    ("invalid-node-id", GOOD.replace("  a:\n", "  9a:\n").replace("text: a}", "text: 9a}"), "invalid-node-id", 4, 3,
     "9a", None, "is not valid"),
    ("unknown-node-type", GOOD.replace("type: Text", "type: Txet"), "unknown-node-type", 5, 11, "a", "type",
     "did you mean 'Text'"),
    ("literal-for-link", GOOD.replace("in: {text: a}", "with: {text: a}"), "literal-for-link", 9, 12, "out", "text",
     "move it under 'in:'"),
    ("unknown-input", GOOD.replace("in: {text: a}", "in: {txt: a}"), "unknown-input", 9, 10, "out", "txt",
     "did you mean 'text'"),
    ("unknown-with-field", GOOD.replace("seed: \"{{ n }}\"", "sede: 1"), "unknown-input", 6, 32, "a", "sede",
     "did you mean 'seed'"),
    ("duplicate-input", GOOD.replace("in: {text: a}", "in: {text: a, filename_prefix: a}\n    with: {filename_prefix: x}"),
     "duplicate-input", 9, 19, "out", "filename_prefix", "both under 'in:' and 'with:'"),
    ("unknown-node", GOOD.replace("in: {text: a}", "in: {text: b}"), "unknown-node", 9, 16, "out", "text",
     "link to unknown node 'b'"),
    ("unknown-output", GOOD.replace("in: {text: a}", "in: {text: a.txt}"), "unknown-output", 9, 16, "out", "text",
     "did you mean 'text'"),
    ("type-mismatch", GOOD + "  num:\n    type: Number\n  out2:\n    type: WriteText\n    in: {text: num}\n",
     "type-mismatch", 14, 16, "out2", "text", "'num' gives INT but 'text' takes STRING"),
    ("missing-input", GOOD.replace("    in: {text: a}\n", ""), "missing-input", 7, 3, "out", "text",
     "missing input 'text' (STRING)"),
    ("no-output", "version: 1\nnodes:\n  a:\n    type: Number\n", "no-output", 2, 1, None, "nodes",
     "no node writes an output"),
    ("missing-field", "version: 1\nnodes:\n  m:\n    type: FakeLoader\n  out:\n    type: WriteText\n"
                      "    in: {text: u}\n  u:\n    type: UseModel\n    in: {model: m, text: t}\n  t:\n    type: Text\n",
     "missing-field", 3, 3, "m", "name", "missing required field 'name'"),
    ("invalid-value-range", GOOD.replace("seed: \"{{ n }}\"", "seed: -4"), "invalid-value", 6, 38, "a", "seed",
     "greater than or equal to 0, got the number -4"),
    ("invalid-value-type", GOOD.replace("seed: \"{{ n }}\"", "seed: many"), "invalid-value", 6, 38, "a", "seed",
     "valid integer"),
    ("invalid-choice", GOOD + "  s:\n    type: Scale\n    in: {x: n}\n    with: {mode: flor}\n  n:\n    type: Number\n"
                              "  w:\n    type: WriteNumber\n    in: {value: s}\n",
     "invalid-choice", 13, 18, "s", "mode", "did you mean 'floor'"),
    ("template-undefined", GOOD.replace("{{ word }}", "{{ wrod }}"), "template", 6, 18, "a", "text",
     "'wrod' is undefined"),
    ("template-syntax", GOOD.replace("{{ word }}", "{{ word "), "template", 6, 18, "a", "text",
     "template syntax error"),
    ("template-sandbox", GOOD.replace("{{ word }}", "{{ word.__class__.__mro__ }}"), "template", 6, 18, "a", "text",
     "__class__"),
    ("template-type", GOOD.replace("{{ n }}", "{{ word }}"), "invalid-value", 6, 38, "a", "seed", "valid integer"),
    ("sweep-zip-lengths", GOOD + "sweep:\n  zip: {word: [a, b], n: [1, 2, 3]}\n", "sweep", 11, 8, None, "zip",
     "equal lengths, got word: 2, n: 3"),
    ("sweep-unused-axis", GOOD + "sweep:\n  grid: {word: [a, b], m: [1, 2]}\n", "unused-axis", 11, 24, None, "m",
     "sweep axis 'm' is not used"),
    ("sweep-bad-axis", GOOD + "sweep:\n  grid: {word: 3}\n", "sweep", 11, 16, None, "word",
     "must be a list of values or {range"),
    ("sweep-empty-axis", GOOD + "sweep:\n  grid: {word: []}\n", "sweep", 11, 16, None, "word", "has no values"),
    ("sweep-value-type", GOOD + "sweep:\n  grid: {n: [1, two]}\n", "sweep", 11, 17, None, "n",
     "expected integer (the type of the default 2)"),
    ("sweep-zero-step", GOOD + "sweep:\n  grid: {n: {range: [1, 5, 0]}}\n", "sweep", 11, 13, None, "n",
     "step must not be 0"),
    ("sweep-both", GOOD + "sweep:\n  grid: {n: [1]}\n  zip: {n: [2]}\n", "sweep", 12, 9, None, "n",
     "both a zip and a grid axis"),
]


def _load(path, overrides=None):
    return api.load(path, overrides)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_kind(case, workflow):
    _, text, kind, line, col, node, field, fragment = case
    path = workflow(text)
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    matching = [p for p in info.value.problems if p.kind == kind]
    assert matching, info.value.render()
    p = matching[0]
    assert (p.location.line, p.location.col) == (line, col), p.format()
    assert p.location.file == str(path)
    assert (p.node, p.field) == (node, field), p.format()
    assert fragment in p.message + " " + (p.hint or ""), p.format()


def test_cycle_names_the_nodes(workflow):
    path = workflow("""
        version: 1
        nodes:
          a: {type: Join, in: {left: b, right: c}}
          b: {type: Join, in: {left: a, right: c}}
          c: {type: Text}
          out: {type: WriteText, in: {text: a}}
        """)
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    (p,) = [p for p in info.value.problems if p.kind == "cycle"]
    assert "a -> b -> a" in p.message or "b -> a -> b" in p.message
    assert p.location.line in (3, 4)


def test_ambiguous_link_lists_outputs(workflow):
    path = workflow("""
        version: 1
        nodes:
          t: {type: Text}
          s: {type: Split, in: {text: t}}
          out: {type: WriteText, in: {text: s}}
        """)
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    (p,) = info.value.problems
    assert p.kind == "ambiguous-link" and "'s.head' or 's.tail'" in p.hint
    assert (p.location.line, p.location.col) == (5, 37)


def test_all_problems_reported_together_sorted(workflow):
    path = workflow(GOOD.replace("type: Text", "type: Txet").replace("in: {text: a}", "in: {text: a, x: a}")
                    .replace("    in: {text: a, x: a}\n", "    in: {text: a, x: a}\n    with: {filename_prefix: ../up}\n")
                    + "sweep:\n  grid: {zz: [1]}\n")
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    kinds = [p.kind for p in info.value.problems]
    assert {"unknown-node-type", "unknown-input", "unused-axis", "invalid-value"} <= set(kinds)
    (bad_prefix,) = [p for p in info.value.problems if p.kind == "invalid-value"]
    assert bad_prefix.message == "the prefix would not stay in the output folder: it contains '..' and would " \
                                 "leave its folder, got the text \"../up\""
    assert (bad_prefix.node, bad_prefix.field) == ("out", "filename_prefix")
    lines = [p.location.line for p in info.value.problems if p.location]
    assert lines == sorted(lines)
    rendered = info.value.render()
    assert rendered.endswith("problems found") and "Traceback" not in rendered


def test_problem_in_some_cells_names_them(workflow):
    path = workflow(GOOD.replace('seed: "{{ n }}"', 'seed: "{{ n - 3 }}"') + "sweep:\n  grid: {n: [1, 5, 2]}\n")
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    (p,) = info.value.problems
    assert p.kind == "invalid-value" and p.cells == ("n-1", "n-2")
    assert "in sweep cells: n-1, n-2" in p.format()


def test_message_format_has_position_node_field(workflow):
    path = workflow(GOOD.replace("type: Text", "type: Txet"))
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    first = info.value.render().splitlines()[0]
    assert first == f"{path}:5:11: error[unknown-node-type]: node 'a', field 'type': unknown node type 'Txet'"


def test_usage_problems_from_command_line(workflow):
    path = workflow(GOOD)
    with pytest.raises(WorkflowInvalid) as info:
        _load(path, Overrides.parse(sets=["nope=1", "n=abc"]))
    msgs = sorted(p.message for p in info.value.problems)
    assert msgs[0].startswith("--set n: expected integer") and "no param or sweep axis is named 'nope'" in msgs[1]


def test_file_level_problems(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x89PNG\x00\x01")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: 1\nname: caf\xe9\n")
    for path, kind, fragment in [(binary, "encoding", "NUL bytes"), (latin, "encoding", "not valid UTF-8"),
                                 (tmp_path / "missing.yaml", "file", "no such file")]:
        with pytest.raises(WorkflowInvalid) as info:
            _load(path)
        (p,) = info.value.problems
        assert p.kind == kind and fragment in p.message
    with pytest.raises(WorkflowInvalid) as info:
        _load(latin)
    assert (info.value.problems[0].location.line, info.value.problems[0].location.col) == (2, 10)


def test_alias_bomb_is_bounded(workflow):
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    path = workflow("\n".join(lines) + "\nnodes: {}\n")
    with pytest.raises(WorkflowInvalid) as info:
        _load(path)
    assert info.value.problems[0].kind == "too-large"


def test_good_workflow_loads(workflow):
    resolved = _load(workflow(GOOD))
    inst = resolved.instances[0]["a"]
    assert inst.literals == {"text": "hello", "seed": 2}
    assert resolved.order.index("a") < resolved.order.index("out")


def test_dedent_helper_sanity():
    # the cases above are written against GOOD's exact layout
    assert textwrap.dedent(GOOD).splitlines()[4] == "    type: Text"
