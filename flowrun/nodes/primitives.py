"""Primitive nodes: one literal value as an output, to feed the same value into several nodes' fields."""

from __future__ import annotations

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.registry import NodeParams, node

INT_MAX = 2**63 - 1


class IntParams(NodeParams):
    value: int = Field(0, ge=-INT_MAX, le=INT_MAX)


class FloatParams(NodeParams):
    value: float = 0.0


class StringParams(NodeParams):
    value: str = ""


class BooleanParams(NodeParams):
    value: bool = False


@node("PrimitiveInt", outputs={"value": ports.INT}, category="utils/primitive")
def primitive_int(p: IntParams, ctx) -> int:
    """An integer, for linking into any INT field."""
    return p.value


@node("PrimitiveFloat", outputs={"value": ports.FLOAT}, category="utils/primitive")
def primitive_float(p: FloatParams, ctx) -> float:
    """A number, for linking into any FLOAT field."""
    return p.value


@node("PrimitiveString", outputs={"value": ports.STRING}, category="utils/primitive")
def primitive_string(p: StringParams, ctx) -> str:
    """A text, for linking into any STRING field."""
    return p.value


@node("PrimitiveBoolean", outputs={"value": ports.BOOLEAN}, category="utils/primitive")
def primitive_boolean(p: BooleanParams, ctx) -> bool:
    """A boolean, for linking into any BOOLEAN field."""
    return p.value
