"""Node declarations and the registry that finds them.

A node is a plain function wrapped by `@node`, and its signature is its declaration: the literals are a
pydantic `NodeParams` class (checked at load time), the links are keyword-only parameters typed with port
annotations, the outputs are named in the decorator; the two are checked against each other when the
module is imported. The declaration imports no heavy library; the function body does, when it runs. The registry is built explicitly from a list of modules (the
built-in families, then plugins) rather than by modules mutating a global at import time.
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Callable, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from flowrun.nodes import ports

BUILTIN_MODULES = (
    "flowrun.nodes.primitives",
    "flowrun.nodes.image",
    "flowrun.nodes.image_ops",
    "flowrun.nodes.animation",
    "flowrun.nodes.mask",
    "flowrun.nodes.loaders",
    "flowrun.nodes.model_loaders",
    "flowrun.nodes.conditioning",
    "flowrun.nodes.clip_vision",
    "flowrun.nodes.gligen",
    "flowrun.nodes.latent",
    "flowrun.nodes.latent_ops",
    "flowrun.nodes.latent_moves",
    "flowrun.nodes.sampling",
    "flowrun.nodes.model_patches",
    "flowrun.nodes.model_merging",
    "flowrun.nodes.inpaint",
    "flowrun.nodes.custom_sampling",
    "flowrun.nodes.clip_judge",
    "flowrun.nodes.flow_models",
    "flowrun.nodes.flux",
    "flowrun.nodes.sd3",
    "flowrun.nodes.upscale_models",
    "flowrun.nodes.controlnet",
)
PLUGIN_ENV = "FLOWRUN_PLUGINS"
ENTRY_POINT_GROUP = "flowrun.nodes"


class NodeParams(BaseModel):
    """Base of every node's literal fields (`with:`). Unknown fields are errors, and so is a boolean
    given for a number (pydantic would read `steps: true` as 1)."""

    # defer_build: a node's validator is built when a workflow first uses it, not when its module is
    # imported (with a hundred node types, building them all was most of `flowrun validate`'s time)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kind = ports.of_annotation(cls.model_fields[info.field_name].annotation)
            if kind in (ports.INT, ports.FLOAT):
                raise ValueError("expected " + ("an integer" if kind == ports.INT else "a number"))
        return value


class NoParams(NodeParams):
    """For nodes without literal fields."""


@dataclass(frozen=True)
class Input:
    """A linked input (`in:`): its port type, and whether the node runs without it."""

    type: str
    optional: bool = False
    description: str = ""


class DeclarationError(TypeError):
    """A node's declaration contradicts itself (raised when its module is imported, naming the node)."""


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
    # literal fields that name files the node reads: field -> where ("checkpoints", "loras", ... on the
    # model search path, or files.INPUT beside the workflow); their contents enter the cache key
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # cells that differ only in these fields may run as one call; the function then takes and returns lists
    batch_fields: tuple[str, ...] = ()
    preview: bool = False  # an output node whose files are previews: under previews/, never cached
    # a scoring node: its FLOAT output `score` is recorded per cell in run.json under this metric's name
    # (sweeps show it on the contact sheet, `flowrun rank` sorts by it); the graph runs it like an output
    metric: str = ""
    # optional dependencies: extra name in pyproject -> the module it installs (a workflow using the node
    # is refused at validation where the module is missing, naming the pip command)
    extras: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def missing_extras(self) -> list[tuple[str, str]]:
        """(extra, module) of each optional dependency that is not installed; find_spec looks for the
        module without importing it, so validation stays light."""
        import importlib.util

        return [(extra, module) for extra, module in self.extras.items() if importlib.util.find_spec(module) is None]

    @property
    def batch(self) -> bool:
        return bool(self.batch_fields)

    @property
    def sink(self) -> bool:
        """Whether the graph runs this node for its own sake: it writes files, or records a score."""
        return self.output or bool(self.metric)

    def widget_type(self, name: str) -> str | None:
        """The port type of literal field `name` when a link feeds it, or None if there is no such field."""
        info = self.params.model_fields.get(name)
        return None if info is None else ports.of_annotation(info.annotation)

    def accepts(self, name: str) -> bool:
        return name in self.inputs or name in self.params.model_fields

    def __call__(self, params: NodeParams, ctx: Any, **inputs: Any) -> Any:
        """Run for one cell (a batching node's list form, called with a list of one)."""
        if self.batch_fields:
            return self.fn([params], ctx, **inputs)[0]
        return self.fn(params, ctx, **inputs)

    def call_batch(self, params: list[NodeParams], ctx: Any, **inputs: Any) -> list:
        """Run for several cells that differ only in `batch_fields`: one result per cell, in order."""
        if not self.batch_fields:
            raise TypeError(f"{self.type_name} does not batch")
        results = list(self.fn(list(params), ctx, **inputs))
        if len(results) != len(params):
            raise ValueError(f"{self.type_name} returned {len(results)} results for {len(params)} cells")
        return results


