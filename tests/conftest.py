"""Shared helpers: the engine's test nodes as a plugin, workflow files in tmp folders, the CLI in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowrun.diffusion import offline  # noqa: F401  (before any test imports transformers: see torchvision_compat)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
os.environ["FLOWRUN_PLUGINS"] = "engine_nodes"  # tests/engine_nodes.py: small pure-Python nodes


def missing_extra(workflow: Path) -> str | None:
    """The module a workflow needs that is not installed (its nodes declare an optional extra), or None."""
    from flowrun.nodes.registry import default_registry

    text = Path(workflow).read_text()
    registry = default_registry(builtin_only=True)
    for name in registry.names():
        if f"type: {name}" in text:
            missing = registry.get(name).missing_extras()
            if missing:
                return missing[0][1]
    return None


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """Run `flowrun ARGS...` in this process, in tmp_path, with a private cache folder."""
    from flowrun.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLOWRUN_CACHE_DIR", str(tmp_path / "cache"))

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def workflow(tmp_path):
    """Write a workflow (dedented YAML) into tmp_path and return its path."""

    def write(text: str, name: str = "wf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


def flowrun_process(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m flowrun ARGS...` in a fresh process (the test nodes on its path)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "flowrun", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A models folder with the tiny SD1-shaped checkpoint, as `tiny` and as `flowrun-tiny` (the name the
    examples use), each a single file in the original layout, plus `tiny-diffusers` (a diffusers folder),
    and the examples' LoRA, embedding, x2 upscale model and ControlNet made for it."""
    import tiny_model

    root = tmp_path_factory.mktemp("models")
    tiny_model.write(root, "tiny")
    ckpts = root / "checkpoints"
    for suffix in (".safetensors", ".json"):
        (ckpts / f"flowrun-tiny{suffix}").write_bytes((ckpts / f"tiny{suffix}").read_bytes())
    tiny_model.write_lora(root, "flowrun-tiny-night")
    tiny_model.write_embedding(root, "flowrun-tiny-sun")
    tiny_model.write_upscale_model(root, "flowrun-tiny-x2")
    tiny_model.write_controlnet(root, "flowrun-tiny-canny")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models):
    """MODEL, CLIP and VAE values of the tiny checkpoint, loaded once."""
    from flowrun.diffusion.checkpoint import load_bundle

    return load_bundle(tiny_models / "checkpoints" / "tiny.safetensors", "tiny")
