"""What a workflow author can write for a node type: its inputs, outputs, and `with:` fields with their
types, defaults, ranges and choices (for `flowrun nodes`)."""

from __future__ import annotations

from typing import Any

from flowrun.nodes.registry import NodeDef


def describe_node(nd: NodeDef) -> dict[str, Any]:
    """A node type as plain data: type, category, description, version, inputs, fields and outputs."""
    schema = nd.params.model_json_schema()
    required = set(schema.get("required", []))
    fields = {}
    for name, prop in schema.get("properties", {}).items():
        entry = {"type": nd.widget_type(name), "minimum": prop.get("minimum"), "maximum": prop.get("maximum")}
        if "enum" in prop:
            entry["enum"] = prop["enum"]
        if name not in required:
            entry["default"] = prop.get("default")
        if prop.get("description"):
            entry["description"] = prop["description"]
        fields[name] = entry
    return {
        "type": nd.type_name, "category": nd.category, "description": nd.description, "version": nd.version,
        "output_node": nd.output,
        **({"metric": nd.metric} if nd.metric else {}),  # a scoring node: its score is recorded per cell
        "inputs": {n: {"type": i.type, "optional": i.optional} for n, i in nd.inputs.items()},
        "fields": fields, "outputs": dict(nd.outputs),
    }
