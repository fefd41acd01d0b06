"""Expand params and a sweep (plus --set / --sweep from the command line) into an ordered list of cells."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

from flowrun.errors import Location, Problem, WorkflowInvalid
from flowrun.spec.model import InterpolateAxis, RangeAxis, WorkflowSpec
from flowrun.spec.source import Source

DEFAULT_MAX_CELLS = 1024
MAX_RANGE_VALUES = 1_000_000  # a single axis longer than this is refused before it is built


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: all params resolved, plus a stable label built from the swept values.
    A swept name with a dot (`sample.cfg`) sets that node field directly, whatever its `with:` says."""

    index: int
    label: str
    values: dict[str, Any]  # the swept values only (what tells this cell from the others)
    params: dict[str, Any] = field(default_factory=dict)  # defaults, then --set, then the swept values

    @property
    def field_values(self) -> dict[tuple[str, str], Any]:
        """Node-field axes of this cell: (node id, field) -> value."""
        return {tuple(k.split(".", 1)): v for k, v in self.values.items() if "." in k}

    @property
    def context(self) -> dict[str, Any]:
        """What templates see: every param by name, and `cell` (index and label)."""
        return {**self.params, "cell": {"index": self.index, "label": self.label}}


@dataclass
class Overrides:
    """Values from the command line: --set name=value and --sweep name=a,b,c (raw text)."""

    sets: dict[str, str] = field(default_factory=dict)
    sweeps: dict[str, str] = field(default_factory=dict)
    max_cells: int | None = None

    @classmethod
    def parse(cls, sets: Iterable[str] = (), sweeps: Iterable[str] = (), max_cells: int | None = None) -> "Overrides":
        def split(items: Iterable[str], flag: str) -> dict[str, str]:
            out: dict[str, str] = {}
            for item in items:
                name, sep, value = item.partition("=")
                if not sep or not name.strip():
                    raise WorkflowInvalid([Problem("usage", f"{flag} expects name=value, got '{item}'")])
                out[name.strip()] = value
            return out

        return cls(split(sets, "--set"), split(sweeps, "--sweep"), max_cells)


def _parse_scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float, str)) or value is None else text


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)


def coerce(value: Any, default: Any, raw: str | None = None) -> Any:
    """Give `value` the type of the param's default; raise ValueError with a message if it can't have it."""
    if default is None or isinstance(default, (list, dict)):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if raw is not None:
            return raw
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return value if isinstance(value, str) else str(value)
    raise ValueError(f"expected {_type_name(default)} (the type of the default {default!r}), got {value!r}")


def range_values(axis: RangeAxis) -> list[Any]:
    start, stop, *rest = axis.range
    step = rest[0] if rest else 1
    if step == 0:
        raise ValueError("range step must not be 0")
    if all(isinstance(v, int) for v in (start, stop, step)):
        r = range(start, stop, step)
        if len(r) > MAX_RANGE_VALUES:
            raise ValueError(f"range has {len(r):,} values, more than {MAX_RANGE_VALUES:,}")
        return list(r)
    n = max(0, math.ceil((stop - start) / step - 1e-9))
    if n > MAX_RANGE_VALUES:
        raise ValueError(f"range has {n:,} values, more than {MAX_RANGE_VALUES:,}")
    # computed from the index, not by repeated addition, so 0.1 steps do not drift
    return [round(start + i * step, 12) for i in range(n)]


def interpolate_values(axis: InterpolateAxis) -> list[float]:
    """`steps` evenly spaced numbers from a to b, both ends included and exact; always floats."""
    (a, b), n = axis.interpolate, axis.steps
    if n > MAX_RANGE_VALUES:
        raise ValueError(f"interpolation has {n:,} steps, more than {MAX_RANGE_VALUES:,}")
    # from the index, so the last value is b itself and the steps do not drift
    return [float(a)] + [round(a + (b - a) * i / (n - 1), 12) for i in range(1, n - 1)] + [float(b)]


def axis_values(raw: Any) -> list[Any]:
    """The values of one sweep axis as written: a list, a range or an interpolation."""
    if isinstance(raw, RangeAxis):
        return range_values(raw)
    if isinstance(raw, InterpolateAxis):
        return interpolate_values(raw)
    return list(raw)


