"""Export to ComfyUI's API format ("prompt"): one graph per sweep cell, for `flowrun export`.

The mapping of one resolved cell is flowrun.graph.comfy_prompt's (output provenance uses it too); this
module picks the cells and the nodes that lead to an output node.
"""

from __future__ import annotations

from typing import Any

from flowrun.graph.comfy_prompt import CORE_NODES, api_prompt

# flowrun's own nodes with no ComfyUI core counterpart: what the person exporting can do instead
NEAREST = {
    "KSamplerVariation": "ComfyUI core has no variation seed; at variation_strength 0 it renders as KSampler with "
                         "the same seed, so export that, or keep the variation in flowrun",
    "RandomNoiseVariation": "ComfyUI core has no variation seed; at variation_strength 0 it renders as RandomNoise "
                            "with the same noise_seed, so export that, or keep the variation in flowrun",
    "LatentSlerp": "ComfyUI core has no spherical interpolation; LatentInterpolate (same inputs and ratio) blends "
                   "per pixel instead, and gives other latents between the ends",
}


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
            hints = "".join(f"; {name}: {NEAREST[name]}" for name in missing if name in NEAREST)
            raise ValueError(f"no ComfyUI counterpart for node type(s): {', '.join(missing)}{hints}")
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
