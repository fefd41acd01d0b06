"""Load a checkpoint into MODEL, CLIP and VAE values, fully offline.

Single files in the original layout are converted with diffusers' own LDM -> diffusers functions into
models built from shipped configs; diffusers folders load with `from_pretrained(local_files_only=True)`.
Pickle files are refused unless allowed, and then read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion.configs import FLUX, SD1, SD2, SDXL, SDXL_REFINER, ModelConfig
from flowrun.diffusion.detect import CheckpointError, detect, read_header
from flowrun.diffusion.pickles import read_pickle
from flowrun.diffusion.export import CONFIG_KEY
from flowrun.files import PICKLE_SUFFIXES, SAFE_SUFFIXES
from flowrun.diffusion.model import DiffusionModel, ModelSampling, TextEncoder, Vae

import torch

TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"
# ComfyUI's heuristic for SD2 768-v checkpoints: this norm's bias spreads wider in v-prediction models.
_V_PRED_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
UNCLIP_LABELS = "model.diffusion_model.label_emb.0.0.weight"  # an SD2 UNet with class labels: unCLIP


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The CLIP tokenizer from the vocabulary shipped in the package (SD1, SD2 and SDXL share it)."""
    from transformers import CLIPTokenizer

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


def _instantiate(build, state: dict[str, torch.Tensor], what: str, file: Path):
    """Build a module on the meta device (no memory, no random init) and load the weights into it."""
    with torch.device("meta"):
        module = build()
    state = _fit_keys(state, module)
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
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
    # float32 whatever the file stores (fp16 checkpoints too): the same numbers on every device
    return module.float().eval().requires_grad_(False)


def _text_model(cfg: dict[str, Any], projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**cfg)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _check_shapes(module, state: dict[str, torch.Tensor], what: str, file: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    wrong = [(k, expected[k], tuple(v.shape)) for k, v in state.items() if k in expected and expected[k] != tuple(v.shape)]
    if wrong:
        k, want, got = wrong[0]
        raise CheckpointError(f"{file}: {what} weight {k} has shape {got}, the configuration expects {want} "
                              f"({len(wrong)} mismatches); is the sidecar config right for this file?")


def load_single_file(path: Path, allow_pickle: bool = False) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, unet, text models, vae) from an original-layout checkpoint. Its configs come from the
    sidecar `<name>.json` if there is one, else from the file's metadata (what flowrun writes), else
    from the family's defaults."""
    side = sidecar(path)
    embedded = None
    if side is None and path.suffix in SAFE_SUFFIXES:
        embedded = read_header(path).metadata.get(CONFIG_KEY)
    return load_state(read_state_dict(path, allow_pickle), path, side, embedded)


