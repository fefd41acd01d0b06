"""One CLIP text tower read as ComfyUI reads it: a prompt in 77-token chunks (start + 75 + end) with its
weights, encoded chunk by chunk at the family's layer, weights applied against the empty prompt, and the
pooled vector. What every family's prompt encoding builds on (flowrun.diffusion.clip, text_sd3)."""

from __future__ import annotations

import torch

# the 77-token chunks of a prompt (clip_tokens: Flux's text module reads them without the towers)
from flowrun.diffusion.clip_tokens import CHUNK, END, START
from flowrun.diffusion.configs import SD1, SD3, SDXL, SDXL_REFINER
from flowrun.diffusion.model import TextEncoder


class _Injected(torch.nn.Module):
    """The token embedding table, with vectors put in at given (row, position)s: how an embedding's
    vectors enter the text encoder without adding ids (the pooled output finds the end token by id)."""

    def __init__(self, table: torch.nn.Module, at: list[tuple[int, int, torch.Tensor]]):
        super().__init__()
        self.table, self.at = table, at

    def forward(self, input_ids):
        out = self.table(input_ids).clone()
        for row, pos, vector in self.at:
            out[row, pos] = vector.to(out.dtype)
        return out


def _split_ids(chunks, filler: int) -> tuple[list[list[int]], list[tuple[int, int, torch.Tensor]]]:
    """Token ids for the model, with `filler` where an embedding vector goes, and where the vectors go."""
    ids, at = [], []
    for row, chunk in enumerate(chunks):
        line = []
        for pos, (token, _) in enumerate(chunk):
            if isinstance(token, torch.Tensor):
                at.append((row, pos, token))
                line.append(filler)
            else:
                line.append(int(token))
        ids.append(line)
    return ids, at


def _layer_plan(enc: TextEncoder, index: int) -> tuple[int | None, bool]:
    """(hidden-state index or None for the normed last layer, whether to apply the final layer norm)."""
    family = enc.family
    if family in (SDXL, SDXL_REFINER, SD3):
        return (enc.layer_idx if enc.layer_idx is not None else -2), False
    if enc.layer_idx is not None:
        return enc.layer_idx, True
    return (None, True) if family == SD1 else (-2, True)


def _encode_one(enc: TextEncoder, index: int, chunks: list[list[tuple[int, float]]], pad: int):
    model = enc.models[index]
    weighted = any(w != 1.0 for c in chunks for _, w in c)
    ids, at = _split_ids(chunks, filler=0)  # id 0 is never the end token the pooled output looks for
    if weighted:
        ids.append([START, END] + [pad] * (CHUNK - 2))
    layer, norm = _layer_plan(enc, index)
    embeddings = getattr(model, "text_model", model).embeddings
    table = embeddings.token_embedding
    if at:
        embeddings.token_embedding = _Injected(table, at)
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor(ids), output_hidden_states=layer is not None)
    finally:
        embeddings.token_embedding = table
    if layer is None:
        z = out.last_hidden_state
    else:
        n_layers = len(out.hidden_states) - 1
        if not -n_layers <= layer <= -1:
            raise ValueError(f"stop_at_clip_layer {layer} is beyond this text encoder's {n_layers} layers")
        z = out.hidden_states[layer]
        if norm:
            z = getattr(model, "text_model", model).final_layer_norm(z)
    # projected (CLIP-G, OpenCLIP-bigG) or not (CLIP-L: its final-normed end token, what SD3 pools)
    pooled = out.text_embeds[0:1] if hasattr(out, "text_embeds") else out.pooler_output[0:1]
    pieces = []
    for k, chunk in enumerate(chunks):
        zk = z[k:k + 1].clone()
        if weighted:
            empty = z[-1]
            for j, (_, w) in enumerate(chunk):
                if w != 1.0:
                    zk[0, j] = (zk[0, j] - empty[j]) * w + empty[j]
        pieces.append(zk)
    return torch.cat(pieces, dim=1), pooled
