"""ComfyUI's API format ("prompt"): {"id": {"class_type": ..., "inputs": {...}}}, links as [node_id, output_index].

flowrun's node and field names are ComfyUI's, so a resolved cell maps one to one, for the node types
listed in CORE_NODES (plugins' nodes may not exist in ComfyUI, and then no prompt is written).
"""

from __future__ import annotations

import json
from typing import Any

CORE_NODES = frozenset({
    "CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "CLIPSetLastLayer", "ConditioningCombine",
    "ConditioningConcat", "ConditioningSetArea", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy",
    "VAEEncode", "VAEDecode", "KSampler", "KSamplerAdvanced", "LoadImage", "ImageScale", "SaveImage",
    "EmptyImage", "ImageInvert", "ImageBlend", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
    "PrimitiveBoolean",
})


def api_prompt(instances: dict[str, Any], node_ids: list[str]) -> dict[str, Any] | None:
    """The API-format graph of `node_ids` (resolved instances of one cell), or None if a node has no
    ComfyUI counterpart."""
    prompt: dict[str, Any] = {}
    for nid in node_ids:
        inst = instances[nid]
        nd = inst.node_def
        if nd.type_name not in CORE_NODES:
            return None
        inputs: dict[str, Any] = dict(inst.literals)
        for name, link in inst.links.items():
            src = instances[link.node].node_def
            inputs[name] = [link.node, list(src.outputs).index(link.output)]
        prompt[nid] = {"class_type": nd.type_name, "inputs": inputs, "_meta": {"title": nid}}
    return prompt


def api_prompt_text(instances: dict[str, Any], node_ids: list[str]) -> str | None:
    prompt = api_prompt(instances, node_ids)
    return None if prompt is None else json.dumps(prompt, sort_keys=True)


def export_cells(resolved: Any, cell_label: str | None = None) -> dict[str, dict[str, Any]]:
    """ComfyUI API-format graphs of the workflow, one per cell (or only `cell_label`), keyed by cell label.
    Each holds the nodes that lead to an output node, as the PNGs' `prompt` chunk does. Raises ValueError
    for an unknown cell or a node ComfyUI does not have."""
    labels = [c.label for c in resolved.cells]
    if cell_label is not None and cell_label not in labels:
        raise ValueError(f"no cell '{cell_label}'; cells are: {', '.join(labels)}")
    needed = _needed(resolved)
    out = {}
    for i, cell in enumerate(resolved.cells):
        if cell_label is not None and cell.label != cell_label:
            continue
        prompt = api_prompt(resolved.instances[i], needed)
        if prompt is None:
            missing = sorted({resolved.instances[i][n].node_def.type_name for n in needed} - CORE_NODES)
            raise ValueError(f"no ComfyUI counterpart for node type(s): {', '.join(missing)}")
        out[cell.label] = prompt
    return out


def _needed(resolved: Any) -> list[str]:
    """Node ids, in order, that lead to an output node."""
    inst = resolved.instances[0]
    keep: set[str] = set()
    stack = [n for n in resolved.order if inst[n].node_def.output]
    while stack:
        n = stack.pop()
        if n not in keep:
            keep.add(n)
            stack += [link.node for link in inst[n].links.values()]
    return [n for n in resolved.order if n in keep]
