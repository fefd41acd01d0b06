"""Cache keys follow flowrun's code: the import closure of each node, and a run that re-executes exactly
what an edit to the Euler sampler can change."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap

from flowrun import __version__
from flowrun.cache import code_identity as ci
from flowrun.nodes.registry import default_registry

from conftest import ROOT, TESTS


def _module_of(type_name: str) -> str:
    return default_registry(builtin_only=True).get(type_name).fn.__module__


# --- the closure on the real package --------------------------------------------------------------------

def test_ksampler_depends_on_the_samplers_through_a_lazy_import():
    closure = ci.module_closure(_module_of("KSampler"))
    # flowrun.nodes.sampling imports flowrun.diffusion.ksampler only inside the node function
    assert {"flowrun.diffusion.ksampler", "flowrun.diffusion.samplers", "flowrun.diffusion.schedules",
            "flowrun.diffusion.unipc"} <= set(closure)
    assert {"flowrun", "flowrun.diffusion", "flowrun.nodes"} <= set(closure)  # the packages' __init__ files


def test_prompt_encoding_does_not_depend_on_the_samplers():
    assert _module_of("CLIPTextEncode") == "flowrun.nodes.conditioning"
    closure = set(ci.module_closure("flowrun.nodes.conditioning"))
    assert "flowrun.diffusion.clip" in closure
    assert not closure & {"flowrun.diffusion.samplers", "flowrun.diffusion.ksampler", "flowrun.nodes.sampling"}
    assert not {"flowrun.api", "flowrun.cli", "flowrun.graph.build"} & closure  # nodes do not reach back


def test_the_regex_finds_exactly_the_imports_ast_finds():
    """The fast scan is checked against Python's own parser on every module of the package."""
    for name in ci.package_modules():
        path = ci.module_path(name)
        found = set()
        for n in ast.walk(ast.parse(open(path, "rb").read())):
            if isinstance(n, ast.Import):
                candidates = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = ci._absolute("." * n.level + (n.module or ""), name, path.endswith("__init__.py"))
                candidates = [base] + [f"{base}.{a.name}" for a in n.names]
            else:
                continue
            found.update(c for c in candidates if ci.module_path(c))
        assert set(ci._direct_imports(name)) == found, name


def test_import_forms():
    source = textwrap.dedent("""
        import os, flowrun.diffusion.names as names
        from flowrun import __version__
        from flowrun.nodes import (ports,  # a comment
                                   registry)
        from flowrun.diffusion.vae import \\
            decode

        def lazy():
            from flowrun.diffusion.ksampler import ksample
            from . import schedules
            from .missing_module import nothing
        """).encode()
    assert ci.imports_in(source, "flowrun.diffusion.model") == {
        "flowrun.diffusion.names", "flowrun", "flowrun.nodes", "flowrun.nodes.ports", "flowrun.nodes.registry",
        "flowrun.diffusion.vae", "flowrun.diffusion.ksampler", "flowrun.diffusion", "flowrun.diffusion.schedules"}
    assert ci.imports_in(b"from .. import errors", "flowrun.nodes.sampling") == {"flowrun", "flowrun.errors"}
    assert ci.imports_in(b"from . import ports", "flowrun.nodes", is_package=True) == {"flowrun.nodes",
                                                                                      "flowrun.nodes.ports"}


def test_identity_covers_version_runtime_and_package_data():
    reg = default_registry()  # the engine's test nodes too (FLOWRUN_PLUGINS)
    ksampler, clip, plugin = (reg.get(t) for t in ("KSampler", "CLIPTextEncode", "Number"))
    ids = {ci.node_code_identity(n) for n in (ksampler, clip, plugin)}
    assert len(ids) == 3 and all(i.startswith(__version__ + ":") for i in ids)
    files = ci._hashes(ci.closure_of({"flowrun.nodes.conditioning", *ci.RUNTIME}))
    assert "flowrun/diffusion/clip_tokenizer/vocab.json" in files  # the tokenizer's vocabulary is code too
    assert "flowrun/execute/context.py" in files and "flowrun/cache/codecs.py" in files
    assert not any(f.startswith("flowrun/models/") for f in files)  # model files are fingerprinted instead


