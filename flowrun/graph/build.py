"""Build one networkx graph from all cells: identical nodes merge, each node gets its cache key.

A node's key covers its type, version, literals, fingerprints and its upstream keys, so two cells share a
node exactly when everything that node depends on is the same (a 4-seed sweep loads its checkpoint once).
Only nodes that lead to an output node are kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import yaml

from flowrun import __version__
from flowrun.cache.code_identity import node_code_identity
from flowrun.cache.keys import digest, node_key
from flowrun.files import FileLookup
from flowrun.graph.files import fingerprints as file_fingerprints
from flowrun.graph.resolve import Resolved
from flowrun.graph.comfy_prompt import api_prompt_text
from flowrun.nodes.registry import NodeDef
from flowrun.spec.templating import referenced_names


@dataclass
class Task:
    """A unit of execution: one graph node, shared by every cell in `cells`."""

    key: str
    node_id: str
    node_def: NodeDef
    literals: dict[str, Any]
    inputs: dict[str, tuple[str, str]]  # input name -> (upstream task key, output name)
    cells: list[int] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    output_suffix: str = ""
    provenance: dict[str, Any] | None = None
    # the key without code identity and environment: what the workflow asks for, so that a regression
    # failure can tell a changed graph from a changed library or machine (regress/provenance.py)
    graph_key: str = ""

    @property
    def out_types(self) -> dict[str, str] | None:
        """Port types of the outputs; None for an output node, whose result is the files it writes."""
        return None if self.node_def.output else dict(self.node_def.outputs)

    @property
    def type_name(self) -> str:
        return self.node_def.type_name


@dataclass
class Graph:
    resolved: Resolved
    g: nx.DiGraph
    tasks: dict[str, Task]
    order: list[str]  # task keys, in execution order
    unused: list[str]  # node ids that lead to no output node

    def cell_labels(self, task: Task) -> list[str]:
        return [self.resolved.cells[i].label for i in task.cells]


def _resolved_yaml(resolved: Resolved, cell: int, node_ids: list[str]) -> str:
    """The cell's subgraph as a workflow file with every template already rendered."""
    spec = resolved.spec
    inst = resolved.instances[cell]
    nodes = {}
    for nid in node_ids:
        i = inst[nid]
        entry: dict[str, Any] = {"type": i.node_def.type_name}
        if i.links:
            entry["in"] = {k: f"{l.node}.{l.output}" for k, l in i.links.items()}
        if i.literals:
            entry["with"] = i.literals
        nodes[nid] = entry
    doc: dict[str, Any] = {"version": 1}
    if spec.name:
        doc["name"] = spec.name
    doc["nodes"] = nodes
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _upstream_tasks(tasks: dict[str, "Task"], keys: dict[str, str], node_ids: list[str]) -> list["Task"]:
    return [tasks[keys[n]] for n in node_ids if n in keys and keys[n] in tasks]


