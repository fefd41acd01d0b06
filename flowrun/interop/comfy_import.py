"""ComfyUI API-format graphs ({"3": {"class_type": "KSampler", "inputs": {...}}}, links as ["4", 0]) to
flowrun workflows: readable node ids from each node's type and role, literals under `with:`, links under
`in:`. Node types flowrun does not implement are reported together."""

from __future__ import annotations

import json
import re
import typing
from typing import Any

import yaml
from pydantic_core import PydanticUndefined

from flowrun.errors import UsageError

ROLE_NAMES = {
    "CheckpointLoaderSimple": "ckpt", "LoraLoader": "lora", "EmptyLatentImage": "latent", "KSampler": "sample",
    "KSamplerAdvanced": "sample", "VAEDecode": "decode", "VAEEncode": "encode", "SaveImage": "save",
    "LoadImage": "image", "LatentUpscale": "upscale", "LatentUpscaleBy": "upscale", "ImageScale": "scale",
    "CLIPSetLastLayer": "clip_skip", "ConditioningCombine": "combine", "ConditioningConcat": "concat",
    "ConditioningSetArea": "area", "SamplerCustom": "sample", "SamplerCustomAdvanced": "sample",
    "RandomNoise": "noise", "DisableNoise": "noise", "CFGGuider": "guider", "BasicGuider": "guider",
    "DualCFGGuider": "guider", "KSamplerSelect": "sampler", "BasicScheduler": "sigmas", "KarrasScheduler": "sigmas",
    "ExponentialScheduler": "sigmas", "PolyexponentialScheduler": "sigmas", "SDTurboScheduler": "sigmas",
    "SplitSigmas": "split", "SplitSigmasDenoise": "split", "FlipSigmas": "flip", "SetLatentNoiseMask": "mask",
    "CheckpointLoader": "ckpt", "UNETLoader": "unet", "VAELoader": "vae",
    "CLIPLoader": "clip", "DualCLIPLoader": "clip", "LoraLoaderModelOnly": "lora",
}


TEXT_ENCODERS = ("CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _ids(prompt: dict[str, Any]) -> dict[str, str]:
    """ComfyUI id -> readable flowrun id: `ckpt`, `positive`/`negative` for the prompts a sampler reads,
    `sample`, `decode`...; repeated roles get _2, _3 in ComfyUI id order."""
    role: dict[str, str] = {}
    for cid, node in prompt.items():
        if node.get("class_type") in ("KSampler", "KSamplerAdvanced", "SamplerCustom", "CFGGuider"):
            for side in ("positive", "negative"):
                link = node.get("inputs", {}).get(side)
                if isinstance(link, list) and prompt.get(str(link[0]), {}).get("class_type") in TEXT_ENCODERS:
                    role.setdefault(str(link[0]), side)
    names: dict[str, str] = {}
    used: dict[str, int] = {}
    for cid in sorted(prompt, key=lambda k: (len(k), k)):
        ctype = prompt[cid].get("class_type", "node")
        base = role.get(cid) or ROLE_NAMES.get(ctype) or _snake(ctype)
        used[base] = used.get(base, 0) + 1
        names[cid] = base if used[base] == 1 else f"{base}_{used[base]}"
    return names


def _dependency_order(prompt: dict[str, Any]) -> list[str]:
    """ComfyUI ids with every node after the nodes it reads (ties in ComfyUI id order)."""
    import graphlib

    order_key = {cid: i for i, cid in enumerate(sorted(prompt, key=lambda k: (len(k), k)))}
    deps = {cid: {str(v[0]) for v in n.get("inputs", {}).values()
                  if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt} for cid, n in prompt.items()}
    sorter = graphlib.TopologicalSorter(deps)
    sorter.prepare()
    out: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order_key.__getitem__)
        out += ready
        sorter.done(*ready)
    return out


def from_api(prompt: dict[str, Any], registry: Any, name: str | None = None) -> str:
    """YAML text of a flowrun workflow for an API-format graph. Raises UsageError listing unknown types."""
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) and "class_type" in v for v in prompt.values()):
        raise UsageError("not a ComfyUI API-format graph (expected {id: {class_type, inputs}})")
    unknown = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in registry})
    if unknown:
        raise UsageError("ComfyUI nodes flowrun does not implement: " + ", ".join(unknown))
    ids = _ids(prompt)
    nodes: dict[str, Any] = {}
    for cid in _dependency_order(prompt):
        node = prompt[cid]
        nd = registry.get(node["class_type"])
        entry: dict[str, Any] = {"type": node["class_type"]}
        links, literals = {}, {}
        for key, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                src = prompt[str(value[0])]
                outputs = list(registry.get(src["class_type"]).outputs)
                out = outputs[int(value[1])] if int(value[1]) < len(outputs) else outputs[0]
                links[key] = ids[str(value[0])] if len(outputs) == 1 else f"{ids[str(value[0])]}.{out}"
            elif key in nd.params.model_fields:
                literals[key] = value
        if links:
            entry["in"] = links
        if literals:
            entry["with"] = literals
        nodes[ids[cid]] = entry
    doc = {"version": 1}
    if name:
        doc["name"] = name
    doc["nodes"] = nodes
    return "# imported from a ComfyUI graph by `flowrun import`\n" + yaml.safe_dump(doc, sort_keys=False,
                                                                                      allow_unicode=True)


