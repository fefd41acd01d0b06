"""Expand the reusable parts of ComfyUI's UI format into plain nodes before import.

Two shapes exist. Group nodes (the 2024 editor): a node of type `workflow/NAME` (or `workflow>NAME`)
whose inner nodes are listed in `extra.groupNodes[NAME]` by position, with links between positions; its
inputs are the inner link inputs nothing inside feeds, its outputs the inner outputs nothing inside
reads (or that `external` lists), and its widgets_values the inner nodes' widget values one after another.
Subgraphs (the 2025 editor): a node whose type is the id of an entry of `definitions.subgraphs`, which
holds its own nodes and links; links from the node -10 are the subgraph's inputs, links into -20 its
outputs. Either way an inner node becomes `INSTANCE:INNER`, ComfyUI's own execution id for it, and the
instance's mode (muted, bypassed) passes to its inner nodes. Subgraphs may nest.
"""

from __future__ import annotations

import copy
from typing import Any

from flowrun.errors import UsageError

GROUP_PREFIXES = ("workflow/", "workflow>")
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
MAX_EXPANSIONS = 10_000  # instances expanded in one graph, nested ones included


def link_list(links: list) -> list[list]:
    """Links as [id, from node, from slot, to node, to slot, type], from the array or the object form."""
    out = []
    for link in links or []:
        if isinstance(link, dict):
            out.append([link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                        link.get("type")])
        else:
            out.append(list(link[:6]))
    return out


def expand(ui: dict[str, Any], registry: Any) -> dict[str, Any]:
    """A copy of `ui` with every group node and subgraph instance replaced by its inner nodes."""
    groups = (ui.get("extra") or {}).get("groupNodes") or {}
    subgraphs = {sg["id"]: sg for sg in (ui.get("definitions") or {}).get("subgraphs") or []}
    nodes = copy.deepcopy(ui.get("nodes") or [])
    links = link_list(ui.get("links"))
    for _ in range(MAX_EXPANSIONS):
        instance = next((n for n in nodes if _group_name(n, groups) or _subgraph_of(n, subgraphs)), None)
        if instance is None:
            return {**ui, "nodes": nodes, "links": links}
        name = _group_name(instance, groups)
        parts = _group_parts(groups[name], registry) if name else _subgraph_parts(subgraphs[instance["type"]])
        nodes, links = _splice(instance, nodes, links, *parts)
    raise UsageError(f"more than {MAX_EXPANSIONS} group node or subgraph instances to expand: "
                     "does a subgraph contain itself?")


def _subgraph_of(node: dict, subgraphs: dict) -> bool:
    return isinstance(node.get("type"), str) and node["type"] in subgraphs


def _group_name(node: dict, groups: dict) -> str | None:
    for prefix in GROUP_PREFIXES:
        if str(node.get("type", "")).startswith(prefix) and node["type"][len(prefix):] in groups:
            return node["type"][len(prefix):]
    return None


def _group_parts(data: dict, registry: Any):
    """(inner nodes, inner links, instance input slot -> [(inner id, slot)], instance output slot -> (inner
    id, slot), group widget name -> (inner id, field)) of a group node definition, laid out as ComfyUI's
    editor does: link inputs nothing inside feeds in node order, then inner widgets converted to inputs;
    widgets named by their field, `TITLE field` for a repeated name, `TITLE N field` after that."""
    inner = [dict(n, id=n.get("index", i)) for i, n in enumerate(data.get("nodes") or [])]
    inner_links = [[f"{i}", l[0], l[1], l[2], l[3], l[5] if len(l) > 5 else None]
                   for i, l in enumerate(data.get("links") or [])]
    fed = {(l[3], l[4]) for l in inner_links}
    read = {(l[1], l[2]) for l in inner_links}
    external = {(e[0], e[1]) for e in data.get("external") or []}
    seen: dict[str, int] = {}

    def name(node: dict, field: str) -> str:
        label = next((i.get("label") for i in node.get("inputs") or [] if i.get("name") == field), None) or field
        if label in seen:
            prefix = f"{node.get('title') or node.get('type')} "
            label = prefix + field
            if label in seen:
                label = f"{prefix}{seen[label]} {field}"
        seen[label] = seen.get(label, 1) + 1
        return label

    ins, converted, outs, widgets = [], [], [], {}
    for node in inner:
        nd = registry.get(node.get("type"))
        converted_names = {i["name"] for i in node.get("inputs") or [] if "widget" in i}
        for field in (nd.params.model_fields if nd is not None else ()):
            if field not in converted_names:
                widgets[name(node, field)] = (node["id"], field)
        for slot, inp in enumerate(node.get("inputs") or []):
            if (node["id"], slot) in fed:
                continue
            if "widget" in inp:
                converted.append((node, slot))
            else:
                name(node, inp.get("name", ""))
                ins.append([(node["id"], slot)])
        for slot, _ in enumerate(node.get("outputs") or []):
            if (node["id"], slot) not in read or (node["id"], slot) in external:
                outs.append((node["id"], slot))
    for node, slot in converted:
        name(node, node["inputs"][slot].get("name", ""))
        ins.append([(node["id"], slot)])
    return inner, inner_links, ins, outs, widgets


