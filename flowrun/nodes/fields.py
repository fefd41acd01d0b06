"""Field rules that several node families share: size limits, seeds, names that must stay in their folder."""

from __future__ import annotations

from pydantic import field_validator

from flowrun.safepath import relative_name_problem

MAX_RESOLUTION = 16384  # ComfyUI's limit for widths and heights
SEED_MAX = 2**64 - 1
LEAVES_MODELS = "the name would leave the models folder"


def stays_inside(field: str, what: str):
    """A field validator refusing names that would leave their folder (`..`, absolute paths, NUL bytes)."""

    def check(cls, v: str) -> str:
        problem = relative_name_problem(v)
        if problem:
            raise ValueError(f"{what}: {problem}")
        return v

    return field_validator(field)(classmethod(check))


def check_batch(count: int, want: int, field: str, other: str) -> None:
    """A batch of `count` may stand beside one of `want` when it is 1 (repeated) or equal; else a NodeError
    naming both inputs (ComfyUI would cycle or cut the batch without a word)."""
    from flowrun.errors import NodeError

    if count not in (1, want):
        raise NodeError(f"'{field}' has a batch of {count} but '{other}' has {want}: give 1 or {want}")
