"""Read a YAML workflow into plain Python values while remembering where each value came from.

PyYAML's composer gives every node a start mark; we walk the node tree ourselves (rather than letting
`yaml.safe_load` build the values) so that each key and value keeps its line and column, duplicate keys
are reported instead of silently overwritten, and alias expansion is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from flowrun.errors import Location, Problem, WorkflowInvalid

Path = tuple  # a path into the document: ("nodes", "sample", "with", "cfg")

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VALUES = 200_000  # values after alias expansion; a "billion laughs" document stops here
MAX_DEPTH = 64

_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Source:
    """A parsed document: its values and, for each path, where the key and the value start."""

    file: str
    text: str
    data: Any
    key_marks: dict[Path, Location] = field(default_factory=dict)
    value_marks: dict[Path, Location] = field(default_factory=dict)

    def where(self, path: Path, *, key: bool = False) -> Location:
        """The most precise known location for `path`: the path itself, else its nearest parent."""
        marks = self.key_marks if key else self.value_marks
        p = tuple(path)
        while p:
            if p in marks:
                return marks[p]
            if not key and p in self.key_marks:
                return self.key_marks[p]
            p = p[:-1]
        return Location(self.file, 1, 1)


def _loc(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


class _Walker:
    def __init__(self, file: str, loader):
        self.file = file
        self.loader = loader
        self.count = 0
        self.key_marks: dict[Path, Location] = {}
        self.value_marks: dict[Path, Location] = {}
        self.problems: list[Problem] = []

    def walk(self, node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig(f"the document expands to more than {MAX_VALUES:,} values (aliases included)")
        if len(path) > MAX_DEPTH:
            raise _TooBig(f"the document nests deeper than {MAX_DEPTH} levels")
        self.value_marks.setdefault(path, _loc(self.file, node.start_mark))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise yaml.constructor.ConstructorError(None, None, f"the tag {node.tag!r} is not allowed",
                                                    node.start_mark)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves `<<` merge keys the way safe_load does
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(Problem("yaml-syntax", "a mapping key must be a plain value",
                                                 _loc(self.file, key_node.start_mark)))
                    continue
                key = self.loader.construct_object(key_node)
                if not isinstance(key, str):  # `1:` or `yes:` as a key: keep the text as written
                    key = key_node.value
                kpath = path + (key,)
                if key in out:
                    first = self.key_marks[kpath]
                    self.problems.append(Problem(
                        "duplicate-key", f"key '{key}' appears twice (first at line {first.line})",
                        _loc(self.file, key_node.start_mark), hint="remove or rename one of them"))
                    continue
                self.key_marks[kpath] = _loc(self.file, key_node.start_mark)
                out[key] = self.walk(value_node, kpath)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node)


class _TooBig(Exception):
    pass


def parse_yaml(text: str, file: str) -> Source:
    """Parse YAML text into a Source. Raises WorkflowInvalid on syntax errors and bad documents."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            loc = _loc(file, mark) if mark else Location(file, 1, 1)
            msg = exc.problem or str(exc)
            if exc.context:
                msg = f"{exc.context}: {msg}" if exc.problem else exc.context
            raise WorkflowInvalid([Problem("yaml-syntax", f"invalid YAML: {msg}", loc)]) from None
        except yaml.YAMLError as exc:
            raise WorkflowInvalid([Problem("yaml-syntax", f"invalid YAML: {exc}", Location(file, 1, 1))]) from None
        if root is None:
            raise WorkflowInvalid([Problem("empty-file", "the file holds no YAML document",
                                           Location(file, 1, 1), hint="a workflow starts with 'version: 1'")])
        walker = _Walker(file, loader)
        try:
            data = walker.walk(root, ())
        except _TooBig as exc:
            raise WorkflowInvalid([Problem("too-large", str(exc), Location(file, 1, 1))]) from None
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise WorkflowInvalid([Problem(
                "yaml-tag", f"unsupported YAML: {exc.problem}", _loc(file, mark) if mark else Location(file, 1, 1),
                hint="workflows use plain YAML values only; tags such as !!python/... are refused")]) from None
        except RecursionError:
            raise WorkflowInvalid([Problem("too-large", "the document nests too deeply",
                                           Location(file, 1, 1))]) from None
    finally:
        loader.dispose()
    if walker.problems:
        raise WorkflowInvalid(walker.problems)
    return Source(file, text, data, walker.key_marks, walker.value_marks)


def read_source(path: str, display: str | None = None) -> Source:
    """Read and parse a workflow file, with every failure as a WorkflowInvalid that names the file."""
    name = display or path
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise WorkflowInvalid([Problem("file", f"no such file: {path}")]) from None
    except IsADirectoryError:
        raise WorkflowInvalid([Problem("file", f"{path} is a folder, not a workflow file")]) from None
    except OSError as exc:
        raise WorkflowInvalid([Problem("file", f"cannot read {path}: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise WorkflowInvalid([Problem("too-large", f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB",
                                       Location(name, 1, 1))])
    if b"\x00" in raw:
        raise WorkflowInvalid([Problem("encoding", "the file holds NUL bytes: it is binary, not YAML",
                                       Location(name, 1, 1))])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise WorkflowInvalid([Problem("encoding", "the file is not valid UTF-8", Location(name, line, col),
                                       hint="save the workflow as UTF-8")]) from None
    return parse_yaml(text, name)
