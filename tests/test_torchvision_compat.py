"""torchvision_compat: a torchvision whose compiled extension does not fit this torch still imports (and so
do transformers and spandrel, which import it); nothing happens where torchvision is absent or fits."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_an_extension_that_cannot_load_gets_the_schemas(tmp_path):
    """A _C.so that fails to load (here: not a library at all) is answered by declaring nms and qnms."""
    fake = tmp_path / "torchvision" / "_C.so"
    fake.parent.mkdir()
    fake.write_text("not a shared library")
    r = _python(f"""
        import sys
        from pathlib import Path
        from flowrun.diffusion import torchvision_compat as compat
        sys.modules.pop("torchvision", None)
        compat.extension_path = lambda: Path({str(fake)!r})
        import torch
        assert compat.make_importable() is True
        assert compat.make_importable() is False  # once
        schema = str(torch.ops.torchvision.nms.default._schema)
        print("SCHEMA", schema, hasattr(torch.ops.torchvision, "qnms"))
    """)
    assert "SCHEMA torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor True" in r.stdout, \
        r.stdout + r.stderr


def test_without_torchvision_nothing_happens_and_torch_stays_unimported():
    r = _python("""
        import sys
        sys.modules["torchvision"] = None  # as if not installed
        import importlib.util
        from flowrun.diffusion import torchvision_compat as compat
        print("RESULT", compat.extension_path(), compat.make_importable(), "torch" in sys.modules)
    """)
    assert "RESULT None False False" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_installed_torchvision_imports_with_transformers_after_flowrun():
    """Whatever torchvision pip installed (CPU build or a CUDA build beside the CPU torch), flowrun's
    modules import it, transformers and spandrel."""
    r = _python("""
        from flowrun.diffusion import checkpoint  # imports offline, which prepares torchvision
        import torchvision, transformers
        from transformers import CLIPTextModel
        import importlib.util
        if importlib.util.find_spec("spandrel"):
            import spandrel
        print("OK", torchvision.__version__)
    """)
    assert r.returncode == 0 and "OK " in r.stdout, r.stdout + r.stderr
