"""The node contract: a node is declared once, by its function's signature; it reaches the world only
through its run context, which a test builds from fakes; LATENT and CONDITIONING are typed values."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image
from pydantic import Field

from flowrun.execute.context import DevicePolicy, ModelPool, NodeFiles, Outputs, RunContext
from flowrun.files import INPUT
from flowrun.nodes import ports
from flowrun.nodes.registry import DeclarationError, NodeParams, default_registry, node
from flowrun.values import CondEntry, Conditioning, Latent


class SizeParams(NodeParams):
    size: int = Field(8, ge=1)
    seed: int = 0
    name: str = "x"


# --- declared once ---------------------------------------------------------------------------------

def test_inputs_fields_and_batching_come_from_the_signature():
    reg = default_registry(builtin_only=True)
    ks = reg.get("KSampler")
    assert {k: (i.type, i.optional) for k, i in ks.inputs.items()} == {
        "model": ("MODEL", False), "positive": ("CONDITIONING", False), "negative": ("CONDITIONING", False),
        "latent_image": ("LATENT", False)}
    assert ks.params.__name__ == "KSamplerParams" and ks.batch_fields == ("seed", "cfg")
    assert dict(reg.get("LoadImage").files) == {"image": INPUT}
    assert dict(reg.get("CheckpointLoaderSimple").files) == {"ckpt_name": "checkpoints"}

    @node("Opt", outputs={"out": ports.LATENT})
    def opt(p: SizeParams, ctx, *, latent: Latent, mask: ports.Mask | None = None) -> Latent:
        return latent

    assert opt.inputs["latent"].type == "LATENT" and not opt.inputs["latent"].optional
    assert opt.inputs["mask"].type == "MASK" and opt.inputs["mask"].optional


@pytest.mark.parametrize("make, message", [
    (lambda: node("Broken", outputs={"v": ports.INT})(lambda p, ctx: 1), "must be annotated with a NodeParams class"),
    (lambda: _declare("def f(p: SizeParams, ctx, *, size: int) -> int: ..."),
     "'size' is both an input and a field of SizeParams"),
    (lambda: _declare("def f(p: SizeParams, ctx, *, text) -> int: ..."), "input 'text' has no annotation"),
    (lambda: _declare("def f(p: SizeParams, ctx, *, text: list) -> int: ..."), "input 'text': <class 'list'> is not a port type"),
    (lambda: _declare("def f(p: SizeParams, ctx, *, text: str = 'x') -> int: ..."), "optional input 'text' must default to None"),
    (lambda: _declare("def f(p: SizeParams, ctx, *, latent: Latent) -> Conditioning: ..."),
     "returns CONDITIONING but its output 'v' is declared INT"),
    (lambda: _declare("def f(p: SizeParams, ctx) -> int: ...", batch=("seed",)), "takes list[SizeParams]"),
    (lambda: _declare("def f(p: list[SizeParams], ctx) -> int: ..."), "no batch fields are declared"),
    (lambda: _declare("def f(p: list[SizeParams], ctx) -> list[int]: ...", batch=("cfg",)),
     "batch field 'cfg' is not a field of SizeParams"),
    (lambda: _declare("def f(p: SizeParams, ctx) -> int: ...", files={"path": INPUT}),
     "files names 'path', which is not a literal field"),
    (lambda: _declare("def f(p: SizeParams, ctx, **more) -> int: ..."), "**more is not allowed"),
    (lambda: _declare("def f(p: SizeParams, ctx, extra) -> int: ..."), "two positional parameters"),
])
def test_a_declaration_that_contradicts_itself_fails_at_import_naming_the_node(make, message):
    with pytest.raises(DeclarationError, match="node Broken") as info:
        make()
    assert message in str(info.value)


def _declare(source: str, **options):
    scope = {"SizeParams": SizeParams, "Latent": Latent, "Conditioning": Conditioning, "ports": ports}
    exec(source, scope)
    return node("Broken", outputs={"v": ports.INT}, **options)(scope["f"])


def test_a_batching_node_is_one_function_in_list_form():
    calls = []

    @node("Twice", outputs={"v": ports.INT}, batch=("seed",))
    def twice(ps: list[SizeParams], ctx, *, x: int) -> list[int]:
        calls.append(len(ps))
        return [x * 2 + p.seed for p in ps]

    assert twice(SizeParams(seed=1), RunContext(), x=5) == 11  # one cell: a list of one
    assert twice.call_batch([SizeParams(seed=1), SizeParams(seed=2)], RunContext(), x=5) == [11, 12]
    assert calls == [1, 2]

    @node("Short", outputs={"v": ports.INT}, batch=("seed",))
    def short(ps: list[SizeParams], ctx) -> list[int]:
        return [0]

    with pytest.raises(ValueError, match="returned 1 results for 2 cells"):
        short.call_batch([SizeParams(), SizeParams(seed=1)], RunContext())


# --- the run context is the only door, and fakes can stand behind it -----------------------------------

class FakeLookup:
    """Stands for flowrun.files.FileLookup: names lead wherever the test says."""

    allow_pickle = False

    def __init__(self, paths):
        self.paths = paths

    def path(self, kind, name):
        return self.paths[(kind, name)]


def test_a_real_node_runs_on_a_context_built_from_fakes(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[:, :3, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "anything.png")
    reg = default_registry(builtin_only=True)
    ctx = RunContext(files=NodeFiles(FakeLookup({(INPUT, "pic.png"): tmp_path / "anything.png"}), {"image": "f"}))
    params = reg.get("LoadImage").params(image="pic.png")
    out = reg.get("LoadImage")(params, ctx)
    assert out["image"].shape == (1, 4, 6, 3) and out["image"][0, 0, 0, 1] == 1.0
    assert out["mask"][0, 0, 0] == 0.0 and out["mask"][0, 0, 5] == 1.0

    save = reg.get("SaveImage")
    ctx = RunContext(outputs=Outputs(suffix="_b", provenance={"flowrun": "test", "resolved": "version: 1\n"}))
    save(save.params(filename_prefix="shot"), ctx, images=out["image"])
    assert list(ctx.outputs.saved) == ["shot_b.png"]
    with Image.open(__import__("io").BytesIO(ctx.outputs.saved["shot_b.png"])) as im:
        assert im.info["flowrun_workflow"] == "version: 1\n"


def test_every_door_of_the_context():
    pool = ModelPool()
    cancel = threading.Event()
    steps = []
    ctx = RunContext(device=DevicePolicy("cpu"), models=pool, progress=lambda s, n: steps.append((s, n)),
                     cancel=cancel, files=NodeFiles(None, {"ckpt_name": "abc"}))
    assert ctx.device.device == "cpu" and ctx.device.dtype == "float32"
    assert ctx.files.fingerprint("ckpt_name") == "abc" and not ctx.files.allow_pickle
    with pytest.raises(FileNotFoundError, match="no files are available"):
        ctx.files.path("checkpoints", "x")
    ctx.progress(1, 3)
    cancel.set()
    with pytest.raises(KeyboardInterrupt):
        ctx.progress(2, 3)
    assert steps == [(1, 3), (2, 3)]
    noise = ctx.noise([7, 8])
    assert noise.seeds == [7, 8]
    with pytest.raises(ValueError, match="written twice"):
        ctx.outputs.save("a.png", b"1")
        ctx.outputs.save("a.png", b"2")
    with pytest.raises(ValueError, match="not allowed"):
        ctx.outputs.save("../a.png", b"1")


def test_the_model_pool_shares_what_is_alive_and_never_holds_a_model_itself():
    class Model:
        pass

    pool = ModelPool()
    first = pool.load(("ckpt", "sha", "cpu"), lambda: (Model(), Model()))
    again = pool.load(("ckpt", "sha", "cpu"), lambda: (Model(), Model()))
    assert again[0] is first[0] and pool.loads == 1
    other = pool.load(("ckpt", "sha", "cuda"), lambda: (Model(), Model()))
    assert other[0] is not first[0] and pool.loads == 2
    del first, again
    import gc

    gc.collect()
    pool.load(("ckpt", "sha", "cpu"), lambda: (Model(), Model()))
    assert pool.loads == 3  # released, so built anew


def test_nodes_touch_no_side_door():
    """No node module reaches for the task, FileEnv or the runner: only what the context offers."""
    from pathlib import Path

    import flowrun.nodes

    folder = Path(flowrun.nodes.__file__).parent
    for module in folder.glob("*.py"):
        text = module.read_text()
        for door in ("ctx.task", "FileEnv", "getattr(env", "flowrun.execute.runner", "ctx._"):
            assert door not in text, f"{module.name} uses {door}"


# --- typed values -------------------------------------------------------------------------------------

def test_latent_and_conditioning_survive_the_disk_cache_with_every_field():
    import torch

    from flowrun.cache import codecs

    latent = Latent(torch.arange(8.0).view(1, 2, 2, 2), noise_mask=torch.ones(1, 1, 2, 2), batch_index=(3,))
    back = codecs.for_port(ports.LATENT).decode(codecs.for_port(ports.LATENT).encode(latent))
    assert isinstance(back, Latent) and back.batch_index == (3,)
    assert torch.equal(back.samples, latent.samples) and torch.equal(back.noise_mask, latent.noise_mask)

    cond = Conditioning([CondEntry(torch.ones(1, 3, 4), pooled_output=torch.zeros(1, 4), area=(8, 8, 0, 8),
                                   strength=0.5, mask=torch.ones(1, 2, 2), timestep_range=(0.0, 0.5),
                                   extra={"width": 64}),
                         CondEntry(torch.zeros(1, 3, 4))])
    back = codecs.for_port(ports.CONDITIONING).decode(codecs.for_port(ports.CONDITIONING).encode(cond))
    assert isinstance(back, Conditioning) and len(back) == 2
    first = back[0]
    assert first.area == (8, 8, 0, 8) and first.strength == 0.5 and first.timestep_range == (0.0, 0.5)
    assert first.extra == {"width": 64} and torch.equal(first.mask, torch.ones(1, 2, 2))
    assert back[1].pooled_output is None and back[1].area is None
    assert isinstance(back + back, Conditioning) and len(back + back) == 4


# --- optional dependencies ---------------------------------------------------------------------------

def test_a_node_that_needs_a_missing_extra_is_refused_at_its_type_line(tmp_path):
    """A node declares the optional dependencies it needs; a workflow using it where the module is missing
    fails validation at the node's `type:` line with the pip command, and nothing else is reported."""
    from flowrun import pipeline
    from flowrun.errors import WorkflowInvalid
    from flowrun.nodes.registry import Registry

    @node("NeedsExtra", output=True, extras={"fancy": "flowrun_no_such_module_xyz"})
    def needs(p: SizeParams, ctx) -> None:
        raise AssertionError("never runs")

    @node("HasExtra", outputs={"out": ports.LATENT}, extras={"base": "json"})
    def has(p: SizeParams, ctx) -> Latent:
        raise AssertionError("never runs")

    reg = Registry({"NeedsExtra": needs, "HasExtra": has})
    assert needs.missing_extras() == [("fancy", "flowrun_no_such_module_xyz")] and has.missing_extras() == []
    wf = tmp_path / "w.yaml"
    wf.write_text("version: 1\nnodes:\n  ok:\n    type: HasExtra\n  a:\n    type: NeedsExtra\n    with: {size: 2}\n")
    with pytest.raises(WorkflowInvalid) as err:
        pipeline.load(wf, reg=reg)
    [problem] = err.value.problems
    assert (problem.kind, problem.node, problem.field, problem.location.line) == ("missing-extra", "a", "type", 6)
    assert problem.message == "NeedsExtra needs flowrun_no_such_module_xyz, which is not installed"
    assert problem.hint == "pip install 'flowrun[fancy]'"
