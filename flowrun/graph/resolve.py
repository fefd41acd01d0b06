"""Validate a workflow against the node registry and resolve every sweep cell into typed node instances.

One pass collects every problem: unknown node types, inputs and outputs, bad links, type mismatches,
cycles (once per workflow), then template errors and out-of-range literals (per cell). Nothing heavy is
imported here: `flowrun validate` stops after this module.
"""

from __future__ import annotations

import graphlib
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from flowrun.errors import Problem, WorkflowInvalid, did_you_mean, list_choices
from flowrun.nodes import ports
from flowrun.nodes.registry import NodeDef, Registry
from flowrun.spec.document import describe
from flowrun.spec.model import LINK_PATTERN, NODE_ID_PATTERN, WorkflowSpec
from flowrun.spec.source import Source
from flowrun.spec.sweep import Cell, Overrides, axis_names, expand
from flowrun.spec.templating import TemplateProblem, referenced_names, render_value


@dataclass(frozen=True)
class Link:
    """An edge's source: output `output` of node `node`."""

    node: str
    output: str


@dataclass
class Instance:
    """A node in one cell: validated literals and resolved links."""

    node_id: str
    node_def: NodeDef
    literals: dict[str, Any]  # validated `with:` values (JSON-compatible), without the fields fed by links
    links: dict[str, Link]  # input or literal field name -> source


@dataclass
class Resolved:
    """A valid workflow, expanded: its cells, the node order, and each cell's instances."""

    source: Source
    spec: WorkflowSpec
    registry: Registry
    cells: list[Cell]
    order: list[str]
    instances: list[dict[str, Instance]] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.source.file


_ID = re.compile(NODE_ID_PATTERN)
_LINK = re.compile(LINK_PATTERN)


def _check_structure(spec: WorkflowSpec, source: Source, registry: Registry) -> tuple[dict[str, dict[str, Link]], list[str], list[Problem]]:
    problems: list[Problem] = []
    links: dict[str, dict[str, Link]] = {}
    defs = {nid: registry.get(ns.type) for nid, ns in spec.nodes.items()}

    for nid, ns in spec.nodes.items():
        if not _ID.match(nid):
            problems.append(Problem("invalid-node-id", f"node id '{nid}' is not valid", source.where(("nodes", nid), key=True),
                                    node=nid, hint="use letters, digits, '_' and '-', starting with a letter or '_'"))
        nd = defs[nid]
        if nd is None:
            hint = did_you_mean(ns.type, registry.names()) or "`flowrun nodes` lists the node types"
            problems.append(Problem("unknown-node-type", f"unknown node type '{ns.type}'",
                                    source.where(("nodes", nid, "type")), node=nid, field="type", hint=hint))
            continue
        for extra, module in nd.missing_extras():
            problems.append(Problem("missing-extra", f"{ns.type} needs {module}, which is not installed",
                                    source.where(("nodes", nid, "type")), node=nid, field="type",
                                    hint=f"pip install 'flowrun[{extra}]'"))
        for name in ns.with_:
            if name in nd.inputs:
                problems.append(Problem("literal-for-link", f"'{name}' is a link of type {nd.inputs[name].type}, "
                                        "not a literal", source.where(("nodes", nid, "with", name), key=True),
                                        node=nid, field=name, hint=f"move it under 'in:', e.g. in: {{{name}: other_node}}"))
            elif name not in nd.params.model_fields:
                problems.append(_unknown_field(nd, nid, name, source, "with"))
        node_links: dict[str, Link] = {}
        for name, target in ns.in_.items():
            path = ("nodes", nid, "in", name)
            if not nd.accepts(name):
                problems.append(_unknown_field(nd, nid, name, source, "in"))
                continue
            if name in ns.with_:
                problems.append(Problem("duplicate-input", f"'{name}' is given both under 'in:' and 'with:'",
                                        source.where(path, key=True), node=nid, field=name, hint="keep one of them"))
                continue
            link = _parse_link(target, spec, defs, source, path, nid, name, problems)
            if link is None:
                continue
            src_type = defs[link.node].outputs[link.output]
            dst_type = nd.inputs[name].type if name in nd.inputs else nd.widget_type(name)
            if not ports.compatible(src_type, dst_type):
                problems.append(Problem("type-mismatch", f"'{target}' gives {src_type} but '{name}' takes {dst_type}",
                                        source.where(path), node=nid, field=name))
                continue
            node_links[name] = link
        for name, inp in nd.inputs.items():
            if not inp.optional and name not in ns.in_:
                problems.append(Problem("missing-input", f"missing input '{name}' ({inp.type})",
                                        source.where(("nodes", nid), key=True), node=nid, field=name,
                                        hint=f"add it under 'in:', e.g. in: {{{name}: some_node}}"))
        links[nid] = node_links

    if spec.nodes and all(d is not None and not d.sink for d in defs.values()):
        problems.append(Problem("no-output", "no node writes an output, so nothing would run",
                                source.where(("nodes",), key=True), field="nodes",
                                hint="add an output node such as SaveImage"))
    order: list[str] = []
    sorter = graphlib.TopologicalSorter({nid: [l.node for l in ls.values()] for nid, ls in links.items()})
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        first = cycle[0]
        problems.append(Problem("cycle", "the links form a cycle: " + " -> ".join(cycle),
                                source.where(("nodes", first), key=True), node=first,
                                hint="a node cannot depend on its own output"))
    order = [n for n in order if n in links]
    return links, order, problems