def load_state(state: dict[str, torch.Tensor], path: Path, side: Path | None, embedded: str | None = None
               ) -> tuple[ModelConfig, Any, list[Any], Any]:
    """Detect, configure and build the components of an original-layout state dict (also on the meta
    device: tests check the key mapping of full-size SD1.5, SD2.1 and SDXL this way, without memory).
    `embedded`: the configs as JSON text, from the file's metadata."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    from flowrun.diffusion import flux_files

    if flux_files.is_flux(state):
        return _flux_parts(state, path, side)
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
    unet_state = convert_ldm_unet_checkpoint(state, config.unet)
    unet = _instantiate(lambda: UNet2DConditionModel(**config.unet), unet_state, "UNet", path)
    vae_state = convert_ldm_vae_checkpoint(state, config.vae)
    vae = _instantiate(lambda: AutoencoderKL(**config.vae), vae_state, "VAE", path)
    texts = []
    if config.family == SD1:
        clip_state = convert_ldm_clip_checkpoint(state)
        texts.append(_load_text(config.text_encoders[0], clip_state, False, "CLIP text encoder", path))
    elif config.family == SD2:
        texts.append(_load_open_clip(config.text_encoders[0], state, "cond_stage_model.model.", False, path))
    elif config.family == SDXL_REFINER:
        texts.append(_load_open_clip(config.text_encoders[0], state, "conditioner.embedders.0.model.", True, path))
    else:
        clip_state = convert_ldm_clip_checkpoint(state)
        texts.append(_load_text(config.text_encoders[0], clip_state, False, "CLIP-L text encoder", path))
        texts.append(_load_open_clip(config.text_encoders[1], state, "conditioner.embedders.1.model.", True, path))
    return config, unet, texts, vae


def _flux_parts(state: dict[str, torch.Tensor], path: Path, side: Path | None) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, transformer, [clip_l, t5xxl], autoencoder) of a whole Flux checkpoint, its parts under ComfyUI's
    prefixes (flowrun.diffusion.flux_files); a part it lacks is an error naming the prefix."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from flowrun.diffusion import flux_files, t5
    from flowrun.diffusion.flux_layout import PREFIX

    base = ModelConfig.from_sidecar(side, FLUX) if side else None
    config_unet, weights = flux_files.transformer_parts({k: v for k, v in state.items() if k.startswith(PREFIX)},
                                                        path, base)
    config = replace(base or ModelConfig.default(FLUX), unet=config_unet, source=str(side or path))
    parts = {}
    for prefix, what in ((flux_files.VAE_PREFIX, "autoencoder"), (flux_files.CLIP_L_PREFIX, "CLIP-L text encoder"),
                         (flux_files.T5_PREFIX, "T5-XXL text encoder")):
        parts[prefix] = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not parts[prefix]:
            raise CheckpointError(f"{path}: a Flux transformer without its {what} ('{prefix}*'): load the transformer "
                                  "with UNETLoader and the other parts with DualCLIPLoader (type flux) and VAELoader")
    transformer = flux_files.build_transformer(config_unet, weights, path)
    # the autoencoder as SD checkpoints' is read, with the 16-channel configuration (no quant convolutions)
    vae_state = convert_ldm_vae_checkpoint(parts[flux_files.VAE_PREFIX], config.vae)
    vae = _instantiate(lambda: AutoencoderKL(**config.vae), vae_state, "VAE", path)
    clip_l = _load_text(config.text_encoders[0], parts[flux_files.CLIP_L_PREFIX], False, "CLIP-L text encoder", path)
    t5_state = parts[flux_files.T5_PREFIX]
    config.text_encoders = [config.text_encoders[0], t5.config_from_state(t5_state)]
    return config, transformer, [clip_l, t5.build(t5_state, torch.float32)], vae


def _load_text(cfg: dict, state: dict, projection: bool, what: str, path: Path):
    with torch.device("meta"):
        probe = _text_model(cfg, projection)
    _check_shapes(probe, _fit_keys(state, probe), what, path)
    return _instantiate(lambda: _text_model(cfg, projection), state, what, path)


def _load_open_clip(cfg: dict, state: dict, prefix: str, projection: bool, path: Path):
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
    return _instantiate(lambda: _text_model(cfg, projection), converted, what, path)


def load_diffusers_folder(path: Path) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, unet, text models, vae) from a diffusers pipeline folder, local files only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

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
    unet, vae = unet.float(), vae.float()
    texts = [t.float().eval().requires_grad_(False) for t in texts]
    prediction = "epsilon"
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        prediction = json.loads(sched.read_text()).get("prediction_type", "epsilon")
    config = ModelConfig(family, dict(unet.config), dict(vae.config), [t.config.to_dict() for t in texts], prediction,
                         str(path))
    return config, unet, texts, vae


def load_bundle(path: Path, fingerprint: str, *, device: str = "cpu", allow_pickle: bool = False
                ) -> tuple[DiffusionModel, TextEncoder, Vae]:
    """MODEL, CLIP and VAE values for a checkpoint file or diffusers folder. The UNet and VAE go to
    `device`; text encoders stay on the CPU, so conditioning is the same on every machine."""
    from flowrun.diffusion.determinism import configure

    configure()
    if path.is_dir():
        config, unet, texts, vae = load_diffusers_folder(path)
    else:
        config, unet, texts, vae = load_single_file(path, allow_pickle)
    return bundle(config, unet, texts, vae, fingerprint, device)


def bundle(config: ModelConfig, unet, texts: list, vae, fingerprint: str, device: str = "cpu"
           ) -> tuple[DiffusionModel, TextEncoder, Vae]:
    """MODEL, CLIP and VAE values of loaded components; the UNet and VAE moved to `device`."""
    unet.to(device)
    vae.to(device)
    if config.family == FLUX:
        from flowrun.diffusion.flux_files import diffusion_model

        model = diffusion_model(unet, config, fingerprint, device)
    else:
        model = DiffusionModel(unet, ModelSampling(config.prediction_type), config, fingerprint, device=device)
    return model, TextEncoder(tokenizer(), texts, config, fingerprint), Vae(vae, config, fingerprint)
