"""Read a checkpoint's table of contents and tell what model it holds, without loading a weight.

The safetensors header is parsed here (8-byte length, then JSON) with every offset checked against the
file's size, so a file with a lying header is refused before anything is allocated. The family is told
from key names and shapes: UNet input channels (inpainting), cross-attention width (768 SD1, 1024 SD2,
2048 SDXL, 1280 SDXL refiner) and which text-encoder layout is present. diffusers' own detection falls back to SD1 for
anything it does not know; this one says what it found instead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from flowrun.diffusion.configs import SD1, SD2, SDXL, SDXL_REFINER

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer."
SD2_CLIP = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders."
CONTEXT_WIDTH = {768: SD1, 1024: SD2, 2048: SDXL, 1280: SDXL_REFINER}


class CheckpointError(Exception):
    """The file is not a checkpoint flowrun can read; the message says which file, what was expected and found."""


@dataclass
class Header:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str] = field(default_factory=dict)
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # from, to: bytes after data_start
    data_start: int = 0  # where the data section begins (8 + the header's length)


def read_header(path: str | os.PathLike) -> Header:
    """The tensor names, shapes and dtypes of a .safetensors file, checked against the file's size."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file: header claims {n:,} bytes, "
                                  f"the file has {size:,}")
        raw = fh.read(n)
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_bytes = size - 8 - n
    shapes, dtypes, metadata, offsets = {}, {}, {}, {}
    for name, info in table.items():
        if name == "__metadata__":
            metadata = info if isinstance(info, dict) else {}
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            width = DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if any(d < 0 for d in shape) or not (0 <= start <= end <= data_bytes) or end - start != math.prod(shape) * width:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file: tensor {name!r} declares "
                                  f"{shape} {dtype} at bytes {start}..{end}, but the data section has {data_bytes:,} bytes")
        shapes[name], dtypes[name], offsets[name] = shape, dtype, (start, end)
    return Header(shapes, dtypes, metadata, offsets, 8 + n)


@dataclass
class Detected:
    family: str
    in_channels: int
    context_dim: int
    inpaint: bool = False


def detect(shapes: dict[str, tuple[int, ...]], file: str) -> Detected:
    """Family, UNet input channels and cross-attention width of an original-layout (LDM) checkpoint."""
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise CheckpointError(f"{file}: not a Stable Diffusion checkpoint: expected UNet weights under "
                              f"'{UNET}*', found keys like {sample}")
    contexts = {shape[1] for key, shape in shapes.items()
                if key.startswith(UNET) and key.endswith("attn2.to_k.weight") and len(shape) == 2}
    if len(contexts) != 1:
        raise CheckpointError(f"{file}: cannot tell the model type: expected one cross-attention width in the "
                              f"UNet (768 SD1, 1024 SD2, 2048 SDXL), found {sorted(contexts) or 'none'}")
    context = contexts.pop()
    if any(k.startswith(SDXL_CLIP) for k in shapes):
        if UNET + "label_emb.0.0.weight" not in shapes:
            raise CheckpointError(f"{file}: text encoders under '{SDXL_CLIP}*' but no size embedding "
                                  f"('{UNET}label_emb.*'): not an SDXL checkpoint flowrun knows")
        # the refiner has only OpenCLIP-bigG, as embedder 0; the base has CLIP-L there and bigG as embedder 1
        family = SDXL if any(k.startswith(SDXL_CLIP + "1.") for k in shapes) else SDXL_REFINER
    elif any(k.startswith(SD2_CLIP) for k in shapes):
        family = SD2
    elif any(k.startswith(SD1_CLIP) for k in shapes):
        family = SD1
    elif context in CONTEXT_WIDTH:
        family = CONTEXT_WIDTH[context]
    else:
        raise CheckpointError(f"{file}: cannot tell the model type: no text encoder weights and a cross-attention "
                              f"width of {context}, which matches no known family (768 SD1, 1024 SD2, 2048 SDXL)")
    in_channels = conv_in[1]
    return Detected(family, in_channels, context, inpaint=in_channels == 9)
