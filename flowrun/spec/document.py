"""Check a parsed YAML document against the workflow model, turning pydantic errors into positioned problems."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from flowrun.errors import Problem, WorkflowInvalid, did_you_mean
from flowrun.spec.model import NODE_KEYS, TOP_LEVEL_KEYS, WorkflowSpec
from flowrun.spec.source import Source


def describe(value: Any) -> str:
    """How a value reads to a person: 'a list', 'the number 3', 'the text "x"'."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'the text "{shown}"'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _subject(path: tuple) -> tuple[str | None, str | None]:
    """The node id and field named by a document path, for the message's 'node ..., field ...' part."""
    if len(path) >= 2 and path[0] == "nodes":
        node = str(path[1])
        field = ".".join(str(p) for p in path[2:]) or None
        return node, field
    return None, ".".join(str(p) for p in path) or None


def _allowed_keys(path: tuple) -> tuple[str, ...]:
    if len(path) == 1:
        return TOP_LEVEL_KEYS
    if len(path) == 3 and path[0] == "nodes":
        return NODE_KEYS
    if len(path) == 2 and path[0] == "sweep":
        return ("grid", "zip")
    return ()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interpolate_problem(axis: str, path: tuple, value: dict, source: Source) -> Problem:
    """The one problem of an axis written as {interpolate: [a, b], steps: N}, at the part that is wrong."""
    form = "{interpolate: [a, b], steps: N}"
    ends, steps = value.get("interpolate"), value.get("steps")
    extra = sorted(set(value) - {"interpolate", "steps"})
    if extra:
        return Problem("sweep", f"axis '{axis}': unknown key '{extra[0]}' in {form}", source.where(path + (extra[0],), key=True),
                       field=axis)
    if not (isinstance(ends, list) and len(ends) == 2 and all(_is_number(v) for v in ends)):
        return Problem("sweep", f"axis '{axis}': interpolate takes two numbers [a, b], got {describe(ends)}",
                       source.where(path + ("interpolate",)), field=axis)
    if steps is None:
        return Problem("sweep", f"axis '{axis}': an interpolation needs steps (how many values, at least 2): {form}",
                       source.where(path), field=axis)
    return Problem("sweep", f"axis '{axis}': steps is how many values from a to b, a whole number of at least 2, "
                            f"got {describe(steps)}", source.where(path + ("steps",)), field=axis)


def problem_from_pydantic(err: dict, source: Source) -> Problem:
    loc = tuple(err["loc"])
    kind, value = err["type"], err.get("input")
    if loc[:1] == ("sweep",) and len(loc) > 3 and loc[1] in ("grid", "zip"):
        path = loc[:3]
        value = source_value(source, path)
        if isinstance(value, dict) and "interpolate" in value:
            return _interpolate_problem(str(loc[2]), path, value, source)
        if isinstance(value, dict) and set(value) == {"range"}:
            return Problem("sweep", f"axis '{loc[2]}': a range is [start, stop] or [start, stop, step] of numbers, "
                                    f"got {describe(value['range'])}", source.where(path + ("range",)),
                           field=str(loc[2]))
        return Problem("sweep", f"axis '{loc[2]}' must be a list of values or {{range: [start, stop, step]}} or "
                                f"{{interpolate: [a, b], steps: N}}, "
                                f"got {describe(value)}", source.where(path), field=str(loc[2]))
    path = loc
    node, field = _subject(path)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path)
        hint = did_you_mean(str(path[-1]), allowed)
        if allowed:
            hint = (hint + " " if hint else "") + f"valid keys here: {', '.join(allowed)}"
        return Problem("unknown-key", f"unknown key '{path[-1]}'", source.where(path, key=True),
                       node=node, field=None if node else None, hint=hint)
    if kind == "missing":
        parent = path[:-1]
        return Problem("missing-key", f"missing required key '{path[-1]}'",
                       source.where(parent, key=True) if parent else source.where(()),
                       node=node, field=None, hint=_missing_hint(path))
    where = source.where(path)
    if kind in ("dict_type", "mapping_type", "model_type"):
        msg = f"expected a mapping (key: value), got {describe(value)}"
    elif kind == "list_type":
        msg = f"expected a list, got {describe(value)}"
    elif kind == "string_type" and len(path) == 4 and path[0] == "nodes" and path[2] == "in":
        return Problem("bad-link", f"'in:' holds links only (node or node.output), got {describe(value)}", where,
                       node=node, field=str(path[3]),
                       hint=f"put literal values under 'with:', e.g. with: {{{path[3]}: {value!r}}}")
    elif kind == "string_type":
        msg = f"expected text, got {describe(value)}"
    elif kind == "literal_error" and path == ("version",):
        return Problem("version", f"unsupported workflow version {value!r}", where, field="version",
                       hint="this flowrun reads version: 1")
    elif kind == "too_short" and path == ("nodes",):
        return Problem("no-nodes", "the workflow declares no nodes", where, field="nodes")
    else:
        msg = f"{err['msg']}, got {describe(value)}"
    return Problem("invalid-value", msg, where, node=node, field=field)


def _missing_hint(path: tuple) -> str | None:
    if path == ("version",):
        return "add 'version: 1' at the top of the file"
    if len(path) == 3 and path[0] == "nodes" and path[2] == "type":
        return "every node needs a 'type:', e.g. type: KSampler (see `flowrun nodes`)"
    return None


def source_value(source: Source, path: tuple) -> Any:
    value = source.data
    for p in path:
        try:
            value = value[p]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def load_document(source: Source) -> WorkflowSpec:
    """The WorkflowSpec for a parsed source, or WorkflowInvalid listing every shape problem."""
    if not isinstance(source.data, dict):
        raise WorkflowInvalid([Problem("not-a-mapping", f"a workflow is a mapping of keys, got {describe(source.data)}",
                                       source.where(()), hint="start the file with 'version: 1'")])
    try:
        return WorkflowSpec.model_validate(source.data)
    except ValidationError as exc:
        raise WorkflowInvalid([problem_from_pydantic(e, source) for e in exc.errors()]) from None
