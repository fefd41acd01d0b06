"""Flux.1 transformer weights between Black Forest Labs' layout (`double_blocks.N.img_attn.qkv`, what
ComfyUI's files hold, with or without `model.diffusion_model.`) and diffusers' FluxTransformer2DModel.

diffusers ships the BFL -> diffusers direction (single_file_utils.convert_flux_transformer_checkpoint_to_diffusers),
but it hard-codes the full model's width (inner_dim 3072, MLP ratio 4), so a toy-width file cannot go through
it, and it has no way back, which the toy files need. This table holds the same mapping for any width, in both
directions: fused projections (qkv, the single blocks' linear1) are split at the sizes of the diffusers
parameters they become. tests/test_flux.py checks it against diffusers' converter on the full-size layout.
"""

from __future__ import annotations

from typing import Any

PREFIX = "model.diffusion_model."

# (BFL module, diffusers modules it holds stacked along dim 0); weights and biases alike
_GLOBAL = [
    ("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
    ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
    ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"]),
    ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"]),
    ("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
    ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"]),
    ("txt_in", ["context_embedder"]),
    ("img_in", ["x_embedder"]),
    ("final_layer.linear", ["proj_out"]),
    ("final_layer.adaLN_modulation.1", ["norm_out.linear"]),  # (shift, scale) in BFL, (scale, shift) in diffusers
]
_DOUBLE = [
    ("img_mod.lin", ["norm1.linear"]),
    ("txt_mod.lin", ["norm1_context.linear"]),
    ("img_attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("txt_attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("img_attn.proj", ["attn.to_out.0"]),
    ("txt_attn.proj", ["attn.to_add_out"]),
    ("img_mlp.0", ["ff.net.0.proj"]),
    ("img_mlp.2", ["ff.net.2"]),
    ("txt_mlp.0", ["ff_context.net.0.proj"]),
    ("txt_mlp.2", ["ff_context.net.2"]),
]
_DOUBLE_NORMS = [
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
]
_SINGLE = [
    ("modulation.lin", ["norm.linear"]),
    ("linear1", ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]),
    ("linear2", ["proj_out"]),
]
_SINGLE_NORMS = [
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
]
_SWAPPED = "norm_out.linear"


def is_bfl(keys) -> bool:
    """Whether weight names are in BFL's layout (with or without ComfyUI's prefix)."""
    return any(k.startswith(("double_blocks.", PREFIX + "double_blocks.")) for k in keys)


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """The transformer's weights without ComfyUI's `model.diffusion_model.` (other parts of a whole
    checkpoint left out)."""
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    return dict(state)


def _blocks(state: dict[str, Any], name: str) -> int:
    indices = {int(k.split(".")[1]) for k in state if k.startswith(name + ".")}
    return max(indices) + 1 if indices else 0


def _pairs(num_layers: int, num_single_layers: int) -> list[tuple[str, list[str]]]:
    """(BFL parameter name, diffusers parameter names) for every weight and bias of the model."""
    modules = list(_GLOBAL)
    for i in range(num_layers):
        modules += [(f"double_blocks.{i}.{b}", [f"transformer_blocks.{i}.{d}" for d in ds]) for b, ds in _DOUBLE]
    for i in range(num_single_layers):
        modules += [(f"single_blocks.{i}.{b}", [f"single_transformer_blocks.{i}.{d}" for d in ds]) for b, ds in _SINGLE]
    pairs = [(f"{b}.{p}", [f"{d}.{p}" for d in ds]) for b, ds in modules for p in ("weight", "bias")]
    for i in range(num_layers):
        pairs += [(f"double_blocks.{i}.{b}", [f"transformer_blocks.{i}.{d}"]) for b, d in _DOUBLE_NORMS]
    for i in range(num_single_layers):
        pairs += [(f"single_blocks.{i}.{b}", [f"single_transformer_blocks.{i}.{d}"]) for b, d in _SINGLE_NORMS]
    return pairs


def _swap_halves(t):
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(state: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """BFL-layout weights (prefix stripped) as FluxTransformer2DModel's, fused projections split at the sizes
    `shapes` (the model's own parameter shapes) give. Names the model has no parameter for are left out;
    names of the file no rule maps are kept as they are (the loader reports them)."""
    out, used = {}, set()
    for bfl, names in _pairs(_blocks(state, "double_blocks"), _blocks(state, "single_blocks")):
        if bfl not in state or not all(n in shapes for n in names):
            continue
        tensor = state[bfl]
        used.add(bfl)
        if len(names) == 1:
            out[names[0]] = _swap_halves(tensor) if names[0].startswith(_SWAPPED) else tensor
            continue
        for name, part in zip(names, tensor.split([shapes[n][0] for n in names], dim=0)):
            out[name] = part
    out.update({k: v for k, v in state.items() if k not in used})
    return out


def to_bfl(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """FluxTransformer2DModel weights in BFL's layout (fused projections concatenated), under `prefix`."""
    import torch

    num_layers = _blocks(state, "transformer_blocks")
    num_single = _blocks(state, "single_transformer_blocks")
    out = {}
    for bfl, names in _pairs(num_layers, num_single):
        if not all(n in state for n in names):
            continue
        tensor = torch.cat([state[n] for n in names], dim=0) if len(names) > 1 else state[names[0]]
        out[prefix + bfl] = _swap_halves(tensor) if names[0].startswith(_SWAPPED) else tensor
    return out


def config_from_bfl(state: dict[str, Any], axes_dims_rope=None) -> dict[str, Any]:
    """A FluxTransformer2DModel configuration read off BFL-layout weights' shapes (prefix stripped); the
    rotary axes are Flux.1's (16, 56, 56) for its 128-wide heads unless given."""
    hidden, in_channels = state["img_in.weight"].shape
    head_dim = state["single_blocks.0.norm.query_norm.scale"].shape[0]
    out_channels = state["final_layer.linear.weight"].shape[0]
    if axes_dims_rope is None:
        if head_dim != 128:
            raise ValueError(f"a Flux transformer with {head_dim}-wide attention heads needs its rotary axes "
                             "(axes_dims_rope) in a sidecar config")
        axes_dims_rope = [16, 56, 56]
    return {
        "patch_size": 1, "in_channels": int(in_channels),
        "out_channels": None if out_channels == in_channels else int(out_channels),
        "num_layers": _blocks(state, "double_blocks"), "num_single_layers": _blocks(state, "single_blocks"),
        "attention_head_dim": int(head_dim), "num_attention_heads": int(hidden // head_dim),
        "joint_attention_dim": int(state["txt_in.weight"].shape[1]),
        "pooled_projection_dim": int(state["vector_in.in_layer.weight"].shape[1]),
        "guidance_embeds": "guidance_in.in_layer.weight" in state, "axes_dims_rope": list(axes_dims_rope),
    }


def config_from_diffusers(state: dict[str, Any], axes_dims_rope=None) -> dict[str, Any]:
    """As config_from_bfl, for weights in diffusers' layout."""
    hidden, in_channels = state["x_embedder.weight"].shape
    head_dim = state["transformer_blocks.0.attn.norm_q.weight"].shape[0] if "transformer_blocks.0.attn.norm_q.weight" \
        in state else state["single_transformer_blocks.0.attn.norm_q.weight"].shape[0]
    bfl_like = {"img_in.weight": state["x_embedder.weight"], "txt_in.weight": state["context_embedder.weight"],
                "final_layer.linear.weight": state["proj_out.weight"],
                "vector_in.in_layer.weight": state["time_text_embed.text_embedder.linear_1.weight"],
                "single_blocks.0.norm.query_norm.scale": state["single_transformer_blocks.0.attn.norm_q.weight"]}
    config = config_from_bfl(bfl_like, axes_dims_rope)
    config.update(num_layers=_blocks(state, "transformer_blocks"),
                  num_single_layers=_blocks(state, "single_transformer_blocks"),
                  attention_head_dim=int(head_dim), num_attention_heads=int(hidden // head_dim),
                  guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state)
    return config
