"""One codec per port type: how a node output is turned into bytes for the disk cache, and back.

Storage stays out of compute: nodes return values; these codecs alone decide the bytes. Port types
without a codec (loaded models) are kept in memory only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

from flowrun import values
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


class NotStorable(TypeError):
    """A value that holds something no codec writes (a ControlNet riding on a conditioning): it stays in
    the memory cache only."""


def _flatten(value: Any, tensors: dict) -> Any:
    """Replace every tensor in a nest of lists, dicts and port values (flowrun.values) by a reference;
    collect the tensors."""
    if hasattr(value, "detach") and hasattr(value, "dtype"):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, values.Conditioning):
        return {"__conditioning__": [_flatten(v, tensors) for v in value]}
    if type(value).__name__ in values.STRUCTURED and dataclasses.is_dataclass(value):
        return {"__value__": type(value).__name__,
                "fields": [[f.name, _flatten(getattr(value, f.name), tensors)] for f in dataclasses.fields(value)]}
    if isinstance(value, dict):
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__list__": [_flatten(v, tensors) for v in value],
                "tuple": isinstance(value, tuple)}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise NotStorable(f"a {type(value).__name__} cannot be written to the disk cache")


def _unflatten(node: Any, tensors: dict) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__conditioning__" in node:
            return values.Conditioning(_unflatten(v, tensors) for v in node["__conditioning__"])
        if "__value__" in node:
            return values.STRUCTURED[node["__value__"]](**{k: _unflatten(v, tensors) for k, v in node["fields"]})
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unflatten(v, tensors) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
    return node


def _torch_encode(value: Any) -> bytes:
    from safetensors.torch import save

    tensors: dict = {}
    skeleton = _flatten(value, tensors)
    return save(tensors, metadata={"flowrun": json.dumps(skeleton)})


def _torch_decode(data: bytes) -> Any:
    from safetensors.torch import load

    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
    return _unflatten(json.loads(meta["flowrun"]), tensors)


JSON = Codec("json", ".json", _json_encode, lambda b: json.loads(b))
TORCH = Codec("safetensors-torch", ".safetensors", _torch_encode, _torch_decode)
ARRAY = Codec("safetensors-numpy", ".safetensors", _array_encode, _array_decode)

BY_PORT: dict[str, Codec] = {
    ports.INT: JSON,
    ports.FLOAT: JSON,
    ports.STRING: JSON,
    ports.BOOLEAN: JSON,
    ports.IMAGE: ARRAY,
    ports.MASK: ARRAY,
    ports.LATENT: TORCH,  # flowrun.values.Latent
    ports.CONDITIONING: TORCH,  # flowrun.values.Conditioning of CondEntry
    ports.SIGMAS: TORCH,  # a 1-D float tensor
    ports.SAMPLER: TORCH,  # flowrun.values.Sampler (no tensors: its fields ride in the metadata)
    ports.NOISE: TORCH,  # flowrun.values.Noise
    ports.CLIP_VISION_OUTPUT: TORCH,  # flowrun.values.ClipVisionOutput
}


def for_port(port_type: str) -> Codec | None:
    """The codec for values of `port_type`, or None when they stay in memory."""
    if port_type in ports.MEMORY_ONLY:
        return None
    return BY_PORT.get(port_type)
