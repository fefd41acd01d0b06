"""What each part of a model computes in on a device, given the run's precision (ComfyUI's choices in
comfy/model_management.py: unet_dtype, vae_dtype, text_encoder_dtype, read for flowrun's devices).

- The UNet holds its weights in the run's precision (no float32 copy under autocast).
- The VAE: float32 on the CPU (ComfyUI never picks a half precision for CPU models); on a GPU bfloat16
  where the GPU has it, else float32, since SD's VAEs overflow in float16 (ComfyUI allows only
  bfloat16 and float32 for them). A float32 run keeps it float32, as ComfyUI's --force-fp32 does.
- Text encoders stay on the CPU in float32 whatever the device (flowrun's rule, so that a prompt's
  conditioning is the same on every machine; ComfyUI also computes CPU text encoders in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowrun import precision

TORCH = {precision.FLOAT32: torch.float32, precision.BFLOAT16: torch.bfloat16, precision.FLOAT16: torch.float16}


@dataclass(frozen=True)
class PartDtypes:
    """The torch dtypes of a model's parts."""

    unet: torch.dtype
    vae: torch.dtype
    text: torch.dtype = torch.float32


ALL_FLOAT32 = PartDtypes(unet=torch.float32, vae=torch.float32)  # what a part built outside a run holds


def bf16_supported(device: str) -> bool:
    """Whether `device` computes bfloat16 natively (the CPU does, slowly on old CPUs but correctly)."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "mps"


def slow_bfloat16(device: str, dtype: str | None) -> str | None:
    """A warning when a run asks for bfloat16 on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX):
    torch then converts every operand to float32 and back, slower than float32 itself (a full-size SD 1.5
    UNet step 2.4x float32's time on the AVX2 development machine); None otherwise."""
    if device.split(":")[0] != "cpu" or precision.resolved(device, dtype) != precision.BFLOAT16:
        return None
    cpu = getattr(torch, "cpu", None)
    native = getattr(cpu, "_is_avx512_bf16_supported", None)  # private in torch 2.x; absent: say nothing
    amx = getattr(cpu, "_is_amx_tile_supported", None)
    if native is None or native() or (amx is not None and amx()):
        return None
    return ("bfloat16 on this CPU (no AVX-512 BF16 or AMX instructions) computes slower than float32; "
            "it still halves the UNet's memory")


def part_dtypes(device: str, dtype: str | None) -> PartDtypes:
    """The dtypes of UNet, VAE and text encoders for a run on `device` that asks for `dtype` (None: the
    device's default). Raises ValueError for a precision the device does not support."""
    name = precision.resolved(device, dtype)
    why = precision.problem(device, name)
    if why is None and name == precision.BFLOAT16 and not bf16_supported(device):
        why = f"bfloat16 is not supported on {device}; use float16 or float32"
    if why:
        raise ValueError(why)
    unet = TORCH[name]
    if name == precision.FLOAT32 or device.split(":")[0] == "cpu":
        vae = torch.float32
    else:
        vae = torch.bfloat16 if bf16_supported(device) else torch.float32
    return PartDtypes(unet=unet, vae=vae)