def _slug(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    slug = re.sub(r"[^A-Za-z0-9._+]+", "-", text).strip("-")[:32] or "empty"
    if slug != text:  # lossy: keep labels of different values apart
        slug += "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return slug


def cell_label(values: dict[str, Any]) -> str:
    """A stable, file-name-safe label such as `seed-1_cfg-4.0`."""
    if not values:
        return "default"
    return "_".join(f"{re.sub(r'[^A-Za-z0-9]+', '-', k)}-{_slug(v)}" for k, v in values.items())


def expand(spec: WorkflowSpec, source: Source, overrides: Overrides | None = None) -> list[Cell]:
    """All cells of the workflow in a deterministic order. Raises WorkflowInvalid with every problem."""
    overrides = overrides or Overrides()
    problems: list[Problem] = []
    defaults = dict(spec.params)
    sweep = spec.sweep
    axes: dict[str, dict[str, list[Any]]] = {"zip": {}, "grid": {}}

    def here(*path: Any) -> Location:
        return source.where(path)

    for kind in ("zip", "grid"):
        for name, raw_values in (getattr(sweep, kind) if sweep else {}).items():
            try:
                values = axis_values(raw_values)
            except ValueError as exc:
                problems.append(Problem("sweep", str(exc), here("sweep", kind, name), field=name))
                continue
            if not values:
                problems.append(Problem("sweep", f"axis '{name}' has no values", here("sweep", kind, name), field=name))
                continue
            if name in defaults:
                for i, v in enumerate(values):
                    try:
                        values[i] = coerce(v, defaults[name])
                    except ValueError as exc:
                        problems.append(Problem("sweep", f"value for '{name}': {exc}",
                                                here("sweep", kind, name, i), field=name))
            axes[kind][name] = values
    both = set(axes["zip"]) & set(axes["grid"])
    for name in sorted(both):
        problems.append(Problem("sweep", f"'{name}' is both a zip and a grid axis",
                                source.where(("sweep", "zip", name), key=True), field=name))

    # --sweep replaces or adds an axis; --set pins an axis or overrides a param.
    for name, raw in overrides.sweeps.items():
        texts = [t.strip() for t in raw.split(",")]
        try:
            values = [coerce(_parse_scalar(t), defaults[name], t) if name in defaults else _parse_scalar(t)
                      for t in texts]
        except ValueError as exc:
            problems.append(Problem("usage", f"--sweep {name}: {exc}"))
            continue
        if name in axes["zip"]:
            width = len(next(iter(axes["zip"].values())))
            if len(values) != width and len(axes["zip"]) > 1:
                problems.append(Problem("usage", f"--sweep {name}: '{name}' is a zip axis of {width} values, "
                                                 f"got {len(values)}"))
                continue
            axes["zip"][name] = values
        else:
            axes["grid"][name] = values
    pinned: dict[str, Any] = {}
    for name, raw in overrides.sets.items():
        is_axis = name in axes["zip"] or name in axes["grid"]
        if "." in name and not is_axis:  # a node field (`sample.steps`): the same value in every cell
            axes["grid"][name] = [_parse_scalar(raw)]
            pinned[name] = axes["grid"][name][0]
            continue
        if name not in defaults and not is_axis:
            hint = f"params are: {', '.join(sorted(defaults))}" if defaults else "the workflow declares no params"
            problems.append(Problem("usage", f"--set {name}: no param or sweep axis is named '{name}'", hint=hint))
            continue
        try:
            value = coerce(_parse_scalar(raw), defaults[name], raw) if name in defaults else _parse_scalar(raw)
        except ValueError as exc:
            problems.append(Problem("usage", f"--set {name}: {exc}"))
            continue
        if name in axes["grid"]:
            axes["grid"][name] = [value]
        elif name in axes["zip"]:
            keep = [i for i, v in enumerate(axes["zip"][name]) if v == value]
            if not keep:
                problems.append(Problem("usage", f"--set {name}={raw}: not among the zip values "
                                                 f"{axes['zip'][name]}", hint=f"use --sweep {name}=... instead"))
                continue
            axes["zip"] = {k: [vs[i] for i in keep] for k, vs in axes["zip"].items()}
        else:
            defaults[name] = value
        pinned[name] = value

    zip_lengths = {k: len(v) for k, v in axes["zip"].items()}
    if len(set(zip_lengths.values())) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in zip_lengths.items())
        problems.append(Problem("sweep", f"zip axes must have equal lengths, got {detail}", here("sweep", "zip"),
                                field="zip"))
    if problems:
        raise WorkflowInvalid(problems)

    n_zip = next(iter(zip_lengths.values()), 1)
    count = n_zip * math.prod(len(v) for v in axes["grid"].values())
    limit = overrides.max_cells or DEFAULT_MAX_CELLS
    if count > limit:
        raise WorkflowInvalid([Problem(
            "sweep", f"the sweep has {count:,} cells, more than the limit of {limit:,}", here("sweep"),
            hint=f"pass --max-cells {count} to run it anyway, or narrow it with --set")])

    cells: list[Cell] = []
    grid_names = list(axes["grid"])
    zip_names = list(axes["zip"])
    labels: set[str] = set()
    for zi in range(n_zip):
        zipped = {k: axes["zip"][k][zi] for k in zip_names}
        for combo in itertools.product(*(axes["grid"][k] for k in grid_names)):
            values = {**zipped, **dict(zip(grid_names, combo))}
            shown = {k: v for k, v in values.items() if k not in pinned}
            label = cell_label(shown)
            if label in labels:
                label = f"{label}_{len(cells)}"
            labels.add(label)
            cells.append(Cell(len(cells), label, values, {**defaults, **values}))
    return cells


def axis_names(spec: WorkflowSpec, overrides: Overrides | None = None) -> list[str]:
    """Every swept name, from the file and from --sweep."""
    names = list(spec.sweep.zip) + list(spec.sweep.grid) if spec.sweep else []
    names += [n for n in (overrides.sweeps if overrides else {}) if n not in names]
    return names
