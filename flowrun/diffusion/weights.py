"""Build torch modules from state dicts without a second copy of the weights: read a file (safetensors, or a
pickle only where allowed), find its sidecar config, build on the meta device and assign the tensors; CLIP
text towers (transformers' and OpenCLIP's layouts) and autoencoders (4 and 16 latent channels). What
checkpoint.py, components.py and the families' file modules (sd3_files) share."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion.configs import _VAE_16
from flowrun.diffusion.detect import CheckpointError, read_header
from flowrun.diffusion.pickles import read_pickle
from flowrun.files import PICKLE_SUFFIXES

TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The CLIP tokenizer from the vocabulary shipped in the package (SD1, SD2 and SDXL share it)."""
    from transformers.models.clip.tokenization_clip import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)


def sidecar(path: Path) -> Path | None:
    """`<name>.json` beside the checkpoint, or beside the file a link leads to (shared model drives)."""
    for candidate in (path, path.resolve()):
        side = candidate.with_suffix(".json")
        if side.is_file():
            return side
    return None


def read_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix in PICKLE_SUFFIXES:
        data = read_pickle(path, allow_pickle)
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    read_header(path)  # validates every offset before anything is allocated
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file: {exc}") from None


_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                 "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64}  # as detect.DTYPE_BYTES


def read_cast(path: Path, keys: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Tensors `keys` of a .safetensors file in memory of their own, the floating ones cast to `dtype`.

    Each tensor is read into one buffer reused for all of them and cast from there into its own tensor
    (a tensor already in `dtype` is read straight into its own). Why not safetensors' `get_tensor` and
    `.to(dtype)`: that allocates every source tensor anew before the cast allocates again, page faults
    on 3.4 GB of fresh memory for SD 1.5's float32 UNet: 8.1 s to bfloat16 on the development machine,
    1.5 s this way, bit-identical; and unlike casting from the memory map, the file's pages never count
    in the process's memory beside the cast copy (peak: the cast part plus the largest tensor)."""
    header = read_header(path)  # every offset checked against the file's size
    keys = sorted(keys, key=lambda k: header.offsets[k][0])  # in file order
    wanted = {k: dtype if _TORCH_DTYPES[header.dtypes[k]].is_floating_point else _TORCH_DTYPES[header.dtypes[k]]
              for k in keys}
    sizes = [header.offsets[k][1] - header.offsets[k][0] for k in keys
             if _TORCH_DTYPES[header.dtypes[k]] != wanted[k]]
    scratch = torch.empty(max(sizes, default=0), dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as fh:
        for key in keys:
            start, end = header.offsets[key]
            stored, shape = _TORCH_DTYPES[header.dtypes[key]], header.shapes[key]
            target = torch.empty(shape, dtype=wanted[key])
            into = target if stored == wanted[key] else scratch[:end - start]
            if end == start:  # no elements
                out[key] = target
                continue
            fh.seek(header.data_start + start)
            if fh.readinto(memoryview(into.view(torch.uint8).reshape(-1).numpy())) != end - start:
                raise CheckpointError(f"{path}: truncated while reading tensor {key!r}")
            if into is not target:
                target.copy_(into.view(stored).view(shape))
            out[key] = target
    return out


def _fit_keys(state: dict[str, torch.Tensor], module) -> dict[str, torch.Tensor]:
    """Match a CLIP state dict's `text_model.` level to the module's (transformers 4 has it in
    CLIPTextModel, transformers 5 does not; CLIPTextModelWithProjection has it in both)."""
    expected = set(module.state_dict())
    out = {}
    for key, value in state.items():
        if key not in expected:
            if key.startswith("text_model.") and key[len("text_model."):] in expected:
                key = key[len("text_model."):]
            elif "text_model." + key in expected:
                key = "text_model." + key
        out[key] = value
    return out


def _instantiate(build, state: dict[str, torch.Tensor], what: str, file: Path, dtype: torch.dtype = torch.float32):
    """Build a module on the meta device (no memory, no random init) and assign the weights to it, each
    cast to `dtype` on its own (a float32 file in float32 keeps its memory-mapped tensors: no copy; in
    bfloat16 each tensor is cast as it is assigned, never a second whole state dict)."""
    with torch.device("meta"):
        module = build()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _fit_keys(state, module).items()}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    del state
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(f"{file}: {what} weights are missing {len(missing)} tensors, e.g. {missing[:3]}; "
                              "the file does not match the model configuration")
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (CLIP's position_ids) are not in checkpoints
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if name.endswith("position_ids"):
                owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand((1, -1)), persistent=False)
            else:
                raise CheckpointError(f"{file}: {what}: no value for buffer {name}")
    # `dtype` whatever the file stores (fp16 checkpoints in float32 too): the same numbers on every device
    return module.to(dtype).eval().requires_grad_(False)


def assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path) -> None:
    """Give a module built on the meta device its tensors (no copy); every parameter must come from `state`
    and every tensor of `state` must have a place, else the file is named with what did not fit."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shapes that do not fit the configuration
        raise CheckpointError(f"{path}: {what} weights do not fit its configuration: {str(exc)[:300]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: {what} weights do not fit: {len(missing)} missing (e.g. {missing[:2]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def round_weights(module: torch.nn.Module, fp8: torch.dtype) -> None:
    """Round every floating tensor a module keeps in its state dict (parameters and stored tables such as a
    position embedding) to an fp8 format and back, in place: what UNETLoader's fp8 `weight_dtype` gives, as
    ComfyUI builds the whole network in that dtype."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(fp8).to(tensor.dtype))


