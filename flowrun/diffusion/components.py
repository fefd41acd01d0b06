"""Load one part of a model from its own file: a UNet, a VAE, a text encoder (ComfyUI's split loaders).

Each file may be in the original (LDM) layout, with or without its checkpoint prefix, or in the diffusers /
transformers layout; original-layout keys are converted with diffusers' own functions, as for whole
checkpoints. The family is told from the keys (cross-attention width, SDXL's label embedding, a text
encoder's width); a file of another size carries its configs in a sidecar `<name>.json` in the checkpoint
sidecar's format. Weights are read on the CPU and computed in float32 whatever the file stores (fp8 too).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import flux_files
from flowrun.diffusion.checkpoint import (_V_PRED_PROBE, _instantiate, _load_open_clip, _load_text, read_state_dict,
                                          sidecar, tokenizer)
from flowrun.diffusion.configs import _CLIP_L, _OPEN_CLIP_BIGG, _OPEN_CLIP_H, FLUX, SD1, SD2, SDXL, ModelConfig
from flowrun.diffusion.detect import CONTEXT_WIDTH, UNET, CheckpointError
from flowrun.diffusion.diffusers_models import UNet2DConditionModel
from flowrun.diffusion.precision import part_dtypes
from flowrun.diffusion.model import DiffusionModel, ModelSampling, TextEncoder, Vae
from flowrun.diffusion.weights import build_vae, vae_config

FP8 = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIXES = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.", "transformer.")
OPEN_CLIP_PREFIXES = ("cond_stage_model.model.", "conditioner.embedders.1.model.", "conditioner.embedders.0.model.")
TEXT_BY_WIDTH = {768: (SD1, _CLIP_L), 1024: (SD2, _OPEN_CLIP_H), 1280: (SDXL, _OPEN_CLIP_BIGG)}


def _config(path: Path, family: str | None) -> tuple[ModelConfig, bool]:
    """The sidecar's configs (its family wins), else the family's defaults; and whether a sidecar said so."""
    side = sidecar(path)
    if side is not None:
        try:
            return ModelConfig.from_sidecar(side, family or SD1), True
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    if family is None:
        raise CheckpointError(f"{path}: cannot tell the model family from its weights; put its configs in "
                              f"{path.with_suffix('.json')}")
    return ModelConfig.default(family), False


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load(build, state: dict, what: str, path: Path, dtype: torch.dtype = torch.float32):
    try:
        return _instantiate(build, state, what, path, dtype)
    except RuntimeError as exc:  # shapes that do not fit the configuration
        raise CheckpointError(f"{path}: {what} weights do not fit its configuration: {str(exc)[:300]}") from None


def load_unet(path: Path, fingerprint: str, *, device: str = "cpu", weight_dtype: str = "default",
              allow_pickle: bool = False, dtype: str | None = None) -> DiffusionModel:
    """MODEL from a UNet file (models/diffusion_models), or an SD3 / SD3.5 (sd3_files), Flux.1 (flux_files),
    AuraFlow (auraflow_files), Qwen-Image (qwen_image_files) or Z-Image (zimage_files) transformer file,
    computing in the run's precision `dtype` (None: the device's default). An fp8 `weight_dtype` rounds every
    weight to that format, as ComfyUI stores them."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from flowrun.diffusion import auraflow_files, qwen_image_files, sd3_files, zimage_files

    compute = part_dtypes(device, dtype).unet
    state = read_state_dict(path, allow_pickle)
    if sd3_files.is_sd3(state):  # SD3 / SD3.5's MMDiT
        config, _ = _config(path, sd3_files.SD3)
        if config.family != sd3_files.SD3:
            raise CheckpointError(f"{path}: its keys say sd3 (an MMDiT), its config {config.source} says "
                                  f"{config.family}")
        side = config if sidecar(path) is not None else None
        fp8 = getattr(torch, FP8[weight_dtype]) if weight_dtype in FP8 else None
        return sd3_files.load_transformer_file(state, path, side, fingerprint, device, fp8, compute)
    if flux_files.is_flux(state):
        side = sidecar(path)
        try:
            config = ModelConfig.from_sidecar(side, FLUX) if side else None
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        return flux_files.load_unet(state, path, fingerprint, config, device=device, weight_dtype=weight_dtype,
                                    dtype=compute)
    fp8 = getattr(torch, FP8[weight_dtype]) if weight_dtype in FP8 else None
    if auraflow_files.is_auraflow(state):  # AuraFlow's MMDiT
        config, _ = _config(path, auraflow_files.AURAFLOW)
        side = config if sidecar(path) is not None else None
        return auraflow_files.load_transformer_file(state, path, side, fingerprint, device, fp8, compute)
    if qwen_image_files.is_qwen_image(state):  # Qwen-Image's MMDiT
        config, _ = _config(path, qwen_image_files.QWEN_IMAGE)
        side = config if sidecar(path) is not None else None
        return qwen_image_files.load_transformer_file(state, path, side, fingerprint, device, fp8, compute)
    if zimage_files.is_zimage(state) or zimage_files.is_lumina2(state):  # Z-Image's DiT (Lumina 2's: refused)
        config, _ = _config(path, zimage_files.ZIMAGE)
        side = config if sidecar(path) is not None else None
        return zimage_files.load_transformer_file(state, path, side, fingerprint, device, fp8, compute)
    diffusers_layout = "conv_in.weight" in state
    if not diffusers_layout:
        state = {k if k.startswith(UNET) else UNET + k: v for k, v in state.items()}
        if UNET + "input_blocks.0.0.weight" not in state:
            raise CheckpointError(f"{path}: not a UNet: expected 'input_blocks.*' (original layout) or 'conv_in.*' "
                                  f"(diffusers layout) weights, or an SD3 MMDiT's 'joint_blocks.*', found keys like "
                                  f"{sorted(state)[:3]}")
    contexts = {v.shape[1] for k, v in state.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2}
    sdxl = (UNET + "label_emb.0.0.weight") in state or "add_embedding.linear_1.weight" in state
    family = SDXL if sdxl else CONTEXT_WIDTH.get(next(iter(contexts)) if len(contexts) == 1 else None)
    config, from_side = _config(path, family)
    conv_in = state["conv_in.weight" if diffusers_layout else UNET + "input_blocks.0.0.weight"]
    if not from_side:
        config.unet["in_channels"] = conv_in.shape[1]
        probe = state.get(_V_PRED_PROBE)
        if config.family == SD2 and probe is not None and probe.float().std() <= 0.09:
            config.prediction_type = "epsilon"
    unet_state = state if diffusers_layout else convert_ldm_unet_checkpoint(state, config.unet)
    unet = _load(lambda: UNet2DConditionModel(**config.unet), unet_state, "UNet", path, compute)
    if weight_dtype in FP8:
        fp8 = getattr(torch, FP8[weight_dtype])
        with torch.no_grad():
            for p in unet.parameters():
                p.copy_(p.to(fp8).to(compute))
    unet.to(device)
    return DiffusionModel(unet, ModelSampling(config.prediction_type), config, fingerprint, device=device,
                          dtype=compute)