def load_graph(path, registry: Any = None) -> dict[str, Any]:
    """The API-format graph of a .json file (API or UI format) or of a PNG's text chunks."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            text = im.info.get("prompt") or im.info.get("workflow")
        if not text:
            raise UsageError(f"{path} carries no ComfyUI graph (no 'prompt' or 'workflow' text chunk)")
    else:
        text = path.read_text()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        return ui_to_api(data, registry)
    return data


CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}  # the seed widget's companion in the UI
MUTED, BYPASSED = 2, 4


def _is_control(value: Any, nd: Any, field: str, rest: list[str]) -> bool:
    """Whether `value`, after the integer widget `field`, is its control widget ("randomize"; a boolean
    in older editors) rather than the next field's value."""
    following = nd.widget_type(rest[0]) if rest else None
    if isinstance(value, bool):
        return following != "BOOLEAN"
    if value not in CONTROL_VALUES:
        return False
    if following != "STRING":
        return True
    annotation = nd.params.model_fields[rest[0]].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return value not in typing.get_args(annotation)
    return field in ("seed", "noise_seed")  # free text follows: only a seed is known to carry one


def ui_to_api(ui: dict[str, Any], registry: Any) -> dict[str, Any]:
    """ComfyUI's UI format (nodes, links, widgets_values) to its API format, as ComfyUI's frontend does:
    muted nodes are left out, bypassed nodes pass each input on to the output of the same type, Reroute
    nodes pass their input on, PrimitiveNode values become the literals of the widgets they feed, and
    widgets_values are matched to fields in order (skipping the control value that follows a seed), fields
    without a value keep the node's defaults, and group nodes and subgraphs are expanded first."""
    from flowrun.interop.comfy_subgraphs import expand

    ui = expand(ui, registry)
    nodes = {n["id"]: n for n in ui.get("nodes", [])}
    links = {l[0]: l for l in ui.get("links", [])}  # id -> [id, from node, from slot, to node, to slot, type]

    def source(link_id, want_type=None):
        """(node id, slot) that really feeds a link, through reroutes and bypassed nodes; or a literal."""
        link = links.get(link_id)
        if link is None:
            return None
        node = nodes.get(link[1])
        if node is None or node.get("mode") == MUTED:
            return None
        if node["type"] == "Reroute":
            ins = node.get("inputs") or []
            return source(ins[0].get("link"), link[5]) if ins else None
        if node.get("mode") == BYPASSED:
            ltype = link[5]
            for inp in node.get("inputs") or []:
                if inp.get("type") == ltype and inp.get("link") is not None:
                    return source(inp["link"], ltype)
            return None
        if node["type"] == "PrimitiveNode":
            return ("literal", (node.get("widgets_values") or [None])[0])
        return (str(node["id"]), link[2])

    prompt: dict[str, Any] = {}
    unknown = sorted({n["type"] for n in nodes.values() if n.get("mode") not in (MUTED, BYPASSED)
                      and n["type"] not in ("Reroute", "PrimitiveNode", "Note", "MarkdownNote")
                      and n["type"] not in registry})
    if unknown:
        raise UsageError("ComfyUI nodes flowrun does not implement: " + ", ".join(unknown))
    for nid, node in nodes.items():
        if node.get("mode") in (MUTED, BYPASSED) or node["type"] in ("Reroute", "PrimitiveNode", "Note", "MarkdownNote"):
            continue
        nd = registry.get(node["type"])
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        fields = list(nd.params.model_fields)
        i = 0
        for k, field in enumerate(fields):
            if i >= len(values):
                break
            inputs[field] = values[i]
            i += 1
            if i < len(values) and nd.widget_type(field) == "INT" and _is_control(values[i], nd, field, fields[k + 1:]):
                i += 1
        for field in (f for f in fields if f not in inputs):
            default = nd.params.model_fields[field].get_default(call_default_factory=True)
            if default is not PydanticUndefined:  # as ComfyUI, whose widgets start at their defaults
                inputs[field] = default
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            src = source(inp["link"])
            if src is None:
                inputs.pop(inp["name"], None)
                continue
            inputs[inp["name"]] = src[1] if src[0] == "literal" else [src[0], src[1]]
        prompt[str(nid)] = {"class_type": node["type"], "inputs": inputs}
    return prompt