def _text_model(cfg: dict[str, Any], projection: bool):
    # the module itself, not `transformers`' lazy top level, which imports far more on first attribute
    from transformers.models.clip.configuration_clip import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**cfg)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _check_shapes(module, state: dict[str, torch.Tensor], what: str, file: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    wrong = [(k, expected[k], tuple(v.shape)) for k, v in state.items() if k in expected and expected[k] != tuple(v.shape)]
    if wrong:
        k, want, got = wrong[0]
        raise CheckpointError(f"{file}: {what} weight {k} has shape {got}, the configuration expects {want} "
                              f"({len(wrong)} mismatches); is the sidecar config right for this file?")


def _load_text(cfg: dict, state: dict, projection: bool, what: str, path: Path, dtype: torch.dtype = torch.float32):
    with torch.device("meta"):
        probe = _text_model(cfg, projection)
    _check_shapes(probe, _fit_keys(state, probe), what, path)
    return _instantiate(lambda: _text_model(cfg, projection), state, what, path, dtype)


def _load_open_clip(cfg: dict, state: dict, prefix: str, projection: bool, path: Path,
                    dtype: torch.dtype = torch.float32):
    """OpenCLIP text towers (SD2's ViT-H, SDXL's bigG) into transformers' CLIP text model, all layers kept."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    with torch.device("meta"):
        probe = _text_model(cfg, projection)
    converted = convert_open_clip_checkpoint(probe, state, prefix=prefix)
    # diffusers drops SD2's last resblock (its pipelines read the penultimate layer); ComfyUI keeps all 24
    # layers so that CLIPSetLastLayer -1 means the true last one. Convert that block under another index.
    last = cfg["num_hidden_layers"] - 1
    tail = f"{prefix}transformer.resblocks.{last}."
    if not any(k.startswith(f"text_model.encoder.layers.{last}.") for k in converted) and any(k.startswith(tail) for k in state):
        moved = {k.replace(tail, f"{prefix}transformer.resblocks.0."): v for k, v in state.items() if k.startswith(tail)}
        block = convert_open_clip_checkpoint(probe, moved, prefix=prefix)
        converted.update({k.replace("text_model.encoder.layers.0.", f"text_model.encoder.layers.{last}."): v
                          for k, v in block.items() if k.startswith("text_model.encoder.layers.0.")})
    if not projection:
        converted.pop("text_projection.weight", None)
    what = "OpenCLIP text encoder"
    _check_shapes(probe, _fit_keys(converted, probe), what, path)
    return _instantiate(lambda: _text_model(cfg, projection), converted, what, path, dtype)


def vae_config(state: dict, base: dict) -> dict:
    """`base` (an AutoencoderKL config) fitted to a VAE state dict (original or diffusers layout, no prefix):
    its latent channels, and whether it has the quant convolutions that SD3's and Flux's 16-channel
    autoencoder lacks (with SD3's latent scale and shift for such a one)."""
    channels = int(state["decoder.conv_in.weight"].shape[1])
    config = {**(_VAE_16 if channels == 16 else base), "latent_channels": channels}
    config["use_quant_conv"] = "quant_conv.weight" in state
    config["use_post_quant_conv"] = "post_quant_conv.weight" in state
    return config


def build_vae(state: dict, config: dict, path: Path, dtype: torch.dtype = torch.float32):
    """AutoencoderKL from a VAE state dict without prefix, original or diffusers layout, its weights in `dtype`
    (also on the meta device: tests check the full-size 16-channel layout this way)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from flowrun.diffusion.diffusers_models import AutoencoderKL

    diffusers_layout = any(k.startswith("encoder.down_blocks.") for k in state)
    vae_state = state if diffusers_layout else convert_ldm_vae_checkpoint(state, config)
    try:
        return _instantiate(lambda: AutoencoderKL(**config), vae_state, "VAE", path, dtype)
    except RuntimeError as exc:  # shapes that do not fit the configuration
        raise CheckpointError(f"{path}: VAE weights do not fit its configuration: {str(exc)[:300]}") from None
