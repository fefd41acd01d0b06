"""Load a checkpoint into MODEL, CLIP and VAE values, fully offline.

Single files in the original layout are converted with diffusers' own LDM -> diffusers functions into
models built from shipped configs; diffusers folders load with `from_pretrained(local_files_only=True)`.
Pickle files are refused unless allowed, and then read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion.configs import AURAFLOW, FLUX, SD1, SD2, SD3, SDXL, SDXL_REFINER, ModelConfig
from flowrun.diffusion.detect import UNET, VAE, CheckpointError, detect, read_header
from flowrun.diffusion.export import CONFIG_KEY
from flowrun.files import PICKLE_SUFFIXES, SAFE_SUFFIXES
from flowrun.diffusion.lazy import Deferred
from flowrun.diffusion.model import DiffusionModel, ModelSampling, TextEncoder, Vae
from flowrun.diffusion.precision import ALL_FLOAT32, PartDtypes, part_dtypes
from flowrun.diffusion.weights import (TOKENIZER_DIR, _check_shapes, _fit_keys, _instantiate,  # noqa: F401
                                       _load_open_clip, _load_text, _text_model, read_cast, read_state_dict, sidecar,
                                       tokenizer)

import torch

# ComfyUI's heuristic for SD2 768-v checkpoints: this norm's bias spreads wider in v-prediction models.
_V_PRED_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
UNCLIP_LABELS = "model.diffusion_model.label_emb.0.0.weight"  # an SD2 UNet with class labels: unCLIP


def load_single_file(path: Path, allow_pickle: bool = False, dtypes: PartDtypes | None = None
                     ) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, unet, text models, vae) from an original-layout checkpoint. Its configs come from the
    sidecar `<name>.json` if there is one, else from the file's metadata (what flowrun writes), else
    from the family's defaults."""
    side = sidecar(path)
    embedded = None
    if side is None and path.suffix in SAFE_SUFFIXES:
        embedded = read_header(path).metadata.get(CONFIG_KEY)
    return load_state(read_state_dict(path, allow_pickle), path, side, embedded, dtypes)


def load_state(state: dict[str, torch.Tensor], path: Path, side: Path | None, embedded: str | None = None,
               dtypes: PartDtypes | None = None) -> tuple[ModelConfig, Any, list[Any], Any]:
    """Detect, configure and build the components of an original-layout state dict (also on the meta
    device: tests check the key mapping of full-size SD1.5, SD2.1 and SDXL this way, without memory).
    `embedded`: the configs as JSON text, from the file's metadata. SD3 and Flux files go to their own
    modules (sd3_files, flux_files), which read their configuration off the weights."""
    dtypes = dtypes or ALL_FLOAT32
    family = _dit_family(state, path)
    if family is not None:  # SD3 / Flux / AuraFlow: the family's module reads the configuration off the weights
        return family.load_state(state, path, side, dtypes)
    config = checkpoint_config(state, path, side, embedded)
    return (config, build_unet(config, state, path, dtypes.unet), build_texts(config, state, path),
            build_vae(config, state, path, dtypes.vae))


def checkpoint_config(state: dict[str, torch.Tensor], path: Path, side: Path | None, embedded: str | None = None
                      ) -> ModelConfig:
    """What an original-layout state dict is (family, component configs, prediction type), from its
    keys and shapes (and one tensor's spread for SD2's prediction type): nothing is built."""
    found = detect({k: tuple(v.shape) for k, v in state.items()}, str(path))
    if side:
        config = ModelConfig.from_sidecar(side, found.family)
    elif embedded:
        try:
            config = ModelConfig.from_data(json.loads(embedded), found.family, f"{path} (metadata {CONFIG_KEY})")
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable model configs in its metadata: {exc}") from None
    else:
        config = ModelConfig.default(found.family)
    if config.family != found.family:
        raise CheckpointError(f"{path}: its keys say {found.family}, its config {config.source} says {config.family}")
    if side is None and embedded is None:
        expected_ctx = config.unet["cross_attention_dim"]
        if found.context_dim != expected_ctx:
            raise CheckpointError(f"{path}: {found.family} checkpoints have cross-attention width {expected_ctx}, "
                                  f"this one {found.context_dim}; for a model of another size put its configs in "
                                  f"{path.with_suffix('.json')}")
        config.unet["in_channels"] = found.in_channels
        probe = state.get(_V_PRED_PROBE)
        if found.family == SD2 and probe is not None and not probe.is_meta and probe.float().std() <= 0.09:
            config.prediction_type = "epsilon"  # SD 2.x 512-base; the 768 models predict v
    label = state.get(UNCLIP_LABELS)
    if found.family == SD2 and label is not None and "class_embed_type" not in config.unet:
        # SD 2.1 unCLIP: the UNet takes an image embedding and its noise level as class labels (the LDM's
        # label_emb, diffusers' "projection" class embedding); ComfyUI reads these models as v-prediction
        config.unet.update(class_embed_type="projection", projection_class_embeddings_input_dim=int(label.shape[1]))
        if side is None and embedded is None:
            config.prediction_type = "v_prediction"
    return config


