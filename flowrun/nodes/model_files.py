"""What loader nodes share when they open model files: one way of turning a file that is missing, of an
unknown layout or of another family into the node's error (NodeError, rendered with the node's name),
and one way of loading a file through the run's model pool."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from flowrun.errors import NodeError

T = TypeVar("T")


def loading(load: Callable[[], T]) -> T:
    """Run `load()`, turning the ways a model file can be wrong into the node's error."""
    from flowrun.diffusion.detect import CheckpointError

    try:
        return load()
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None


def load_one(ctx, field: str, kind: str, name: str, build: Callable[[Path, str], T], *key) -> T:
    """The model a loader node's file field names, through the run's model pool (shared with other nodes
    loading the same file the same way while anything holds it): `build(path, fingerprint)` makes it, and
    `key` says what else besides the file makes two loads different (device, dtype, type)."""
    fingerprint = ctx.files.fingerprint(field)
    path = loading(lambda: ctx.files.path(kind, name))
    model, = loading(lambda: ctx.models.load((kind, fingerprint, *key), lambda: (build(path, fingerprint),)))
    return model