def _field_axis_problems(name: str, spec: WorkflowSpec, source: Source, registry: Registry,
                         links: dict[str, dict[str, Link]]) -> list[Problem]:
    """A swept node field (`sample.cfg`) must name a node and one of its literal fields."""
    in_file = spec.sweep and (name in spec.sweep.grid or name in spec.sweep.zip)
    kind = "zip" if spec.sweep and name in spec.sweep.zip else "grid"
    where = source.where(("sweep", kind, name), key=True) if in_file else None
    nid, _, fname = name.partition(".")
    if nid not in spec.nodes:
        hint = did_you_mean(nid, spec.nodes) or f"nodes are: {list_choices(spec.nodes)}"
        return [Problem("sweep", f"axis '{name}' names no node '{nid}'", where, field=name, hint=hint)]
    nd = registry.get(spec.nodes[nid].type)
    if nd is None:
        return []  # the unknown type is reported already
    if fname not in nd.params.model_fields:
        fields = list(nd.params.model_fields)
        hint = did_you_mean(fname, fields) or (f"{nd.type_name} fields: {', '.join(fields)}" if fields else None)
        return [Problem("sweep", f"axis '{name}': {nd.type_name} has no literal field '{fname}'", where, node=nid,
                        field=name, hint=hint)]
    if fname in links.get(nid, {}):
        return [Problem("sweep", f"axis '{name}': field '{fname}' of node '{nid}' is fed by a link", where, node=nid,
                        field=name, hint="sweep a field given under 'with:'")]
    return []


def _unknown_field(nd: NodeDef, nid: str, name: str, source: Source, section: str) -> Problem:
    valid = list(nd.inputs) + list(nd.params.model_fields)
    hint = did_you_mean(name, valid)
    listing = f"{nd.type_name} takes: {', '.join(valid)}" if valid else f"{nd.type_name} takes no inputs"
    return Problem("unknown-input", f"{nd.type_name} has no input or field '{name}'",
                   source.where(("nodes", nid, section, name), key=True), node=nid, field=name,
                   hint=f"{hint} {listing}" if hint else listing)


def _parse_link(target: str, spec: WorkflowSpec, defs: dict[str, NodeDef | None], source: Source, path: tuple,
                nid: str, name: str, problems: list[Problem]) -> Link | None:
    where = source.where(path)
    if not _LINK.match(target):
        problems.append(Problem("bad-link", f"'{target}' is not a link; links are 'node' or 'node.output'", where,
                                node=nid, field=name, hint="put literal values under 'with:'"))
        return None
    src, _, output = target.partition(".")
    if src not in spec.nodes:
        hint = did_you_mean(src, spec.nodes) or f"nodes are: {list_choices(spec.nodes)}"
        problems.append(Problem("unknown-node", f"link to unknown node '{src}'", where, node=nid, field=name, hint=hint))
        return None
    src_def = defs[src]
    if src_def is None:
        return None  # its unknown type is reported already
    outs = src_def.outputs
    if not outs:
        problems.append(Problem("bad-link", f"node '{src}' ({src_def.type_name}) has no outputs", where,
                                node=nid, field=name))
        return None
    if not output:
        if len(outs) > 1:
            problems.append(Problem("ambiguous-link", f"node '{src}' has several outputs; name one", where, node=nid,
                                    field=name, hint="use " + " or ".join(f"'{src}.{o}'" for o in outs)))
            return None
        output = next(iter(outs))
    if output not in outs:
        hint = did_you_mean(output, outs) or f"{src_def.type_name} outputs: {', '.join(outs)}"
        problems.append(Problem("unknown-output", f"node '{src}' ({src_def.type_name}) has no output '{output}'",
                                where, node=nid, field=name, hint=hint))
        return None
    return Link(src, output)


