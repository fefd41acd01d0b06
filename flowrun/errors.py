"""The error tree. Every error a user can cause knows where it came from: file:line:col, node, field.

Exit codes: 2 for invalid input (workflow or command line), 1 for a failure at run time.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True, order=True)
class Location:
    """A 1-based position in a source file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow, ready to be shown to the person holding the YAML file."""

    kind: str  # a stable short name, e.g. "unknown-node-type"; tests and tools match on it
    message: str
    location: Location | None = None
    node: str | None = None
    field: str | None = None
    hint: str | None = None
    cells: tuple[str, ...] = ()

    def format(self) -> str:
        where = f"{self.location}: " if self.location else ""
        subject = []
        if self.node:
            subject.append(f"node '{self.node}'")
        if self.field:
            subject.append(f"field '{self.field}'")
        head = f"{where}error[{self.kind}]: "
        if subject:
            head += ", ".join(subject) + ": "
        lines = [head + self.message]
        if self.cells:
            shown = ", ".join(self.cells[:3]) + (f" (+{len(self.cells) - 3} more)" if len(self.cells) > 3 else "")
            lines.append(f"  in sweep cells: {shown}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def sort_key(self) -> tuple:
        loc = self.location or Location("", 0, 0)
        return (loc.file, loc.line, loc.col, self.kind, self.message)


class FlowrunError(Exception):
    """Base of every error flowrun reports to users without a traceback."""

    exit_code = 1

    def render(self) -> str:
        return f"error: {self}"


class WorkflowInvalid(FlowrunError):
    """The workflow (or the values given for it) is invalid: every problem found, collected in one pass."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem]):
        unique: dict[tuple, Problem] = {}
        for p in problems:
            unique.setdefault((p.kind, p.message, p.location, p.node, p.field, p.cells), p)
        self.problems: list[Problem] = sorted(unique.values(), key=Problem.sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        body = "\n".join(p.format() for p in self.problems)
        return f"{body}\n{n} problem{'s' if n != 1 else ''} found"


class UsageError(FlowrunError):
    """A bad command-line value (a --set that names no param, a malformed --sweep, ...)."""

    exit_code = 2


class RunFailed(FlowrunError):
    """A node failed while running. Carries the node and the cells it belonged to."""

    exit_code = 1

    def __init__(self, node: str, node_type: str, cells: Sequence[str], message: str):
        self.node, self.node_type, self.cells = node, node_type, tuple(cells)
        self.message = message
        super().__init__(message)

    @classmethod
    def many(cls, failures: Sequence["RunFailed"]) -> "RunFailed":
        """One error for one or several failures (a run with --keep-going)."""
        if len(failures) == 1:
            return failures[0]
        cells = sorted({c for f in failures for c in f.cells})
        lines = "\n".join("  " + f.render().removeprefix("error: ") for f in failures)
        combined = cls(failures[0].node, failures[0].node_type, cells, f"{len(failures)} nodes failed")
        combined.failures = list(failures)
        combined.rendered = f"error: {len(failures)} nodes failed:\n{lines}"
        return combined

    def render(self) -> str:
        if getattr(self, "rendered", None):
            return self.rendered
        where = f"node '{self.node}' ({self.node_type})"
        if self.cells and self.cells != ("default",):
            where += f" in cell {', '.join(self.cells[:3])}" + (" ..." if len(self.cells) > 3 else "")
        return f"error: {where} failed: {self.message}"


class NodeError(Exception):
    """Raised by a node implementation for a failure the user can act on (shown without traceback)."""


@dataclass
class ProblemList:
    """Collects problems during a validation pass; raises them together."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.problems.append(Problem(*args, **kwargs))

    def raise_if_any(self) -> None:
        if self.problems:
            raise WorkflowInvalid(self.problems)

    def __bool__(self) -> bool:
        return bool(self.problems)


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint built from the closest valid names, or None."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def list_choices(choices: Iterable[str], limit: int = 12) -> str:
    items = sorted(choices)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
