"""Settings that make torch repeat itself: the same inputs give the same bits, run after run.

CPU results were checked to be identical across processes and torch thread counts (tests); on CUDA this
turns off autotuned and TF32 kernels and asks cuBLAS for a fixed workspace, at some cost in speed.
"""

from __future__ import annotations

import os
import sys

_done = False


def _deterministic_algorithms(torch) -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True), without importing torch._inductor: that
    function also sets the compiler's flag, importing it (1.3 s on the 2-core development machine) for a
    compiler flowrun never runs. The flag is set where the compiler is already loaded."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # another torch: the public way
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    setter(True, warn_only=True)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = True


def configure() -> None:
    global _done
    if _done:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    import torch

    _deterministic_algorithms(torch)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _done = True
