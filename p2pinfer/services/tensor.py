"""`/p2pinfer/tensor/1.0.0`: send a tensor; the receiver echoes or stores it
(protocols/tensor-transfer.md). Used by the demo and the benchmarks, and its zero-copy view
(`tensor_wire_view`) by every hop that sends activations."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from p2pinfer.errors import WireError
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.net.streams import reply_message
from p2pinfer.wire import DTYPES, Message, encode_message, tensor_from_wire

TENSOR_PROTOCOL = "tensor"
#: tensors kept by `store` requests, one per sending peer, oldest dropped first
MAX_STORED_TENSORS = 16

_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def tensor_wire_view(t: Any) -> dict[str, Any]:
    """Like `tensor_to_wire`, but `data` is a view of the tensor's memory (no copy). The
    tensor must stay unchanged until the message is written."""
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        raise ValueError(f"dtype {t.dtype} has no wire name")
    t = t.detach().to("cpu").contiguous()
    data: Any = memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else b""
    return {"dtype": name, "shape": list(t.shape), "data": data}


def check_tensor_map(obj: Any, *, max_bytes: int) -> None:
    """The checks of `tensor_from_wire` without building the tensor (used to echo one)."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise WireError("tensor map must have exactly the keys dtype, shape, data")
    name, dims, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(name, str) or name not in DTYPES:
        raise WireError(f"unknown tensor dtype {name!r}")
    if not isinstance(dims, list) or len(dims) > 8:
        raise WireError("tensor shape must be a list of at most 8 dims")
    count = 1
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise WireError("tensor dims must be non-negative integers")
        count *= d
    if not isinstance(data, bytes):
        raise WireError("tensor data must be bytes")
    nbytes = count * torch.empty((), dtype=DTYPES[name]).element_size()
    if nbytes > max_bytes:
        raise WireError(f"tensor of {nbytes} bytes exceeds the limit of {max_bytes}")
    if nbytes != len(data):
        raise WireError(f"tensor data has {len(data)} bytes, shape and dtype need {nbytes}")


class TensorService:
    """Both sides of the tensor protocol for one node."""

    def __init__(self, network: PeerNetwork) -> None:
        self.network = network
        self.max_bytes = network.config.limits.max_tensor_bytes
        #: the last tensor each peer asked us to store
        self.stored: dict[str, torch.Tensor] = {}

    async def serve(self, msg: Message, peer_id: str) -> bytes:
        if msg.t != "tensor":
            raise WireError(f"unexpected message type {msg.t!r}")
        mode = msg.get("mode", str, "echo")
        wire = msg.get("tensor", dict)
        if mode == "echo":
            check_tensor_map(wire, max_bytes=self.max_bytes)
            return reply_message("tensor", {"tensor": wire})
        if mode == "store":
            tensor = tensor_from_wire(wire, max_bytes=self.max_bytes)
            if peer_id not in self.stored and len(self.stored) >= MAX_STORED_TENSORS:
                self.stored.pop(next(iter(self.stored)))
            self.stored[peer_id] = tensor
            digest = hashlib.sha256(wire["data"]).digest()
            return encode_message("stored", {"sha256": digest, "nbytes": len(wire["data"])})
        raise WireError(f"unknown tensor mode {mode[:32]!r}")

    async def send(self, peer_id: str, tensor: Any, *, timeout: float | None = None) -> Any:
        """Send `tensor` and return the echoed copy."""
        reply = await self.network.request(
            peer_id, TENSOR_PROTOCOL, "tensor", {"tensor": tensor_wire_view(tensor), "mode": "echo"},
            timeout=timeout, expect={"tensor"})
        return tensor_from_wire(reply.get("tensor", dict), max_bytes=self.max_bytes)

    async def store(self, peer_id: str, tensor: Any, *, timeout: float | None = None) -> bytes:
        """Send `tensor` to be stored by the peer; returns the SHA-256 it computed."""
        reply = await self.network.request(
            peer_id, TENSOR_PROTOCOL, "tensor", {"tensor": tensor_wire_view(tensor), "mode": "store"},
            timeout=timeout, expect={"stored"})
        return reply.get("sha256", bytes)