def build_unet(config: ModelConfig, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype = torch.float32):
    """The UNet of an original-layout state dict, its weights in `dtype`."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from flowrun.diffusion.diffusers_models import UNet2DConditionModel

    unet_state = convert_ldm_unet_checkpoint(state, config.unet)
    return _instantiate(lambda: UNet2DConditionModel(**config.unet), unet_state, "UNet", path, dtype)


def build_vae(config: ModelConfig, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype = torch.float32):
    """The VAE of an original-layout state dict, its weights in `dtype`."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from flowrun.diffusion.diffusers_models import AutoencoderKL

    vae_state = convert_ldm_vae_checkpoint(state, config.vae)
    return _instantiate(lambda: AutoencoderKL(**config.vae), vae_state, "VAE", path, dtype)


def build_texts(config: ModelConfig, state: dict[str, torch.Tensor], path: Path) -> list[Any]:
    """The text encoders of an original-layout state dict (float32: they run on the CPU)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    if config.family == SD1:
        return [_load_text(config.text_encoders[0], convert_ldm_clip_checkpoint(state), False, "CLIP text encoder",
                           path)]
    if config.family == SD2:
        return [_load_open_clip(config.text_encoders[0], state, "cond_stage_model.model.", False, path)]
    if config.family == SDXL_REFINER:
        return [_load_open_clip(config.text_encoders[0], state, "conditioner.embedders.0.model.", True, path)]
    clip_state = convert_ldm_clip_checkpoint(state)
    return [_load_text(config.text_encoders[0], clip_state, False, "CLIP-L text encoder", path),
            _load_open_clip(config.text_encoders[1], state, "conditioner.embedders.1.model.", True, path)]


def load_diffusers_folder(path: Path, dtypes: PartDtypes | None = None) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, unet, text models, vae) from a diffusers pipeline folder, local files only."""
    from transformers.models.clip.modeling_clip import CLIPTextModel, CLIPTextModelWithProjection

    from flowrun.diffusion.diffusers_models import AutoencoderKL, UNet2DConditionModel

    dtypes = dtypes or ALL_FLOAT32

    def read(sub: str) -> dict:
        try:
            return json.loads((path / sub / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: diffusers folder without a readable {sub}/config.json ({exc})") from None

    unet_cfg = read("unet")
    family = SDXL if unet_cfg.get("addition_embed_type") == "text_time" else (
        SD2 if unet_cfg.get("cross_attention_dim") == 1024 else SD1)
    if family == SDXL and not (path / "text_encoder").is_dir():
        family = SDXL_REFINER  # the refiner ships only text_encoder_2 (OpenCLIP-bigG)
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True).eval().requires_grad_(False)
        vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True).eval().requires_grad_(False)
        texts = [] if family == SDXL_REFINER else [CLIPTextModel.from_pretrained(path / "text_encoder",
                                                                                 local_files_only=True)]
        if (path / "text_encoder_2").is_dir():
            texts.append(CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", local_files_only=True))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load diffusers folder: {exc}") from None
    unet, vae = unet.to(dtypes.unet), vae.to(dtypes.vae)
    texts = [t.float().eval().requires_grad_(False) for t in texts]
    prediction = "epsilon"
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        prediction = json.loads(sched.read_text()).get("prediction_type", "epsilon")
    config = ModelConfig(family, dict(unet.config), dict(vae.config), [t.config.to_dict() for t in texts], prediction,
                         str(path))
    return config, unet, texts, vae


