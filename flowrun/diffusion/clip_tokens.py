"""A prompt as CLIP's 77-token chunks, ComfyUI's way: each whitespace word tokenized on its own and kept
whole in a chunk (start + 75 + end) unless it is 8 tokens or longer, weights from the emphasis syntax,
`embedding:NAME` words as vectors (flowrun.diffusion.clip_tower encodes the chunks)."""

from __future__ import annotations

from typing import Any

from flowrun.diffusion.prompt_syntax import EMBEDDING, embedding_name, prompt_words

START, END = 49406, 49407
CHUNK = 77
MAX_WORD_TOKENS = 8


def tokenize(tokenizer: Any, text: str, pad: int, embedding=None) -> list[list[tuple[Any, float]]]:
    """Chunks of exactly 77 (token, weight) pairs. A token is an id, or a vector for a word of an
    `embedding:NAME`, which `embedding(name)` turns into vectors [n, width] (or None: left out). Without
    `embedding`, such words are text."""
    words: list[list[tuple[Any, float]]] = []
    for word, weight in prompt_words(text):
        name = embedding_name(word) if embedding is not None else None
        if name:
            vectors = embedding(name)  # None: it does not fit this encoder, which leaves it out (as ComfyUI)
            if vectors is not None:
                words.append([(v, weight) for v in vectors])
            trailing = word[len(EMBEDDING) + len(name):]  # commas after the name are text
            if trailing:
                words.append([(t, weight) for t in tokenizer(trailing)["input_ids"][1:-1]])
            continue
        ids = tokenizer(word)["input_ids"][1:-1]
        words.append([(t, weight) for t in ids])
    chunks: list[list[tuple[Any, float]]] = []
    chunk = [(START, 1.0)]
    for group in words:
        large = len(group) >= MAX_WORD_TOKENS
        while group:
            if len(group) + len(chunk) > CHUNK - 1:
                room = CHUNK - len(chunk) - 1
                if large:
                    chunk += group[:room]
                    group = group[room:]
                chunk.append((END, 1.0))
                chunk += [(pad, 1.0)] * (CHUNK - len(chunk))
                chunks.append(chunk)
                chunk = [(START, 1.0)]
            else:
                chunk += group
                group = []
    chunk.append((END, 1.0))
    chunk += [(pad, 1.0)] * (CHUNK - len(chunk))
    chunks.append(chunk)
    return chunks