def load_vae(path: Path, fingerprint: str, *, device: str = "cpu", allow_pickle: bool = False,
             dtype: str | None = None) -> Vae:
    """VAE from a file in models/vae, in the original layout (`encoder.down.*`) or diffusers' (`encoder.down_blocks.*`):
    SD's 4-channel autoencoders and SD3's / Flux's 16-channel one (no quant convolutions); Qwen-Image's causal
    3-D VAE (qwen_image_vae) in Wan 2.1's layout or diffusers'; in the precision `dtype` gives VAEs on `device`."""
    from flowrun.diffusion import qwen_image_files, qwen_image_vae

    state = _strip(read_state_dict(path, allow_pickle), VAE_PREFIXES)
    if qwen_image_vae.is_qwen_image_vae(state):
        config = _config(path, qwen_image_files.QWEN_IMAGE)[0] if sidecar(path) is not None else None
        return qwen_image_files.load_vae(state, path, config, fingerprint, device, part_dtypes(device, dtype).vae)
    if "decoder.conv_in.weight" not in state:
        raise CheckpointError(f"{path}: not a VAE: expected 'encoder.*' and 'decoder.*' weights, found keys like "
                              f"{sorted(state)[:3]}")
    config, from_side = _config(path, SD1)
    if not from_side:
        config.vae = vae_config(state, config.vae)
    vae = build_vae(state, config.vae, path, part_dtypes(device, dtype).vae)
    vae.to(device)
    return Vae(vae, config, fingerprint)