def load_bundle(path: Path, fingerprint: str, *, device: str = "cpu", allow_pickle: bool = False,
                dtype: str | None = None) -> tuple[DiffusionModel, TextEncoder, Vae]:
    """MODEL, CLIP and VAE values for a checkpoint file or diffusers folder, in the precision `dtype`
    asks for on `device` (None: the device's default; flowrun.diffusion.precision). The UNet and VAE go
    to `device`; text encoders stay on the CPU, so conditioning is the same on every machine. A
    safetensors file's parts are built when first used (flowrun.diffusion.lazy)."""
    from flowrun.diffusion.determinism import configure

    configure()
    dtypes = part_dtypes(device, dtype)
    if path.is_dir():
        config, unet, texts, vae = load_diffusers_folder(path, dtypes)
        return bundle(config, unet, texts, vae, fingerprint, device, dtypes)
    if path.suffix in PICKLE_SUFFIXES:  # the whole state is in memory already: build now, then let it go
        config, unet, texts, vae = load_single_file(path, allow_pickle, dtypes)
        return bundle(config, unet, texts, vae, fingerprint, device, dtypes)
    side = sidecar(path)
    embedded = None if side is not None else read_header(path).metadata.get(CONFIG_KEY)
    state = read_state_dict(path, allow_pickle)  # memory-mapped: tensors are read when a part is built
    family = _dit_family(state, path)
    if family is not None:  # SD3 / Flux / AuraFlow: the family's module reads the configuration, parts are built on use
        config, network, texts, vae_part = family.parts(state, path, side, dtypes)
        return bundle(config, Deferred(network), Deferred(texts), Deferred(lambda: vae_part().to(device)),
                      fingerprint, device, dtypes)
    config = checkpoint_config(state, path, side, embedded)

    def unet():
        return build_unet(config, _part_state(path, state, UNET, dtypes.unet), path, dtypes.unet).to(device)

    def vae():
        return build_vae(config, _part_state(path, state, VAE, dtypes.vae), path, dtypes.vae).to(device)

    return bundle(config, Deferred(unet), Deferred(lambda: build_texts(config, state, path)), Deferred(vae),
                  fingerprint, device, dtypes)


def _part_state(path: Path, state: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state a part under `prefix` is built from. Already in `dtype`: the memory-mapped tensors as they
    are (no copy). Else each tensor is read and cast on its own (weights.read_cast), so the file's pages of
    that part never stay resident beside the cast copy: peak memory is the cast part plus one tensor."""
    keys = [k for k in state if k.startswith(prefix)]
    if all(state[k].dtype == dtype or not state[k].is_floating_point() for k in keys):
        return state
    return read_cast(path, keys, dtype)


def _dit_family(state: dict[str, torch.Tensor], path: Path):
    """The module that reads a DiT family's whole checkpoints (sd3_files, flux_files, auraflow_files), None for a
    UNet's. A Qwen-Image transformer is refused, named: ComfyUI's Qwen-Image comes in parts."""
    from flowrun.diffusion import auraflow_files, flux_files, qwen_image_files, sd3_files

    if qwen_image_files.is_qwen_image(state):
        raise CheckpointError(f"{path}: a Qwen-Image transformer, not a checkpoint flowrun reads: load it with "
                              "UNETLoader, its Qwen2.5-VL with CLIPLoader type qwen_image, its VAE with VAELoader")
    return next((m for m, found in ((sd3_files, sd3_files.is_sd3), (flux_files, flux_files.is_flux),
                                    (auraflow_files, auraflow_files.is_auraflow)) if found(state)), None)


def bundle(config: ModelConfig, unet, texts, vae, fingerprint: str, device: str = "cpu",
           dtypes: PartDtypes | None = None) -> tuple[DiffusionModel, TextEncoder, Vae]:
    """MODEL, CLIP and VAE values of components (modules, moved to `device`, or lazy.Deferred builds; SD3's
    and Flux's networks wrapped in their family's adapter and MODEL)."""
    if not isinstance(vae, Deferred):
        vae.to(device)
    dtypes = dtypes or ALL_FLOAT32
    if config.family == SD3:
        from flowrun.diffusion.sd3_files import diffusion_model

        model = diffusion_model(unet, config, fingerprint, device, dtypes.unet)
    elif config.family == FLUX:
        from flowrun.diffusion.flux_files import diffusion_model as flux_model

        model = flux_model(unet, config, fingerprint, device, dtypes.unet)
    elif config.family == AURAFLOW:
        from flowrun.diffusion import auraflow_files, text_auraflow

        model = auraflow_files.diffusion_model(unet, config, fingerprint, device, dtypes.unet)
        return model, TextEncoder(text_auraflow.tokenizer(), texts, config, fingerprint), Vae(vae, config, fingerprint)
    else:
        if not isinstance(unet, Deferred):
            unet.to(device)
        model = DiffusionModel(unet, ModelSampling(config.prediction_type), config, fingerprint, device=device,
                               dtype=dtypes.unet)
    return model, TextEncoder(tokenizer(), texts, config, fingerprint), Vae(vae, config, fingerprint)
