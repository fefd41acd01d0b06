"""Node declarations and the registry that finds them.

A node is a plain function wrapped by `@node`: its literals are a pydantic `NodeParams` class (checked at
load time), its links are typed `Input`s, its outputs are named. The declaration imports no heavy library;
the function body does, when it runs. The registry is built explicitly from a list of modules (the
built-in families, then plugins) rather than by modules mutating a global at import time.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Iterable, Mapping

from pydantic import BaseModel, ConfigDict

from flowrun.nodes import ports

BUILTIN_MODULES = (
    "flowrun.nodes.primitives",
    "flowrun.nodes.image",
    "flowrun.nodes.loaders",
    "flowrun.nodes.conditioning",
    "flowrun.nodes.latent",
    "flowrun.nodes.sampling",
)
PLUGIN_ENV = "FLOWRUN_PLUGINS"
ENTRY_POINT_GROUP = "flowrun.nodes"


class NodeParams(BaseModel):
    """Base of every node's literal fields (`with:`). Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(NodeParams):
    """For nodes without literal fields."""


@dataclass(frozen=True)
class Input:
    """A linked input (`in:`): its port type, and whether the node runs without it."""

    type: str
    optional: bool = False
    description: str = ""


@dataclass(frozen=True)
class NodeDef:
    """Everything the light side needs to know about a node type, plus the function that runs it."""

    type_name: str
    fn: Callable[..., Any]
    params: type[NodeParams]
    inputs: Mapping[str, Input]
    outputs: Mapping[str, str]
    version: int = 1
    output: bool = False  # writes files into the run's output folder; the graph runs what leads to these
    category: str = ""
    description: str = ""
    fingerprint: Callable[[NodeParams, Any], dict] | None = None  # contents of files the node reads
    # cells that differ only in these fields may run as one call: batch(list of params, ctx, **inputs)
    batch: Callable[..., list] | None = None
    batch_fields: tuple[str, ...] = ()

    def widget_type(self, name: str) -> str | None:
        """The port type of literal field `name` when a link feeds it, or None if there is no such field."""
        info = self.params.model_fields.get(name)
        return None if info is None else ports.of_annotation(info.annotation)

    def accepts(self, name: str) -> bool:
        return name in self.inputs or name in self.params.model_fields

    def __call__(self, params: NodeParams, ctx: Any, **inputs: Any) -> Any:
        return self.fn(params, ctx, **inputs)


def node(type_name: str, *, outputs: Mapping[str, str] | None = None, inputs: Mapping[str, Input | str] | None = None,
         params: type[NodeParams] = NoParams, version: int = 1, output: bool = False, category: str = "",
         fingerprint: Callable[[NodeParams, Any], dict] | None = None, batch: Callable[..., list] | None = None,
         batch_fields: tuple[str, ...] = ()) -> Callable[[Callable], NodeDef]:
    """Declare a node. The function is called as fn(params, ctx, **inputs) and returns its single output,
    or a dict of outputs by name when it has several."""
    ins = {k: v if isinstance(v, Input) else Input(v) for k, v in (inputs or {}).items()}
    overlap = set(ins) & set(params.model_fields)
    if overlap:
        raise TypeError(f"{type_name}: {sorted(overlap)} declared both as input and as literal field")

    def wrap(fn: Callable) -> NodeDef:
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        return NodeDef(type_name, fn, params, MappingProxyType(ins), MappingProxyType(dict(outputs or {})),
                       version, output, category, doc, fingerprint, batch, tuple(batch_fields))

    return wrap


@dataclass
class Registry:
    """Node types by name."""

    nodes: dict[str, NodeDef] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def add_module(self, module: ModuleType) -> None:
        for value in vars(module).values():
            if isinstance(value, NodeDef):
                if value.type_name in self.nodes and self.nodes[value.type_name] is not value:
                    raise ValueError(f"node type '{value.type_name}' is defined twice: in "
                                     f"{self.origin[value.type_name]} and {module.__name__}")
                self.nodes[value.type_name] = value
                self.origin[value.type_name] = module.__name__

    def add_modules(self, names: Iterable[str]) -> None:
        for name in names:
            self.add_module(importlib.import_module(name))

    def get(self, type_name: str) -> NodeDef | None:
        return self.nodes.get(type_name)

    def __contains__(self, type_name: str) -> bool:
        return type_name in self.nodes

    def names(self) -> list[str]:
        return sorted(self.nodes)


def plugin_modules(extra: Iterable[str] = ()) -> list[str]:
    """Modules that add node types: `flowrun.nodes` entry points, $FLOWRUN_PLUGINS, then `extra`."""
    names: list[str] = []
    from importlib.metadata import entry_points

    names += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    names += list(extra)
    return list(dict.fromkeys(names))


def default_registry(plugins: Iterable[str] = (), *, builtin_only: bool = False) -> Registry:
    """The built-in node families plus any plugins."""
    reg = Registry()
    reg.add_modules(BUILTIN_MODULES)
    if not builtin_only:
        reg.add_modules(plugin_modules(plugins))
    return reg
