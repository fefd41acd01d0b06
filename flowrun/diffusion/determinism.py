"""Settings that make torch repeat itself: the same inputs give the same bits, run after run.

CPU results were checked to be identical across processes and torch thread counts (tests); on CUDA this
turns off autotuned and TF32 kernels and asks cuBLAS for a fixed workspace, at some cost in speed.
"""

from __future__ import annotations

import os

_done = False


def configure() -> None:
    global _done
    if _done:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _done = True
