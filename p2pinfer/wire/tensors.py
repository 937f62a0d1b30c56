"""Tensor codec: `{dtype, shape, data}` with raw little-endian bytes (protocols/tensor.md).

Decoding checks, in order and before allocating: the map's keys and types, the dtype name
against a fixed table, the shape (at most 8 non-negative dims), that the element count times the
item size fits `max_bytes`, and that it equals the length of `data`. Never pickle.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from p2pinfer.errors import WireError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 8
DEFAULT_MAX_TENSOR = 64 * 1024 * 1024 + 1024

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("p2pinfer's tensor codec assumes a little-endian host")


def tensor_to_wire(t: torch.Tensor) -> dict[str, Any]:
    """Encode a CPU tensor. Non-contiguous or non-CPU tensors are made contiguous on the CPU."""
    name = _NAMES.get(t.dtype)
    if name is None:
        raise ValueError(f"dtype {t.dtype} has no wire name")
    t = t.detach().to("cpu").contiguous()
    data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return {"dtype": name, "shape": list(t.shape), "data": data}


#: dtypes an activation may travel in between stages of mixed precision
ACTIVATION_DTYPES = ("float32", "bfloat16", "float16")


def tensor_from_wire(
    obj: Any,
    *,
    max_bytes: int = DEFAULT_MAX_TENSOR,
    dtype: str | tuple[str, ...] | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> torch.Tensor:
    """Decode a tensor map, optionally requiring a dtype name (or one of several) and a shape
    (None = any size)."""
    if not isinstance(obj, dict):
        raise WireError(f"tensor is a {type(obj).__name__}, expected a map")
    if set(obj) != {"dtype", "shape", "data"}:
        raise WireError("tensor map must have exactly the keys dtype, shape, data")
    name, dims, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(name, str) or name not in DTYPES:
        raise WireError(f"unknown tensor dtype {name!r}")
    if isinstance(dtype, str) and name != dtype:
        raise WireError(f"tensor dtype is {name}, expected {dtype}")
    if isinstance(dtype, tuple) and name not in dtype:
        raise WireError(f"tensor dtype is {name}, expected one of {', '.join(dtype)}")
    if not isinstance(dims, list) or len(dims) > MAX_DIMS:
        raise WireError(f"tensor shape must be a list of at most {MAX_DIMS} dims")
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise WireError("tensor dims must be non-negative integers")
    if shape is not None and (len(shape) != len(dims) or any(
        want is not None and want != got for want, got in zip(shape, dims)
    )):
        raise WireError(f"tensor shape {dims} does not match the expected {list(shape)}")
    if not isinstance(data, (bytes, bytearray)):
        raise WireError("tensor data must be bytes")
    itemsize = torch.empty((), dtype=DTYPES[name]).element_size()
    # an empty tensor may still name absurd dims ([0, 2**40, ...]): bound the shape as if the
    # zero dims were ones, so strides can never overflow
    if math.prod(max(d, 1) for d in dims) * itemsize > max_bytes:
        raise WireError(f"tensor shape {dims} exceeds the limit of {max_bytes} bytes")
    count = math.prod(dims)
    nbytes = count * itemsize
    if nbytes > max_bytes:
        raise WireError(f"tensor of {nbytes} bytes exceeds the limit of {max_bytes}")
    if nbytes != len(data):
        raise WireError(f"tensor data has {len(data)} bytes, shape and dtype need {nbytes}")
    if count == 0:
        return torch.empty(dims, dtype=DTYPES[name])
    buf = data if isinstance(data, bytearray) else bytearray(data)
    return torch.frombuffer(buf, dtype=DTYPES[name]).reshape(dims)
