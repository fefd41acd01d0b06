"""The precision models compute in: the names a run may ask for, each device's default, and what a
device refuses. Torch-free, so that planning (cache keys) and the goldens' backend folder can use it;
what each model part gets on a device is decided in flowrun.diffusion.precision.

Defaults follow ComfyUI: float32 on the CPU (its CPU numbers, which flowrun matches exactly), float16 on
CUDA and Apple's MPS.
"""

from __future__ import annotations

FLOAT32, BFLOAT16, FLOAT16 = "float32", "bfloat16", "float16"
DTYPES = (FLOAT32, BFLOAT16, FLOAT16)
SHORT = {FLOAT32: "fp32", BFLOAT16: "bf16", FLOAT16: "fp16"}
AUTO = "auto"  # the device is chosen at run time (cuda if available), so is its default precision


def default_dtype(device: str) -> str:
    """The precision of a device when the run does not ask for one."""
    return FLOAT16 if device.startswith(("cuda", "mps")) else FLOAT32


def problem(device: str | None, dtype: str | None) -> str | None:
    """Why `dtype` cannot run on `device` (None: it can, or the device is not known yet)."""
    if dtype is None:
        return None
    if dtype not in DTYPES:
        return f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}"
    if device is not None and device.split(":")[0] == "cpu" and dtype == FLOAT16:
        # torch runs float16 convolutions on the CPU in slow reference kernels, and ComfyUI computes CPU
        # models in float32 when asked for float16; bfloat16 has fast CPU kernels and float16's range issues
        # do not arise
        return "float16 is not supported on the CPU; use bfloat16 (or float32, the CPU's default)"
    return None


def resolved(device: str | None, dtype: str | None) -> str:
    """The precision a run computes in, as far as it is known without torch: `dtype` if asked for, else
    the device's default, else "auto" (cache keys and backend names use this)."""
    if dtype is not None:
        return dtype
    return default_dtype(device) if device else AUTO


def backend_name(device_backend: str, dtype: str) -> str:
    """The goldens' folder for renders on `device_backend` (cpu, cuda) in `dtype`: `cpu`, `cpu-bf16`,
    `cuda-fp16`; float32 renders keep the bare device name."""
    return device_backend if dtype == FLOAT32 else f"{device_backend}-{SHORT[dtype]}"
