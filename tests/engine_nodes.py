"""Small pure-Python nodes for testing the engine without any model (loaded as a flowrun plugin)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.image import SaveImageParams
from flowrun.nodes.registry import Input, NodeParams, node


class NumberParams(NodeParams):
    value: int = Field(0, ge=-1000, le=1000)


@node("Number", params=NumberParams, outputs={"value": ports.INT})
def number(p, ctx):
    return p.value


class ScaleParams(NodeParams):
    factor: float = Field(1.0, ge=0.0, le=100.0)
    mode: Literal["floor", "round", "exact"] = "exact"


@node("Scale", params=ScaleParams, inputs={"x": ports.INT}, outputs={"value": ports.FLOAT})
def scale(p, ctx, *, x):
    y = x * p.factor
    return float(int(y)) if p.mode == "floor" else float(round(y)) if p.mode == "round" else y


@node("Add", inputs={"a": ports.INT, "b": Input(ports.INT, optional=True)}, outputs={"sum": ports.INT})
def add(p, ctx, *, a, b=0):
    return a + b


class TextParams(NodeParams):
    text: str = ""
    seed: int = Field(0, ge=0, le=2**32)


@node("Text", params=TextParams, outputs={"text": ports.STRING})
def text(p, ctx):
    return f"{p.text}#{p.seed}"


@node("Split", inputs={"text": ports.STRING}, outputs={"head": ports.STRING, "tail": ports.STRING})
def split(p, ctx, *, text):
    head, _, tail = text.partition("#")
    return {"head": head, "tail": tail}


class JoinParams(NodeParams):
    sep: str = " "


@node("Join", params=JoinParams, inputs={"left": ports.STRING, "right": ports.STRING}, outputs={"text": ports.STRING})
def join(p, ctx, *, left, right):
    return f"{left}{p.sep}{right}"


class Model:
    """Stands for a loaded model: memory-only, never written to the disk cache."""

    def __init__(self, name):
        self.name = name


class LoaderParams(NodeParams):
    name: str


@node("FakeLoader", params=LoaderParams, outputs={"model": ports.MODEL})
def fake_loader(p, ctx):
    return Model(p.name)


@node("UseModel", inputs={"model": ports.MODEL, "text": ports.STRING}, outputs={"text": ports.STRING})
def use_model(p, ctx, *, model, text):
    return f"{model.name}:{text}"


class ReadParams(NodeParams):
    path: str


def _read_fingerprint(literals, env):
    return {"path": env.sha256(env.workflow_dir / literals["path"])}


@node("ReadText", params=ReadParams, outputs={"text": ports.STRING}, fingerprint=_read_fingerprint)
def read_text(p, ctx):
    return (ctx.files.workflow_dir / p.path).read_text()


class StepsParams(NodeParams):
    steps: int = Field(3, ge=1, le=100)
    log: str = ""  # if set, an absolute path: each finished step appends "TEXT STEP TIME"


@node("Steps", params=StepsParams, inputs={"text": ports.STRING}, outputs={"text": ports.STRING})
def steps(p, ctx, *, text):
    import os
    import time

    for i in range(p.steps):
        time.sleep(float(os.environ.get("FLOWRUN_TEST_SLOW", "0")))  # lets a test kill a run halfway
        if p.log:
            with open(p.log, "a") as fh:
                fh.write(f"{text} {i + 1} {time.time():.6f}\n")
        ctx.progress(i + 1, p.steps)
    return text


class FailParams(NodeParams):
    message: str = "it broke"
    kind: Literal["node", "bug", "memory"] = "node"
    when: bool = True  # fail only in the cells where this is true; pass the text through elsewhere


@node("Fail", params=FailParams, inputs={"text": ports.STRING}, outputs={"text": ports.STRING})
def fail(p, ctx, *, text):
    if not p.when:
        return text
    if p.kind == "node":
        raise NodeError(p.message)
    if p.kind == "memory":
        raise MemoryError(p.message)
    raise RuntimeError(p.message)


class WriteParams(SaveImageParams):  # the same path rules as SaveImage
    filename_prefix: str = "out"


@node("WriteText", params=WriteParams, inputs={"text": ports.STRING}, outputs={}, output=True)
def write_text(p, ctx, *, text):
    ctx.save(ctx.output_stem(p.filename_prefix) + ".txt", text.encode())


@node("WriteNumber", params=WriteParams, inputs={"value": ports.FLOAT}, outputs={}, output=True)
def write_number(p, ctx, *, value):
    ctx.save(ctx.output_stem(p.filename_prefix) + ".txt", repr(value).encode())


class EchoParams(NodeParams):
    n: int = 0
    max_batch: int = 100  # a batch larger than this fails, as a batch too big for the memory would


def _echo_batch(params, ctx, *, text):
    if len(params) > params[0].max_batch:
        raise MemoryError(f"a batch of {len(params)}")
    return [f"{text}#{p.n}" for p in params]


@node("Echo", params=EchoParams, inputs={"text": ports.STRING}, outputs={"text": ports.STRING},
      batch=_echo_batch, batch_fields=("n",))
def echo(p, ctx, *, text):
    return f"{text}#{p.n}"


class SlowParams(NodeParams):
    text: str
    seconds: float = 0.2
    log: str  # an absolute path: each computation appends "start/end PID TEXT" lines to it


@node("Slow", params=SlowParams, outputs={"text": ports.STRING})
def slow(p, ctx):
    import os
    import time

    def note(what: str) -> None:
        with open(p.log, "a") as fh:
            fh.write(f"{what} {os.getpid()} {p.text} {time.time():.6f}\n")

    note("start")
    time.sleep(p.seconds)
    note("end")
    return p.text.upper()
