"""The prompt syntax, without torch: ComfyUI's emphasis rules and `embedding:NAME` words. The planner
reads prompts with it (which embedding files a prompt needs: they enter the cache key, and a missing one
is an error at validation); the text encoder tokenizes with it."""

from __future__ import annotations

EMBEDDING = "embedding:"  # a word that starts with this names a textual-inversion embedding


def _parse_parentheses(text: str) -> list[str]:
    out, current, depth = [], "", 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    out.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        out.append(current)
    return out


def token_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Split a prompt into (segment, weight) by ComfyUI's emphasis rules."""
    out: list[tuple[str, float]] = []
    for part in _parse_parentheses(text):
        w = weight
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner = part[1:-1]
            colon = inner.rfind(":")
            w *= 1.1
            if colon > 0:
                try:
                    w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += token_weights(inner, w)
        else:
            out.append((part, weight))
    return out


def _escape(text: str) -> str:
    return text.replace("\\)", "\0\1").replace("\\(", "\0\2")


def _unescape(text: str) -> str:
    return text.replace("\0\1", ")").replace("\0\2", "(")


def prompt_words(text: str) -> list[tuple[str, float]]:
    """The prompt's whitespace-separated words with their weights, as ComfyUI splits them."""
    words = []
    for segment, weight in token_weights(_escape(text), 1.0):
        for word in _unescape(segment).replace("\n", " ").split(" "):
            if word:
                words.append((word, weight))
    return words


def embedding_name(word: str) -> str | None:
    """NAME of an `embedding:NAME` word (trailing commas are punctuation, not part of the name)."""
    if not word.startswith(EMBEDDING):
        return None
    return word[len(EMBEDDING):].rstrip(",") or None


def embedding_names(text: str) -> list[str]:
    """The embeddings a prompt names, in order, each once."""
    names = [embedding_name(w) for w, _ in prompt_words(text)]
    return list(dict.fromkeys(n for n in names if n))
