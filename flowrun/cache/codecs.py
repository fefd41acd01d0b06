"""One codec per port type: how a node output is turned into bytes for the disk cache, and back.

Storage stays out of compute: nodes return values; these codecs alone decide the bytes. Port types
without a codec (loaded models) are kept in memory only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from flowrun.nodes import ports


@dataclass(frozen=True)
class Codec:
    name: str
    suffix: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def _json_encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _array_encode(value: Any) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"array": np.ascontiguousarray(value)})


def _array_decode(data: bytes) -> Any:
    from safetensors.numpy import load

    return load(data)["array"]


JSON = Codec("json", ".json", _json_encode, lambda b: json.loads(b))
ARRAY = Codec("safetensors-numpy", ".safetensors", _array_encode, _array_decode)

BY_PORT: dict[str, Codec] = {
    ports.INT: JSON,
    ports.FLOAT: JSON,
    ports.STRING: JSON,
    ports.BOOLEAN: JSON,
    ports.IMAGE: ARRAY,
    ports.MASK: ARRAY,
}


def for_port(port_type: str) -> Codec | None:
    """The codec for values of `port_type`, or None when they stay in memory."""
    if port_type in ports.MEMORY_ONLY:
        return None
    return BY_PORT.get(port_type)