def _subgraph_parts(data: dict):
    """The same four parts for a subgraph definition: its inputs and outputs are links from node -10 and
    into node -20, by slot."""
    inner = copy.deepcopy(data.get("nodes") or [])
    all_links = link_list(data.get("links"))
    inner_links = [l for l in all_links if l[1] != SUBGRAPH_INPUT and l[3] != SUBGRAPH_OUTPUT]
    ins = [[(l[3], l[4]) for l in all_links if l[1] == SUBGRAPH_INPUT and l[2] == slot]
           for slot in range(len(data.get("inputs") or []))]
    outs = []
    for slot in range(len(data.get("outputs") or [])):
        feeding = [(l[1], l[2]) for l in all_links if l[3] == SUBGRAPH_OUTPUT and l[4] == slot]
        outs.append(feeding[0] if feeding else None)
    return inner, inner_links, ins, outs, {}


def _splice(instance: dict, nodes: list, links: list, inner: list, inner_links: list, ins: list, outs: list,
            widgets: dict):
    """Replace `instance` in (nodes, links) by its inner nodes, rewiring the links that crossed its border."""
    iid = instance["id"]
    new_id = {n["id"]: f"{iid}:{n['id']}" for n in inner}
    mode = instance.get("mode", 0)
    grouped = any(str(instance.get("type", "")).startswith(p) for p in GROUP_PREFIXES)
    values = list(instance.get("widgets_values") or [])
    counts = [len(n.get("widgets_values") or []) for n in inner]
    spread = grouped and bool(values) and len(values) == sum(counts)
    added = []
    for n in inner:
        n["id"] = new_id[n["id"]]
        n["inputs"] = [dict(i, link=None) for i in n.get("inputs") or []]
        if mode:
            n["mode"] = mode
        if spread:
            k = len(n.get("widgets_values") or [])
            n["widgets_values"], values = values[:k], values[k:]
    by_id = {n["id"]: n for n in inner}
    for l in inner_links:
        lid = f"{iid}:{l[0]}"
        added.append([lid, new_id.get(l[1], l[1]), l[2], new_id.get(l[3], l[3]), l[4], l[5]])
        target = by_id.get(new_id.get(l[3]))
        if target is not None and l[4] < len(target["inputs"]):
            target["inputs"][l[4]]["link"] = lid
    kept = []
    slots = instance.get("inputs") or []
    for l in links:
        if l[3] == iid:  # into the instance: on to every inner input the slot feeds
            inp = slots[l[4]] if l[4] < len(slots) else {}
            if l[4] < len(ins):
                targets = ins[l[4]]
            elif "widget" in inp and inp["widget"].get("name") in widgets:  # a group widget made an input
                targets = [widgets[inp["widget"]["name"]]]
            else:
                raise UsageError(f"input {l[4]} ('{inp.get('name', '')}') of node {iid} ({instance.get('type')}) "
                                 "leads to no inner node")
            for node_id, slot in targets:
                target = by_id[new_id.get(node_id, node_id)]
                lid = f"{l[0]}>{target['id']}:{slot}"
                if isinstance(slot, str):  # a widget fed from outside
                    target["inputs"].append({"name": slot, "type": l[5], "link": lid, "widget": {"name": slot}})
                    slot = len(target["inputs"]) - 1
                else:
                    target["inputs"][slot]["link"] = lid
                added.append([lid, l[1], l[2], target["id"], slot, l[5]])
            continue
        if l[1] == iid:  # out of the instance: from the inner output behind the slot
            origin = outs[l[2]] if l[2] < len(outs) else None
            if origin is None:
                continue
            l = [l[0], new_id.get(origin[0], origin[0]), origin[1], l[3], l[4], l[5]]
        kept.append(l)
    nodes = [n for n in nodes if n is not instance] + inner
    return nodes, kept + added