def _text_part(path: Path, allow_pickle: bool) -> tuple[str | None, dict, Any, int]:
    """(family, config, a builder taking (projection, what), width) of one text-encoder file."""
    from flowrun.diffusion import t5

    state = read_state_dict(path, allow_pickle)
    if t5.is_t5(_strip(state, ("text_encoders.t5xxl.transformer.",))):
        raise CheckpointError(f"{path}: a T5 text encoder (as SD3 and Flux read), not the CLIP text encoder this "
                              "loader type expects; SD3's load with TripleCLIPLoader, or CLIPLoader / DualCLIPLoader "
                              "type sd3; Flux's with DualCLIPLoader type flux")
    open_clip = _strip(state, OPEN_CLIP_PREFIXES)
    if "token_embedding.weight" in open_clip:  # OpenCLIP layout (SD2's ViT-H, SDXL's bigG)
        width, prefix = open_clip["token_embedding.weight"].shape[1], "oc."
        state = {prefix + k: v for k, v in open_clip.items()}
    else:
        state = _strip(state, CLIP_PREFIXES)
        key = next((k for k in state if k.endswith("embeddings.token_embedding.weight")), None)
        if key is None:
            raise CheckpointError(f"{path}: not a CLIP text encoder: no token embedding among keys like "
                                  f"{sorted(state)[:3]}")
        width, prefix = state[key].shape[1], None
    family, cfg = TEXT_BY_WIDTH.get(width, (None, None))
    side = sidecar(path)
    if side is not None:
        config, _ = _config(path, family)
        family, cfg = config.family, config.text_encoders[0]
    if cfg is None:
        raise CheckpointError(f"{path}: a text encoder {width} wide matches no known one (768 CLIP-L, 1024 OpenCLIP-H, "
                              f"1280 OpenCLIP-bigG); put its configs in {path.with_suffix('.json')}")

    def build(projection: bool, what: str):
        if prefix:
            return _load_open_clip(cfg, state, prefix, projection, path)
        return _load_text(cfg, state, projection, what, path)

    return family, cfg, build, cfg["hidden_size"]


def load_text_encoders(paths: list[Path], fingerprints: list[str], kind: str, *, allow_pickle: bool = False
                       ) -> TextEncoder:
    """CLIP from one file (`stable_diffusion`: SD1's CLIP-L or SD2's OpenCLIP-H, told by width) or two
    (`sdxl`: CLIP-L and OpenCLIP-bigG, in either order)."""
    if kind == "flux":
        return _flux_text_encoders(paths, fingerprints, allow_pickle)
    parts = [_text_part(p, allow_pickle) for p in paths]
    if kind == "sdxl":
        if len(parts) != 2:
            raise CheckpointError("sdxl takes two text encoders, CLIP-L and OpenCLIP-bigG")
        (pl, _), (pg, g_path) = sorted(zip(parts, paths), key=lambda part: part[0][3])
        if pl[3] == pg[3]:
            raise CheckpointError(f"{paths[0]} and {paths[1]} are both {pl[3]} wide; sdxl takes CLIP-L "
                                  "and the wider OpenCLIP-bigG")
        models = [pl[2](False, "CLIP-L text encoder"), pg[2](True, "OpenCLIP-bigG text encoder")]
        config = dataclasses.replace(ModelConfig.default(SDXL), text_encoders=[pl[1], pg[1]], source=str(g_path))
    else:
        (family, cfg, build, _), = parts
        if family not in (SD1, SD2):
            raise CheckpointError(f"{paths[0]}: a {family} text encoder; type stable_diffusion takes SD1's CLIP-L "
                                  "or SD2's OpenCLIP-H (SDXL's two load with DualCLIPLoader)")
        models = [build(False, "CLIP text encoder")]
        config = dataclasses.replace(ModelConfig.default(family), text_encoders=[cfg], source=str(paths[0]))
    fingerprint = fingerprints[0] if len(fingerprints) == 1 else hashlib.sha256(
        "\0".join(fingerprints).encode()).hexdigest()
    return TextEncoder(tokenizer(), models, config, fingerprint)


