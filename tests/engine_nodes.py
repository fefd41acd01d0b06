"""Small pure-Python nodes for testing the engine without any model (loaded as a flowrun plugin)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.files import INPUT
from flowrun.nodes import ports
from flowrun.nodes.image import SaveImageParams
from flowrun.nodes.registry import NodeParams, NoParams, node


class NumberParams(NodeParams):
    value: int = Field(0, ge=-1000, le=1000)


@node("Number", outputs={"value": ports.INT})
def number(p: NumberParams, ctx) -> int:
    return p.value


class ScaleParams(NodeParams):
    factor: float = Field(1.0, ge=0.0, le=100.0)
    mode: Literal["floor", "round", "exact"] = "exact"


@node("Scale", outputs={"value": ports.FLOAT})
def scale(p: ScaleParams, ctx, *, x: int) -> float:
    y = x * p.factor
    return float(int(y)) if p.mode == "floor" else float(round(y)) if p.mode == "round" else y


@node("Add", outputs={"sum": ports.INT})
def add(p: NoParams, ctx, *, a: int, b: int | None = None) -> int:
    return a + (b or 0)


class TextParams(NodeParams):
    text: str = ""
    seed: int = Field(0, ge=0, le=2**32)


@node("Text", outputs={"text": ports.STRING})
def text(p: TextParams, ctx) -> str:
    return f"{p.text}#{p.seed}"


@node("Split", outputs={"head": ports.STRING, "tail": ports.STRING})
def split(p: NoParams, ctx, *, text: str) -> dict:
    head, _, tail = text.partition("#")
    return {"head": head, "tail": tail}


class JoinParams(NodeParams):
    sep: str = " "


@node("Join", outputs={"text": ports.STRING})
def join(p: JoinParams, ctx, *, left: str, right: str) -> str:
    return f"{left}{p.sep}{right}"


class Model:
    """Stands for a loaded model: memory-only, never written to the disk cache."""

    def __init__(self, name):
        self.name = name


class LoaderParams(NodeParams):
    name: str


@node("FakeLoader", outputs={"model": ports.MODEL})
def fake_loader(p: LoaderParams, ctx) -> ports.Model:
    return Model(p.name)


@node("UseModel", outputs={"text": ports.STRING})
def use_model(p: NoParams, ctx, *, model: ports.Model, text: str) -> str:
    return f"{model.name}:{text}"


class ReadParams(NodeParams):
    path: str


@node("ReadText", outputs={"text": ports.STRING}, files={"path": INPUT})
def read_text(p: ReadParams, ctx) -> str:
    return ctx.files.path(INPUT, p.path).read_text()


class ReadModelParams(NodeParams):
    lora_name: str


@node("ReadLoraText", outputs={"text": ports.STRING}, files={"lora_name": "loras"})
def read_lora_text(p: ReadModelParams, ctx) -> str:
    """A 'model' file's text (a stand-in for a LoRA, so file pinning is tested without torch)."""
    return ctx.files.path("loras", p.lora_name).read_text()


class StepsParams(NodeParams):
    steps: int = Field(3, ge=1, le=100)
    log: str = ""  # if set, an absolute path: each finished step appends "TEXT STEP TIME"


@node("Steps", outputs={"text": ports.STRING})
def steps(p: StepsParams, ctx, *, text: str) -> str:
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


@node("Fail", outputs={"text": ports.STRING})
def fail(p: FailParams, ctx, *, text: str) -> str:
    if not p.when:
        return text
    if p.kind == "node":
        raise NodeError(p.message)
    if p.kind == "memory":
        raise MemoryError(p.message)
    raise RuntimeError(p.message)


class WriteParams(SaveImageParams):  # the same path rules as SaveImage
    filename_prefix: str = "out"


@node("WriteText", output=True)
def write_text(p: WriteParams, ctx, *, text: str) -> None:
    ctx.outputs.save(ctx.outputs.stem(p.filename_prefix) + ".txt", text.encode())


@node("WriteNumber", output=True)
def write_number(p: WriteParams, ctx, *, value: float) -> None:
    ctx.outputs.save(ctx.outputs.stem(p.filename_prefix) + ".txt", repr(value).encode())


class EchoParams(NodeParams):
    n: int = 0
    max_batch: int = 100  # a batch larger than this fails, as a batch too big for the memory would


@node("Echo", outputs={"text": ports.STRING}, batch=("n",))
def echo(ps: list[EchoParams], ctx, *, text: str) -> list[str]:
    if len(ps) > ps[0].max_batch:
        raise MemoryError(f"a batch of {len(ps)}")
    return [f"{text}#{p.n}" for p in ps]


class SlowParams(NodeParams):
    text: str
    seconds: float = 0.2
    log: str  # an absolute path: each computation appends "start/end PID TEXT" lines to it


@node("Slow", outputs={"text": ports.STRING})
def slow(p: SlowParams, ctx) -> str:
    import os
    import time

    def note(what: str) -> None:
        with open(p.log, "a") as fh:
            fh.write(f"{what} {os.getpid()} {p.text} {time.time():.6f}\n")

    note("start")
    time.sleep(p.seconds)
    note("end")
    return p.text.upper()


class UnseededParams(NodeParams):
    size: int = Field(8, ge=1, le=64)


@node("UnseededNoiseImage", outputs={"image": ports.IMAGE})
def unseeded_noise_image(p: UnseededParams, ctx):
    """Random pixels from the OS on every call: nondeterminism on purpose, for the regression tests."""
    import numpy as np

    return np.random.default_rng().random((1, p.size, p.size, 3), dtype=np.float32)
