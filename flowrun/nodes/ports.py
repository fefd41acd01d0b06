"""Port types: the tags on edges, named as in ComfyUI, and which of them may feed which."""

from __future__ import annotations

import typing

MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
MASK = "MASK"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
ANY = "*"

ALL = (MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK, INT, FLOAT, STRING, BOOLEAN)

# Loaded models are large and process-bound: they stay in memory and never go to the disk cache.
MEMORY_ONLY = frozenset({MODEL, CLIP, VAE})


def compatible(source: str, target: str) -> bool:
    """Whether an output of type `source` may feed an input of type `target`."""
    if source == target or ANY in (source, target):
        return True
    return source == INT and target == FLOAT  # an int is a valid float, never the other way round


def of_annotation(annotation: typing.Any) -> str:
    """The port type of a literal field, from its Python annotation (for links into `with:` fields)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return of_annotation(type(values[0])) if values else ANY
    if origin is typing.Annotated:
        return of_annotation(typing.get_args(annotation)[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        kinds = {of_annotation(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else ANY
    return {bool: BOOLEAN, int: INT, float: FLOAT, str: STRING}.get(annotation, ANY)