def node(type_name: str, *, outputs: Mapping[str, str] | None = None, version: int = 1, output: bool = False,
         preview: bool = False, metric: str = "",
         category: str = "", files: Mapping[str, str] | None = None,
         batch: tuple[str, ...] = (), extras: Mapping[str, str] | None = None) -> Callable[[Callable], NodeDef]:
    """Declare a node from its function, which is the one place its interface is written:

        @node("KSampler", outputs={"latent": ports.LATENT}, batch=("seed", "cfg"))
        def ksampler(ps: list[KSamplerParams], ctx, *, model: Model, positive: Conditioning, ...) -> list[Latent]:

    The first parameter's annotation is the `NodeParams` class of its literal fields (`list[...]` of it
    for a node that batches cells differing only in the `batch` fields); keyword-only parameters are its
    linked inputs, their annotations the port types, a default of None making one optional. The function
    returns its single output, or a dict of outputs by name. `extras` names the optional dependencies it
    needs ({"upscale": "spandrel"}: pip install 'flowrun[upscale]' installs spandrel). Contradictions fail
    here, naming the node."""

    def wrap(fn: Callable) -> NodeDef:
        params, inputs = _signature(type_name, fn, tuple(batch))
        outs = dict(outputs or {})
        for name, kind in outs.items():
            if kind not in ports.ALL and kind != ports.ANY:
                raise DeclarationError(f"node {type_name}: output '{name}' has unknown port type {kind!r}")
        for name in files or {}:
            if name not in params.model_fields:
                raise DeclarationError(f"node {type_name}: files names '{name}', which is not a literal field")
        if output and outs:
            raise DeclarationError(f"node {type_name}: an output node writes files and has no outputs")
        if preview and not output:
            raise DeclarationError(f"node {type_name}: a preview node is an output node (output=True)")
        if metric and outs.get("score") != ports.FLOAT:
            raise DeclarationError(f"node {type_name}: a scoring node (metric={metric!r}) has a FLOAT output 'score'")
        _check_return(type_name, fn, outs, tuple(batch))
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        return NodeDef(type_name, fn, params, MappingProxyType(inputs), MappingProxyType(outs), version, output,
                       category, doc, MappingProxyType(dict(files or {})), tuple(batch), preview, metric,
                       MappingProxyType(dict(extras or {})))

    return wrap


def _check_return(type_name: str, fn: Callable, outs: dict[str, str], batch: tuple[str, ...]) -> None:
    """A return annotation that names a port type must agree with the single declared output."""
    annotation = inspect.signature(fn).return_annotation
    if annotation is inspect.Signature.empty or len(outs) != 1:
        return
    try:
        value = eval(annotation, fn.__globals__) if isinstance(annotation, str) else annotation
    except Exception:
        return  # a typing-only name: nothing to check against
    if batch and typing.get_origin(value) is list:
        value = typing.get_args(value)[0]
    kind = ports.port_of(value)
    (name, declared), = outs.items()
    if kind is not None and not ports.compatible(kind, declared):
        raise DeclarationError(f"node {type_name}: returns {kind} but its output '{name}' is declared {declared}")


def _signature(type_name: str, fn: Callable, batch: tuple[str, ...]) -> tuple[type[NodeParams], dict[str, Input]]:
    """The params class and the inputs that `fn`'s signature declares, checked against each other."""
    def fail(message: str) -> DeclarationError:
        return DeclarationError(f"node {type_name} ({fn.__module__}.{fn.__qualname__}): {message}")

    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2:
        raise fail("takes (params, ctx, *, inputs...): two positional parameters, then keyword-only inputs")
    hints = {}
    for p in sig.parameters.values():  # each on its own: ctx's annotation may be a typing-only name
        if p is positional[1] or p.annotation is inspect.Parameter.empty:
            continue
        try:
            hints[p.name] = eval(p.annotation, fn.__globals__) if isinstance(p.annotation, str) else p.annotation
        except Exception as exc:  # a name the module does not define at run time
            raise fail(f"cannot read the annotation of '{p.name}': {exc}") from None
    annotation = hints.get(positional[0].name)
    is_list = typing.get_origin(annotation) is list
    params = typing.get_args(annotation)[0] if is_list else annotation
    if not (isinstance(params, type) and issubclass(params, NodeParams)):
        raise fail(f"its first parameter '{positional[0].name}' must be annotated with a NodeParams class"
                   + (" (in a list, for a batching node)" if batch else ""))
    if batch and not is_list:
        raise fail(f"it batches {list(batch)}, so its first parameter takes list[{params.__name__}]")
    if is_list and not batch:
        raise fail("its first parameter is a list, but no batch fields are declared")
    for name in batch:
        if name not in params.model_fields:
            raise fail(f"batch field '{name}' is not a field of {params.__name__}")
    inputs: dict[str, Input] = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind == p.VAR_POSITIONAL else "**"
            raise fail(f"{stars}{p.name} is not allowed: every input is named")
        if p.kind != p.KEYWORD_ONLY:
            continue
        if p.name not in hints:
            raise fail(f"input '{p.name}' has no annotation; annotate it with its port type (e.g. ports.Model)")
        kind = ports.port_of(hints[p.name])
        if kind is None:
            raise fail(f"input '{p.name}': {hints[p.name]!r} is not a port type")
        if p.name in params.model_fields:
            raise fail(f"'{p.name}' is both an input and a field of {params.__name__}")
        if p.default is not inspect.Parameter.empty and p.default is not None:
            raise fail(f"optional input '{p.name}' must default to None")
        inputs[p.name] = Input(kind, optional=p.default is None)
    return params, inputs


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