def _literal_choices(annotation: Any) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def _param_problem(err: dict, nd: NodeDef, nid: str, source: Source) -> Problem:
    name = str(err["loc"][0]) if err["loc"] else None
    if err["type"] == "missing":
        return Problem("missing-field", f"missing required field '{name}'", source.where(("nodes", nid), key=True),
                       node=nid, field=name, hint=f"add it under 'with:' (see `flowrun nodes {nd.type_name}`)")
    path = ("nodes", nid, "with") + tuple(err["loc"])
    value = err.get("input")
    info = nd.params.model_fields.get(name) if name else None
    choices = _literal_choices(info.annotation) if info is not None else None
    if choices is not None and err["type"] == "literal_error":
        hint = did_you_mean(str(value), [str(c) for c in choices])
        listing = f"valid: {list_choices([str(c) for c in choices], 20)}"
        return Problem("invalid-choice", f"{describe(value)} is not a valid {name}", source.where(path),
                       node=nid, field=name, hint=f"{hint} {listing}" if hint else listing)
    msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"][0].lower() + err["msg"][1:]
    return Problem("invalid-value", f"{msg}, got {describe(value)}", source.where(path), node=nid, field=name)


def resolve(spec: WorkflowSpec, source: Source, registry: Registry, overrides: Overrides | None = None) -> Resolved:
    """Validate everything and expand the cells. Raises WorkflowInvalid listing every problem found."""
    links, order, problems = _check_structure(spec, source, registry)

    used = set().union(*(referenced_names(ns.with_) for ns in spec.nodes.values()))
    for name in axis_names(spec, overrides) + [n for n in (overrides.sets if overrides else {}) if "." in n]:
        if "." in name:
            problems += _field_axis_problems(name, spec, source, registry, links)
            continue
        if name not in used:
            kind = "zip" if spec.sweep and name in spec.sweep.zip else "grid"
            where = source.where(("sweep", kind, name), key=True) if spec.sweep and (
                name in spec.sweep.zip or name in spec.sweep.grid) else None
            problems.append(Problem("unused-axis", f"sweep axis '{name}' is not used by any template", where,
                                    field=name, hint="refer to it in a 'with:' value, e.g. \"{{ " + name + " }}\""))
    try:
        cells = expand(spec, source, overrides)
    except WorkflowInvalid as exc:
        raise WorkflowInvalid(problems + exc.problems) from None

    # literals are checked even when the structure has problems, so that one pass reports everything
    per_cell: dict[tuple, list[str]] = {}
    found: dict[tuple, Problem] = {}
    resolved = Resolved(source, spec, registry, cells, order)
    for cell in cells:
        instances: dict[str, Instance] = {}
        for nid in order if not problems else list(spec.nodes):
            ns, nd = spec.nodes[nid], registry.get(spec.nodes[nid].type)
            if nd is None:
                continue
            cell_problems: list[Problem] = []
            rendered: dict[str, Any] = {}
            for name, value in ns.with_.items():
                try:
                    rendered[name] = render_value(value, cell.context)
                except TemplateProblem as exc:
                    cell_problems.append(Problem("template", str(exc), source.where(("nodes", nid, "with", name)),
                                                 node=nid, field=name))
            for (target, fname), value in cell.field_values.items():
                if target == nid:
                    rendered[fname] = value
            linked = set(links.get(nid, {})) & set(nd.params.model_fields)
            literals: dict[str, Any] = {}
            try:
                literals = nd.params.model_validate(rendered).model_dump(mode="json")
            except ValidationError as exc:
                errs = [e for e in exc.errors() if not (e["type"] == "missing" and e["loc"][0] in linked)]
                errs = [e for e in errs if e["type"] != "extra_forbidden"]  # reported once, structurally
                cell_problems += [_param_problem(e, nd, nid, source) for e in errs]
                literals = dict(rendered)
            for p in cell_problems:
                k = (p.kind, p.location, p.node, p.field)  # one report per spot, naming the cells it fails in
                found.setdefault(k, p)
                per_cell.setdefault(k, []).append(cell.label)
            instances[nid] = Instance(nid, nd, {k: v for k, v in literals.items() if k not in linked},
                                      links.get(nid, {}))
        resolved.instances.append(instances)
    n = len(cells)
    for k, p in found.items():
        labels = per_cell[k]
        cells_named = () if n == 1 or len(labels) == n else tuple(labels)
        problems.append(Problem(p.kind, p.message, p.location, p.node, p.field, p.hint, cells_named))
    if problems:
        raise WorkflowInvalid(problems)
    return resolved