def _flux_text_encoders(paths: list[Path], fingerprints: list[str], allow_pickle: bool) -> TextEncoder:
    """CLIP for Flux from two files, CLIP-L and T5-XXL in either order (DualCLIPLoader type flux), told
    apart by their weights (flowrun.diffusion.t5.is_t5)."""
    from flowrun.diffusion import t5

    if len(paths) != 2:
        raise CheckpointError("flux takes two text encoders, CLIP-L and T5-XXL")
    models: dict[str, Any] = {}
    configs: dict[str, dict] = {}
    for path in paths:
        state = _strip(read_state_dict(path, allow_pickle),
                       (flux_files.T5_PREFIX, "t5xxl.transformer.") + CLIP_PREFIXES)
        if t5.is_t5(state):
            if "t5" in models:
                raise CheckpointError(f"{paths[0]} and {paths[1]} are both T5 encoders; flux takes CLIP-L and T5-XXL")
            configs["t5"], models["t5"] = t5.config_from_state(state), t5.build(state, torch.float32)
            continue
        key = next((k for k in state if k.endswith("embeddings.token_embedding.weight")), None)
        if key is None:
            raise CheckpointError(f"{path}: neither CLIP-L nor T5: no token embedding among keys like {sorted(state)[:3]}")
        if "clip_l" in models:
            raise CheckpointError(f"{paths[0]} and {paths[1]} are both CLIP text encoders; flux takes CLIP-L and T5-XXL")
        width = state[key].shape[1]
        side, _ = _config(path, FLUX) if sidecar(path) else (None, False)
        cfg = side.text_encoders[0] if side is not None else (_CLIP_L if width == 768 else None)
        if cfg is None:
            raise CheckpointError(f"{path}: a CLIP text encoder {width} wide; flux takes CLIP-L (768); for a model of "
                                  f"another size put its configs in {path.with_suffix('.json')}")
        configs["clip_l"], models["clip_l"] = cfg, _load_text(cfg, state, False, "CLIP-L text encoder", path)
    config = dataclasses.replace(ModelConfig.default(FLUX), text_encoders=[configs["clip_l"], configs["t5"]],
                                 source=str(paths[0]))
    fingerprint = hashlib.sha256("\0".join(fingerprints).encode()).hexdigest()
    return TextEncoder(tokenizer(), [models["clip_l"], models["t5"]], config, fingerprint)


def with_ldm_config(model: DiffusionModel, yaml_path: Path) -> DiffusionModel:
    """The model read as an LDM YAML config (CheckpointLoader's config_name) says: its parameterization
    (`v`: v-prediction), checked against the weights' cross-attention width and input channels."""
    import yaml

    try:
        params = yaml.safe_load(yaml_path.read_text())["model"]["params"]
        unet = params.get("unet_config", {}).get("params", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{yaml_path}: not an LDM model config (model.params...): {exc}") from None
    for key, actual in (("context_dim", model.unet.config.cross_attention_dim),
                        ("in_channels", model.unet.config.in_channels)):
        if key in unet and unet[key] != actual:
            raise CheckpointError(f"{yaml_path}: says {key} {unet[key]}, the checkpoint's UNet has {actual}: "
                                  "the config is for another model")
    prediction = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    config = dataclasses.replace(model.config, prediction_type=prediction, source=str(yaml_path))
    return dataclasses.replace(model, sampling=ModelSampling(prediction), config=config)