def test_identities_are_light_and_fast():
    """Computed without importing torch, for every node of the registry, in a few milliseconds."""
    script = textwrap.dedent("""
        import sys, time
        from flowrun.nodes.registry import default_registry
        from flowrun.cache.code_identity import node_code_identity
        nodes = list(default_registry().nodes.values())
        start = time.perf_counter()
        ids = [node_code_identity(n) for n in nodes]
        print(len(ids), time.perf_counter() - start, "torch" in sys.modules)
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    count, seconds, torch_loaded = out.stdout.split()
    assert int(count) > 30 and torch_loaded == "False"
    assert float(seconds) < 0.5, seconds  # a few ms; the bound only catches a regression to something slow


def test_a_ray_worker_with_other_code_is_refused():
    from flowrun.execute.ray_worker import _environment_mismatch
    from flowrun.graph.build import environment_info

    expected = {"flowrun": __version__, "code": ci.package_identity(), **environment_info(None)}
    assert _environment_mismatch(expected, None) is None
    assert "code" in _environment_mismatch({**expected, "code": __version__ + ":" + "0" * 64}, None)
    assert {"torchsde", "scipy", "tokenizers"} <= set(expected["versions"])


# --- end to end: edit the Euler sampler in a copy of the package ------------------------------------------

WORKFLOW = """
version: 1
name: euler
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}
  pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: a red circle}}
  neg: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: ""}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
  sample:
    type: KSampler
    in: {model: ckpt.model, positive: pos, negative: neg, latent_image: latent}
    with: {seed: 1, steps: 2, cfg: 4.0, sampler_name: euler, scheduler: normal}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: euler}}
"""
EULER_STEP = "x = x + to_d(x, sigmas[i] * s_in, denoised) * (sigmas[i + 1] - sigmas[i])"


def test_editing_the_euler_sampler_reruns_sampling_and_what_follows(tiny_models, tmp_path):
    """Edit one constant of the Euler sampler in a copy of the package: sampling and everything after it
    render anew, prompt encoding and the empty latent still come from the cache."""
    from flowrun import api
    from flowrun.settings import Settings

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "flowrun", copy / "flowrun", ignore=shutil.ignore_patterns("__pycache__", "models"))
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    env = {k: v for k, v in os.environ.items() if k != "FLOWRUN_PLUGINS"}
    env["PYTHONPATH"] = str(copy)  # the copy is the flowrun that runs

    def run(out: str) -> tuple[dict[str, str], bytes]:
        subprocess.run([sys.executable, "-m", "flowrun", "run", wf, "-q", "--device", "cpu", "--models-dir",
                        tiny_models, "--cache-dir", tmp_path / "cache", "--out", tmp_path / out],
                       cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
        manifest = json.loads((tmp_path / out / "run.json").read_text())
        return {n["id"]: n["status"] for n in manifest["nodes"]}, (tmp_path / out / "euler.png").read_bytes()

    # The first run happens in this process, which saves a start of torch: the copy is the same bytes in
    # another folder, so it must find these results (keys do not depend on where the package lies).
    first = api.run(api.load(wf), Settings(out_dir=tmp_path / "first", cache_dir=tmp_path / "cache", device="cpu",
                                           models_dirs=(str(tiny_models),)))
    assert {n["status"] for n in first.manifest["nodes"]} == {"executed"}
    image = (tmp_path / "first" / "euler.png").read_bytes()

    samplers = copy / "flowrun" / "diffusion" / "samplers.py"
    source = samplers.read_text()
    assert source.count(EULER_STEP) == 1
    samplers.write_text(source.replace(EULER_STEP, EULER_STEP.replace("(sigmas[i + 1]", "0.5 * (sigmas[i + 1]")))
    edited, edited_image = run("edited")
    assert {k: edited[k] for k in ("sample", "decode", "save")} == dict.fromkeys(("sample", "decode", "save"),
                                                                                 "executed"), edited
    assert {k: edited[k] for k in ("pos", "neg", "latent")} == dict.fromkeys(("pos", "neg", "latent"), "cached")
    assert edited_image != image  # the old result would have been wrong

    again, again_image = run("again")
    # the image comes from the cache, so nothing upstream of it is even read ("skipped")
    assert again["save"] == "cached" and set(again.values()) == {"cached", "skipped"}, again
    assert again_image == edited_image
