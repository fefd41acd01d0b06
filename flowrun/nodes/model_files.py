"""What loader nodes share when they open model files: one way of turning a file that is missing, of an
unknown layout or of another family into the node's error (NodeError, rendered with the node's name)."""

from __future__ import annotations

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
