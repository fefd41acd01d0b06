"""The JSON Schema of workflow files, for editors: generated from the pydantic models and the node registry.

Only what the YAML language server understands is used for structure: $ref/$defs, enum, const, oneOf,
description, default (plus plain type, properties and range keywords).
"""

from __future__ import annotations

import json
from typing import Any

from flowrun.nodes.registry import NodeDef, Registry
from flowrun.spec.model import LINK_PATTERN, NODE_ID_PATTERN, WorkflowSpec

SCHEMA_PATH = "schemas/workflow.schema.json"
TEMPLATE = {"type": "string", "pattern": r"\{[{%]", "description": "A jinja template, rendered per sweep cell."}


def _clean(node: Any) -> Any:
    """anyOf → oneOf (pydantic's unions here are exclusive), and drop pydantic's auto titles."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "title":
                continue
            out["oneOf" if k == "anyOf" else k] = _clean(v)
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def node_schema(nd: NodeDef) -> dict[str, Any]:
    params = nd.params.model_json_schema()
    fields = {}
    for name, prop in params.get("properties", {}).items():
        prop = _clean(prop)
        if prop.get("type") != "string":
            desc = prop.pop("description", None)
            default = prop.pop("default", None)
            prop = {"oneOf": [prop, {"$ref": "#/$defs/template"}]}
            if desc:
                prop["description"] = desc
            if default is not None:
                prop["default"] = default
        fields[name] = prop
    links = {name: {"type": "string", "pattern": LINK_PATTERN, "description": f"link to a {inp.type} output"}
             for name, inp in nd.inputs.items()}
    for name in params.get("properties", {}):
        links[name] = {"type": "string", "pattern": LINK_PATTERN,
                       "description": f"link feeding the literal field '{name}' ({nd.widget_type(name)})"}
    return {
        "type": "object",
        "description": nd.description or nd.type_name,
        "properties": {
            "type": {"const": nd.type_name},
            "in": {"type": "object", "properties": links, "additionalProperties": False},
            "with": {"type": "object", "properties": fields, "additionalProperties": False},
        },
        "required": ["type"],
        "additionalProperties": False,
    }


def workflow_schema(registry: Registry) -> dict[str, Any]:
    base = _clean(WorkflowSpec.model_json_schema())
    defs = base.pop("$defs", {})
    defs.pop("NodeSpec", None)
    defs["template"] = TEMPLATE
    for name in registry.names():
        defs[f"node.{name}"] = node_schema(registry.nodes[name])
    defs["Node"] = {"oneOf": [{"$ref": f"#/$defs/node.{n}"} for n in registry.names()]}
    base["properties"]["nodes"] = {
        "type": "object",
        "description": WorkflowSpec.model_fields["nodes"].description,
        "minProperties": 1,
        "propertyNames": {"pattern": NODE_ID_PATTERN},
        "additionalProperties": {"$ref": "#/$defs/Node"},
    }
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "flowrun workflow", **base}
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def schema_text(registry: Registry) -> str:
    return json.dumps(workflow_schema(registry), indent=2, ensure_ascii=False) + "\n"
