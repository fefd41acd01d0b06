"""Stable cache keys: sha256 of canonical JSON (never Python's `hash`, which changes between processes)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_SCHEMA = 2  # bump when the makeup of keys changes, so old entries are never misread


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def node_key(*, node_type: str, version: int, code: str, literals: dict, inputs: dict[str, tuple[str, str]],
             fingerprints: dict[str, str] | None = None, extra: dict | None = None) -> str:
    """The cache key of one node: its type and implementation version, the identity of the code that
    computes it (flowrun.cache.code_identity), its literals, the keys of the upstream nodes feeding it
    (which cover their whole subgraphs), and fingerprints of files it reads."""
    return digest({
        "schema": KEY_SCHEMA,
        "type": node_type,
        "version": version,
        "code": code,
        "literals": literals,
        "inputs": {name: list(src) for name, src in sorted(inputs.items())},
        "files": fingerprints or {},
        "extra": extra or {},
    })
