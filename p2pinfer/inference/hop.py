"""How an activation crosses one hop of a route.

`PlainHop` puts the tensor in the step message as a wire tensor. Stronger codecs (an attested
AES-GCM channel per hop) implement the same two calls, so the stage and requester code never
changes with the transport's protection. Each call knows the hop's task, stage and sequence
number so an encrypting codec can bind them as associated data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from p2pinfer.wire import tensor_from_wire, tensor_to_wire


@dataclass(frozen=True)
class HopContext:
    task_id: bytes
    #: index of the stage receiving the tensor (len(route) = the requester's result hop)
    stage: int
    seq: int
    #: the peer on the other side of this hop
    peer_id: str


#: label spaces of one-shot hops (`seal_once`): a stage output fetched by a downstream replica
#: or the requester, and the input the requester sends an auditor. Route hops use stages below
#: 2^30, so no one-shot record can pass for a route step or for the other kind.
SIDE_FETCH = 0x8000_0000
SIDE_AUDIT = 0xC000_0000


def side_label(kind: int, stage: int) -> int:
    """The record-layer stage index of a one-shot hop about `stage` (kind SIDE_FETCH or
    SIDE_AUDIT)."""
    if kind not in (SIDE_FETCH, SIDE_AUDIT) or not 0 <= stage < 1 << 30:
        raise ValueError("a side label needs SIDE_FETCH or SIDE_AUDIT and a stage below 2^30")
    return kind | stage


class HopCodec(Protocol):
    """How an activation crosses one hop: in the clear inside libp2p's Noise stream
    (`PlainHop`) or sealed under an attested channel (`secure_hop.ChannelHop`)."""

    #: "plain" or "channel"
    name: str

    async def pack(self, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]: ...

    async def unpack(
        self, fields: dict[str, Any], ctx: HopContext, *, hidden_size: int,
        dtype: str | tuple[str, ...],
        max_bytes: int,
    ) -> torch.Tensor: ...

    async def seal_once(self, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]:
        """A tensor for a one-shot exchange (a fetch reply, an audit request)."""
        ...

    async def open_once(self, fields: dict[str, Any], ctx: HopContext, *,
                        hidden_size: int | None, dtype: str | tuple[str, ...],
                        max_bytes: int) -> torch.Tensor: ...

    def end_hops(self, task_id: bytes, stage: int | None = None) -> int:
        """Erase the keys of a task's hops (of one stage, or all); returns how many."""
        ...

    @property
    def live_hops(self) -> int:
        """Hops whose keys are held now."""
        ...


class PlainHop:
    """Activations in the clear inside libp2p's Noise-encrypted stream."""

    name = "plain"

    async def pack(self, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]:
        return {"hidden": tensor_to_wire(hidden)}

    async def unpack(
        self, fields: dict[str, Any], ctx: HopContext, *, hidden_size: int,
        dtype: str | tuple[str, ...],
        max_bytes: int,
    ) -> torch.Tensor:
        return tensor_from_wire(
            fields.get("hidden"), max_bytes=max_bytes, dtype=dtype, shape=(1, None, hidden_size)
        )

    async def seal_once(self, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]:
        return {"hidden": tensor_to_wire(hidden)}

    async def open_once(self, fields: dict[str, Any], ctx: HopContext, *,
                        hidden_size: int | None, dtype: str | tuple[str, ...],
                        max_bytes: int) -> torch.Tensor:
        return tensor_from_wire(fields.get("hidden"), max_bytes=max_bytes, dtype=dtype,
                                shape=None if hidden_size is None else (1, None, hidden_size))

    def end_hops(self, task_id: bytes, stage: int | None = None) -> int:
        return 0  # no keys

    @property
    def live_hops(self) -> int:
        return 0