@functools.lru_cache(maxsize=8)
def environment_info(device: str | None, dtype: str | None = None) -> dict[str, Any]:
    """What, besides a node's inputs, decides its result: library versions, the machine, the device and
    the precision models compute in (a bfloat16 render never reuses a float32 result).
    Part of every cache key, so an upgrade of torch or diffusers renders anew instead of reusing results."""
    import platform
    from importlib import metadata

    versions = {}
    # every library whose numbers reach outputs: tokenizers splits prompts, torchsde draws SDE noise,
    # scipy integrates LMS coefficients and the beta schedule, spandrel builds the upscale models
    # (scikit-image only compares regression renders)
    for dist in ("torch", "diffusers", "transformers", "tokenizers", "numpy", "pillow", "safetensors", "torchsde",
                 "scipy", "spandrel"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    from flowrun.precision import resolved

    return {"versions": versions, "machine": platform.machine(), "device": device or "auto",
            "dtype": resolved(device, dtype)}


def build(resolved: Resolved, lookup: FileLookup, device: str | None = None, dtype: str | None = None) -> Graph:
    """The merged graph of every cell. Raises WorkflowInvalid listing every file that a needed node
    names and that is missing or outside its folder."""
    spec = resolved.spec
    environment = environment_info(device, dtype)
    env_digest = digest(environment)
    g = nx.DiGraph()
    tasks: dict[str, Task] = {}
    position = {nid: i for i, nid in enumerate(spec.nodes)}
    uses = {nid: referenced_names(ns.with_) for nid, ns in spec.nodes.items()}
    output_ids = [nid for nid in resolved.order if resolved.registry.get(spec.nodes[nid].type).sink]
    ancestors_of: dict[str, list[str]] = {}
    static = nx.DiGraph()
    static.add_nodes_from(resolved.order)
    for nid, inst in resolved.instances[0].items():
        static.add_edges_from((l.node, nid) for l in inst.links.values())
    for nid in output_ids:
        ups = nx.ancestors(static, nid) | {nid}
        ancestors_of[nid] = [n for n in resolved.order if n in ups]
    needed = set().union(*ancestors_of.values()) if ancestors_of else set()
    prints_by_cell = file_fingerprints(resolved, lookup, needed)

    for ci, cell in enumerate(resolved.cells):
        keys: dict[str, str] = {}
        graph_keys: dict[str, str] = {}
        for nid in resolved.order:
            if nid not in needed:
                continue
            inst = resolved.instances[ci][nid]
            nd = inst.node_def
            inputs = {name: (keys[l.node], l.output) for name, l in inst.links.items()}
            prints = prints_by_cell[ci].get(nid, {})
            provenance = None
            if nd.output:  # files carry their provenance (a score is recorded in run.json, which has its own)
                sub = ancestors_of[nid]
                used = set().union(*(uses[n] for n in sub))
                files = {f"{t.node_id}.{k}": v for t in _upstream_tasks(tasks, keys, sub)
                         for k, v in t.fingerprints.items()}
                provenance = {
                    "flowrun": __version__,
                    "workflow": spec.name or resolved.file,
                    "params": {k: v for k, v in cell.params.items() if k in used},
                    "files": files,
                    "versions": environment["versions"],
                    "resolved": _resolved_yaml(resolved, ci, sub),
                    "prompt": api_prompt_text(resolved.instances[ci], sub),
                }
            extra = {"env": env_digest}
            if provenance:
                extra["provenance"] = digest(provenance)
            key = node_key(node_type=nd.type_name, version=nd.version, code=node_code_identity(nd),
                           literals=inst.literals, inputs=inputs, fingerprints=prints, extra=extra)
            keys[nid] = key
            graph_keys[nid] = node_key(node_type=nd.type_name, version=nd.version, code="", literals=inst.literals,
                                       inputs={name: (graph_keys[l.node], l.output) for name, l in inst.links.items()},
                                       fingerprints=prints, extra={})
            task = tasks.get(key)
            if task is None:
                task = tasks[key] = Task(key, nid, nd, inst.literals, inputs, [], prints, provenance=provenance,
                                         graph_key=graph_keys[nid])
                g.add_node(key, task=task)
                for name, (up, out) in inputs.items():
                    g.add_edge(up, key, input=name, output=out)
            if ci not in task.cells:
                task.cells.append(ci)

    for old, task in _disambiguate_outputs(resolved, tasks):
        # file names are part of an output node's result, so its key covers the suffix (sinks: no edges out)
        task.key = digest([old, task.output_suffix])
        task.graph_key = digest([task.graph_key, task.output_suffix])
        del tasks[old]
        tasks[task.key] = task
        g = nx.relabel_nodes(g, {old: task.key}, copy=False)
    order = _cost_aware_order(g, tasks, position)
    unused = [nid for nid in spec.nodes if nid not in needed]
    return Graph(resolved, g, tasks, order, unused)


def _cost_aware_order(g: nx.DiGraph, tasks: dict[str, Task], position: dict[str, int]) -> list[str]:
    """Execution order: cells grouped by the models they use (the tasks with memory-only outputs among
    their ancestors: checkpoint, LoRA), so each model is loaded once and released when its last cell is
    done; within a group, cells in sweep order and nodes in file order."""
    from flowrun.nodes.ports import MEMORY_ONLY

    model_tasks = {k for k, t in tasks.items()
                   if t.out_types and any(v in MEMORY_ONLY for v in t.out_types.values())}
    group_of: dict[str, tuple] = {}
    for k in nx.topological_sort(g):
        ups = [u for u in g.predecessors(k)]
        group = set().union(*(group_of[u] for u in ups)) if ups else set()
        if k in model_tasks:
            group = group | {k}
        group_of[k] = frozenset(group)
    first_cell: dict[frozenset, int] = {}
    for k, t in tasks.items():
        grp = group_of[k]
        first_cell[grp] = min(first_cell.get(grp, t.cells[0]), t.cells[0])

    def rank(k: str) -> tuple:
        t = tasks[k]
        return (first_cell[group_of[k]], t.cells[0], position[t.node_id])

    return list(nx.lexicographical_topological_sort(g, key=rank))


def _disambiguate_outputs(resolved: Resolved, tasks: dict[str, Task]) -> list[tuple[str, Task]]:
    """Output nodes that would write the same file names (same type and literals, different content)
    get a suffix: the node id when several nodes collide, the first cell's label when cells do."""
    changed: list[tuple[str, Task]] = []
    groups: dict[str, list[Task]] = {}
    for task in tasks.values():
        if task.node_def.output:
            groups.setdefault(digest([task.type_name, task.literals]), []).append(task)
    for group in groups.values():
        if len(group) < 2:
            continue
        several_ids = len({t.node_id for t in group}) > 1
        for task in group:
            same_id = sum(1 for t in group if t.node_id == task.node_id) > 1
            suffix = f"_{task.node_id}" if several_ids else ""
            if same_id:
                suffix += f"_{resolved.cells[task.cells[0]].label}"
            task.output_suffix = suffix
            changed.append((task.key, task))
    return changed
