"""Read ControlNet and T2I-Adapter files offline into diffusers' `ControlNetModel` / `T2IAdapter`.

Layouts read: ControlNets in the original (ldm) layout as ComfyUI and A1111 use them (`control_model.`
prefix, or bare `input_blocks...`/`zero_convs...` keys), ControlNets in diffusers' layout
(`controlnet_cond_embedding...`), T2I-Adapters in TencentARC's original layout (`conv_in`, `body.N`)
and in diffusers' (`adapter.body.N.resnets.M`). Original ControlNet keys are converted with diffusers' own
`convert_controlnet_checkpoint`.

The config comes from the file's metadata (`flowrun.config`, what flowrun writes: its toy and bundled
models are of no standard size), else from `<name>.json` beside the file, else it is read off the weights
(block widths, layers per block, transformer depths, context width, hint embedding), as ComfyUI does; what
weights cannot tell (attention heads) follows the family: 8 heads in SD1, 64 channels per head in SD2 and
SDXL. The family is told from the weights too: a size embedding (`add_embedding`, ldm `label_emb`) is
SDXL's, linear attention projections SD2's, convolutions SD1's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.checkpoint import _instantiate, read_state_dict, sidecar
from flowrun.diffusion.configs import SD1, SD2, SDXL
from flowrun.diffusion.detect import CheckpointError, read_header
from flowrun.diffusion.export import CONFIG_KEY
from flowrun.files import SAFE_SUFFIXES

FAMILY_NAMES = {SD1: "SD1", SD2: "SD2", SDXL: "SDXL", "sdxl_refiner": "SDXL refiner"}
LDM_PREFIX = "control_model."
CONTROLNET, T2I_ADAPTER = "controlnet", "t2i_adapter"


@dataclass
class ControlFile:
    """A loaded ControlNet or T2I-Adapter: the module, which kind it is, the model family it was made for."""

    kind: str  # CONTROLNET or T2I_ADAPTER
    module: Any  # diffusers ControlNetModel or T2IAdapter, float32, eval
    family: str
    name: str  # the file's name, for messages
    fingerprint: str


def _stored_config(path: Path) -> dict | None:
    side = sidecar(path)
    if side is not None:
        try:
            return json.loads(side.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{side}: unreadable config: {exc}") from None
    if path.suffix in SAFE_SUFFIXES:
        text = read_header(path).metadata.get(CONFIG_KEY)
        if text:
            try:
                return json.loads(text)
            except ValueError as exc:
                raise CheckpointError(f"{path}: unreadable config in its metadata ({CONFIG_KEY}): {exc}") from None
    return None


def _levels(state: dict, pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return sorted(found)


def _ldm_layers_per_block(state: dict) -> int:
    """Resnets per level in an ldm ControlNet: the first downsampler (`input_blocks.N.0.op`) sits after them."""
    downs = _levels(state, r"input_blocks\.(\d+)\.0\.op\.weight")
    if downs:
        return downs[0] - 1
    return len(_levels(state, r"input_blocks\.(\d+)\.")) - 1


def _family_of(state: dict) -> str:
    if "add_embedding.linear_1.weight" in state:
        return SDXL
    proj = next((v for k, v in state.items() if k.endswith("attentions.0.proj_in.weight")), None)
    return SD2 if proj is not None and proj.ndim == 2 else SD1


def controlnet_config(state: dict, family: str) -> dict:
    """A ControlNetModel config read off diffusers-layout weights (what weights cannot say: the family's)."""
    levels = _levels(state, r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight")
    widths = [int(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels]
    per_block = len(_levels(state, r"down_blocks\.0\.resnets\.(\d+)\.conv1\.weight"))
    depths = [len(_levels(state, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for i in levels]
    to_k = next((v for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
    hint_blocks = _levels(state, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    hint_widths = [int(state["controlnet_cond_embedding.conv_in.weight"].shape[0])]
    hint_widths += [int(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]) for i in hint_blocks[1::2]]
    config: dict[str, Any] = {
        "in_channels": int(state["conv_in.weight"].shape[1]),
        "conditioning_channels": int(state["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "layers_per_block": per_block,
        "transformer_layers_per_block": [max(d, 1) for d in depths],
        "cross_attention_dim": int(to_k.shape[1]) if to_k is not None else 768,
        "use_linear_projection": family != SD1,
        "conditioning_embedding_out_channels": hint_widths,
        # diffusers calls the number of heads attention_head_dim; SD1 has 8 heads, SD2 and SDXL 64 channels each
        "attention_head_dim": 8 if family == SD1 else [max(w // 64, 1) for w in widths],
    }
    if "mid_block.attentions.0.proj_in.weight" not in state:
        config["mid_block_type"] = "UNetMidBlock2D"
    if family == SDXL:
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=int(state["add_embedding.linear_1.weight"].shape[1]))
    return config


def _original_adapter_to_diffusers(state: dict) -> dict:
    """TencentARC's full adapter keys (`body.{level * 2 + j}`) as diffusers' (`adapter.body.{level}.resnets.{j}`)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"body\.(\d+)\.(.*)", key)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            level, j = divmod(index, 2)
            if rest.startswith("in_conv."):
                key = f"adapter.body.{level}.{rest}"
            else:
                key = f"adapter.body.{level}.resnets.{j}.{rest}"
        else:
            key = "adapter." + key
        out[key] = value
    return out


def adapter_config(state: dict) -> tuple[dict, str]:
    """A T2IAdapter config and family read off diffusers-layout full-adapter weights: SDXL's adapter
    unshuffles by 16 (256 values per hint channel), SD1's by 8 (64)."""
    conv_in = state["adapter.conv_in.weight"]
    levels = _levels(state, r"adapter\.body\.(\d+)\.")
    channels = [int(state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in levels]
    xl = int(conv_in.shape[1]) in (256, 768)  # ComfyUI's rule: 1 or 3 hint channels unshuffled by 16
    factor = 16 if xl else 8
    per_level = len(_levels(state, r"adapter\.body\.0\.resnets\.(\d+)\."))
    config = {"in_channels": int(conv_in.shape[1]) // (factor * factor), "channels": channels,
              "num_res_blocks": per_level, "downscale_factor": factor,
              "adapter_type": "full_adapter_xl" if xl else "full_adapter"}
    return config, SDXL if xl else SD1


def _diff_applied(state: dict, unet: Any, path: Path) -> dict:
    """A diff ControlNet's weights plus the model's UNet weights of the same names (ComfyUI adds them)."""
    base = unet.state_dict()
    out = {}
    for key, value in state.items():
        if key in base:
            if tuple(base[key].shape) != tuple(value.shape):
                raise CheckpointError(f"{path.name}: diff ControlNet weight {key} has shape {tuple(value.shape)}, "
                                      f"the model's UNet {tuple(base[key].shape)}: made for another model")
            value = value.float() + base[key].float().to(value.device)
        out[key] = value
    return out


def load_control_file(path: Path, fingerprint: str, *, allow_pickle: bool = False, device: str = "cpu",
                      unet: Any = None) -> ControlFile:
    """A ControlNet or T2I-Adapter from a file; `unet`: the model's UNet, for diff ControlNets (whose
    weights are differences to it)."""
    from flowrun.diffusion.determinism import configure

    configure()
    if path.is_dir():
        return _load_folder(path, fingerprint, device)
    state = read_state_dict(path, allow_pickle)
    stored = _stored_config(path)
    if "adapter" in state and not isinstance(state["adapter"], torch.Tensor):
        state = state["adapter"]
    if "lora_controlnet" in state:
        raise CheckpointError(f"{path.name}: a Control-LoRA; flowrun reads full ControlNets and T2I-Adapters only")
    diff = "difference" in state
    state = {k: v for k, v in state.items() if k != "difference"}
    if any(k.startswith(LDM_PREFIX) for k in state) or "zero_convs.0.0.weight" in state:
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        bare = {k.removeprefix(LDM_PREFIX): v for k, v in state.items()}
        state = convert_controlnet_checkpoint(bare, {"layers_per_block": _ldm_layers_per_block(bare)})
        state = {k: v for k, v in state.items() if v is not None}
        kind = CONTROLNET
    elif "controlnet_cond_embedding.conv_in.weight" in state:
        kind = CONTROLNET
    elif "adapter.conv_in.weight" in state:
        kind = T2I_ADAPTER
    elif "conv_in.weight" in state and "body.0.block1.weight" in state:
        if any(k.endswith("down_opt.op.weight") for k in state):  # diffusers' adapter downsamples by pooling only
            raise CheckpointError(f"{path.name}: a T2I-Adapter that downsamples with convolutions; flowrun reads "
                                  "those that pool (TencentARC's and diffusers' released adapters)")
        state, kind = _original_adapter_to_diffusers(state), T2I_ADAPTER
    elif "body.0.in_conv.weight" in state:
        raise CheckpointError(f"{path.name}: a light T2I-Adapter (TencentARC's Adapter_light); flowrun reads "
                              "full T2I-Adapters only")
    else:
        sample = ", ".join(sorted(state)[:3]) or "no tensors"
        raise CheckpointError(f"{path.name}: not a ControlNet or T2I-Adapter: expected keys like "
                              f"'control_model.zero_convs.0.0.weight', 'controlnet_cond_embedding.conv_in.weight' "
                              f"or 'adapter.conv_in.weight', found {sample}")
    if kind == CONTROLNET:
        from diffusers import ControlNetModel

        family = _family_of(state)
        if stored is not None:
            family = stored.get("family", family)
            config = stored.get("controlnet") or controlnet_config(state, family)
        else:
            config = controlnet_config(state, family)
        if diff:
            if unet is None:
                raise CheckpointError(f"{path.name}: a diff ControlNet (its weights are differences to a model's); "
                                      "load it with DiffControlNetLoader, which takes the model")
            state = _diff_applied(state, unet, path)
        module = _instantiate(lambda: ControlNetModel(**config), _shaped(state, ControlNetModel, config, path),
                              "ControlNet", path)
    else:
        from diffusers import T2IAdapter

        config, family = adapter_config(state)
        if stored is not None:
            family = stored.get("family", family)
            config = stored.get("t2i_adapter", config)
        module = _instantiate(lambda: T2IAdapter(**config), _shaped(state, T2IAdapter, config, path),
                              "T2I-Adapter", path)
    return ControlFile(kind, module.to(device), family, path.name, fingerprint)


def _shaped(state: dict, cls: Any, config: dict, path: Path) -> dict:
    """`state`, after checking each weight's shape against the model the config builds (a clear error
    instead of torch's when a file and its config disagree)."""
    with torch.device("meta"):
        probe = cls(**config)
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    wrong = [(k, expected[k], tuple(v.shape)) for k, v in state.items() if k in expected and expected[k] != tuple(v.shape)]
    if wrong:
        k, want, got = wrong[0]
        raise CheckpointError(f"{path.name}: weight {k} has shape {got}, the config read for it expects {want} "
                              f"({len(wrong)} mismatches); give its config in {path.with_suffix('.json').name}")
    return state


def _load_folder(path: Path, fingerprint: str, device: str) -> ControlFile:
    """A diffusers folder (config.json and its weights), local files only."""
    from diffusers import ControlNetModel, T2IAdapter

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: a folder without a readable config.json ({exc})") from None
    cls = T2IAdapter if config.get("_class_name") == "T2IAdapter" else ControlNetModel
    try:
        module = cls.from_pretrained(path, local_files_only=True).float().eval().requires_grad_(False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load diffusers folder: {exc}") from None
    if cls is T2IAdapter:
        kind, family = T2I_ADAPTER, SDXL if config.get("adapter_type") == "full_adapter_xl" else SD1
    else:
        kind = CONTROLNET
        family = SDXL if config.get("addition_embed_type") == "text_time" else (
            SD2 if config.get("use_linear_projection") else SD1)
    return ControlFile(kind, module.to(device), family, path.name, fingerprint)
