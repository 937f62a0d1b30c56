"""Activations sealed under attested channels: the `ChannelHop` codec.

Every activation crossing a hop is sealed with AES-256-GCM under keys of that hop alone,
derived from the attested channel between the two peers (protocols/channel.md "Hop keys"); the
channel is opened on first use and cached per peer by the node's `NodeAttestation`. A step
message carries, instead of `hidden`:

| field | type | meaning |
|---|---|---|
| `channel` | bin(16) | id of the pair channel the hop keys come from |
| `hop_salt` | bin(16) | the sender's random salt for this hop's keys (same on every step) |
| `meta` | bin | a data record: msgpack `{dtype, shape, seq}` of the activation |
| `sealed` | bin | the next record: a tensor record of the raw little-endian tensor bytes |

Both records carry the task id and stage in their authenticated header and follow each other in
the hop's strict sequence, so `meta` describes exactly the tensor after it; `seq` in it must equal
the step's. The tensor is sealed straight from its own memory into a send buffer the hop reuses
(ciphertext only), and opened into the buffer the received tensor then lives in: no plaintext
copy is made on either side. Replayed, reordered and tampered records are dropped (the step is
refused) and counted in `counters`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
import torch
import trio

from p2pinfer.channel import ChannelError, RecordKind, RecordLayer, RecordRejected
from p2pinfer.channel.errors import DecryptError, ReplayError
from p2pinfer.channel.keys import wipe
from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.inference.client import StageFailure
from p2pinfer.inference.hop import HopContext
from p2pinfer.services.attest import MAX_SEEN_SALTS, NodeAttestation, PairChannel, PeerNotAttested
from p2pinfer.services.tensor import tensor_wire_view
from p2pinfer.wire import tensor_from_wire

SALT_BYTES = 16
CHANNEL_ID_BYTES = 16
MAX_HEADER = 512
#: records at least this large are sealed and opened in a worker thread
OFFLOAD_BYTES = 1 << 20


class HopRefused(StageFailure):
    """An activation cannot go to this peer under an attested channel (its evidence was
    rejected, it has none, or the channel could not be opened). The requester re-plans."""

    code = "unattested"


class SealedRecordRejected(WireError):
    """A sealed activation was replayed, reordered, tampered with or malformed: dropped."""

    code = "rejected-record"


class PlaintextRefused(WireError):
    """A plaintext activation arrived where attested channels are required."""

    code = "channel-required"


def hop_label(task_id: bytes, stage: int) -> bytes:
    return bytes(task_id) + stage.to_bytes(4, "big")


@dataclass(eq=False)
class _Hop:
    pair: PairChannel
    salt: bytes
    layer: RecordLayer
    #: reused ciphertext buffer of large frames (sender side)
    buffer: bytearray = field(default_factory=bytearray)

    def erase(self) -> None:
        self.layer.close()
        self.buffer = bytearray(0)


def _meta(wire: dict[str, Any], seq: int) -> bytearray:
    return bytearray(msgpack.packb({"dtype": wire["dtype"], "shape": wire["shape"], "seq": seq}))


def _read_meta(payload: bytearray, seq: int) -> dict[str, Any]:
    if len(payload) > MAX_HEADER:
        raise SealedRecordRejected("activation description is too long")
    try:
        meta = msgpack.unpackb(bytes(payload), max_bin_len=0, max_str_len=64,
                               max_array_len=8, max_map_len=4)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise SealedRecordRejected("activation description is not msgpack") from None
    if not isinstance(meta, dict) or set(meta) != {"dtype", "shape", "seq"}:
        raise SealedRecordRejected("activation description has the wrong keys")
    if meta["seq"] != seq:
        raise SealedRecordRejected(f"sealed activation is for step {meta['seq']!r}, not {seq}")
    return meta


class ChannelHop:
    """Seal every activation of a hop under the attested channel to the peer on its other
    side. One instance per node, shared by its stage server and requester clients."""

    name = "channel"

    def __init__(self, attestation: NodeAttestation, *, offload_bytes: int = OFFLOAD_BYTES
                 ) -> None:
        self.attestation = attestation
        self.offload_bytes = offload_bytes
        self._send: dict[tuple[bytes, int, str], _Hop] = {}
        self._recv: dict[tuple[bytes, int, str], _Hop] = {}
        self.counters: dict[str, int] = {
            "sealed": 0, "opened": 0, "replayed": 0, "tampered": 0, "malformed": 0,
            "plaintext_refused": 0, "hops_erased": 0,
        }

    def __repr__(self) -> str:
        return f"ChannelHop(send_hops={len(self._send)}, recv_hops={len(self._recv)})"

    @property
    def live_hops(self) -> int:
        return len(self._send) + len(self._recv)

    async def _run(self, size: int, fn: Any) -> Any:
        if self.offload_bytes and size >= self.offload_bytes:
            return await trio.to_thread.run_sync(fn)
        return fn()

    # -- sending -----------------------------------------------------------------------------
    async def _send_hop(self, ctx: HopContext) -> _Hop:
        key = (ctx.task_id, ctx.stage, ctx.peer_id)
        hop = self._send.get(key)
        if hop is not None and not hop.pair.closed and not hop.layer.closed:
            return hop
        fresh = await self._new_send_hop(ctx)
        if hop is not None:
            hop.erase()
        self._send[key] = fresh
        return fresh

    async def _new_send_hop(self, ctx: HopContext) -> _Hop:
        try:
            pair = await self.attestation.channel_to(ctx.peer_id)
        except (P2PInferError, OSError) as e:
            raise HopRefused(ctx.stage, ctx.peer_id, f"no attested channel to stage "
                             f"{ctx.stage} ({ctx.peer_id}): {e}") from None
        salt = secrets.token_bytes(SALT_BYTES)
        return _Hop(pair, salt, pair.channel.derive_hop(hop_label(ctx.task_id, ctx.stage), salt))

    async def pack(self, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]:
        return await self._seal(await self._send_hop(ctx), hidden, ctx)

    async def seal_once(self, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]:
        """Seal one tensor under a hop of its own (fresh salt, erased at once): a fetched
        output or an audit input, outside the route's step sequence. `ctx.stage` should be a
        `side_label` (p2pinfer.inference.hop)."""
        hop = await self._new_send_hop(ctx)
        try:
            fields = await self._seal(hop, hidden, ctx)
            fields["sealed"] = bytes(fields["sealed"])
            return fields
        finally:
            hop.erase()

    async def _seal(self, hop: _Hop, hidden: torch.Tensor, ctx: HopContext) -> dict[str, Any]:
        wire = tensor_wire_view(hidden)
        data = wire["data"]
        layer = hop.layer
        try:
            meta = layer.seal(_meta(wire, ctx.seq), task_id=ctx.task_id, stage=ctx.stage,
                              kind=RecordKind.DATA)
            size = RecordLayer.frame_size(len(data), ctx.task_id)
            seal = partial(layer.seal, data, task_id=ctx.task_id, stage=ctx.stage,
                           kind=RecordKind.TENSOR)
            if self.offload_bytes and len(data) >= self.offload_bytes:
                # large: seal from the tensor's memory into the hop's reused buffer, in a
                # worker thread; the step is written before this hop packs again
                if len(hop.buffer) < size:
                    hop.buffer = bytearray(0)
                    hop.buffer = bytearray(size)
                frame: Any = memoryview(hop.buffer)[:size]
                await trio.to_thread.run_sync(partial(seal, out=frame))
            else:
                frame = seal()
        except ChannelError as e:
            raise HopRefused(ctx.stage, ctx.peer_id, f"sealing failed: {e}") from None
        self.counters["sealed"] += 1
        return {"channel": hop.pair.channel_id, "hop_salt": hop.salt, "meta": meta,
                "sealed": frame}

    # -- receiving ---------------------------------------------------------------------------
    def _recv_hop(self, ctx: HopContext, channel_id: bytes, salt: bytes) -> _Hop:
        key = (ctx.task_id, ctx.stage, ctx.peer_id)
        hop = self._recv.get(key)
        if (hop is not None and hmac.compare_digest(hop.salt, salt)
                and hmac.compare_digest(hop.pair.channel_id, channel_id)
                and not hop.pair.closed and not hop.layer.closed):
            return hop
        fresh = self._new_recv_hop(ctx, channel_id, salt)
        if hop is not None:
            hop.erase()
        self._recv[key] = fresh
        return fresh

    def _new_recv_hop(self, ctx: HopContext, channel_id: bytes, salt: bytes) -> _Hop:
        pair = self.attestation.channel_by_id(channel_id)
        if pair is None:
            raise PeerNotAttested("no attested channel with that id (the sender must open one)")
        if pair.peer_id != ctx.peer_id:
            raise SealedRecordRejected("the channel belongs to another peer")
        if salt in pair.seen_salts:
            self.counters["replayed"] += 1
            raise SealedRecordRejected("a hop salt was used again (replayed hop)")
        if len(pair.seen_salts) >= MAX_SEEN_SALTS:
            pair.channel.close()
            raise PeerNotAttested("the channel served its last hop; open a new one")
        pair.seen_salts.add(bytes(salt))
        return _Hop(pair, bytes(salt), pair.channel.derive_hop(hop_label(ctx.task_id, ctx.stage),
                                                               salt))

    async def _open(self, hop: _Hop, frame: bytes, size: int) -> Any:
        try:
            return await self._run(size, partial(hop.layer.open, frame))
        except RecordRejected as e:
            name = ("replayed" if isinstance(e, ReplayError)
                    else "tampered" if isinstance(e, DecryptError) else "malformed")
            self.counters[name] += 1
            raise SealedRecordRejected(f"sealed activation dropped ({name}): {e}") from None
        except ChannelError as e:  # the hop's layer closed itself after too many rejections
            self.counters["malformed"] += 1
            raise SealedRecordRejected(f"sealed activation dropped: {e}") from None

    def _check_binding(self, record: Any, kind: RecordKind, ctx: HopContext) -> None:
        if record.kind != kind or record.task_id != ctx.task_id or record.stage != ctx.stage:
            wipe(record.payload)
            self.counters["malformed"] += 1
            raise SealedRecordRejected("sealed record is bound to another task, stage or kind")

    async def unpack(
        self, fields: dict[str, Any], ctx: HopContext, *, hidden_size: int,
        dtype: str | tuple[str, ...],
        max_bytes: int,
    ) -> torch.Tensor:
        return await self._unseal(fields, ctx, hidden_size=hidden_size, dtype=dtype,
                                  max_bytes=max_bytes, once=False)

    async def open_once(self, fields: dict[str, Any], ctx: HopContext, *, hidden_size: int | None,
                        dtype: str | tuple[str, ...], max_bytes: int) -> torch.Tensor:
        """Open a tensor sealed with `seal_once` (its hop's keys are erased at once; a second
        use of its salt is refused as a replay)."""
        return await self._unseal(fields, ctx, hidden_size=hidden_size, dtype=dtype,
                                  max_bytes=max_bytes, once=True)

    async def _unseal(self, fields: dict[str, Any], ctx: HopContext, *, hidden_size: int | None,
                      dtype: str | tuple[str, ...], max_bytes: int, once: bool
                      ) -> torch.Tensor:
        sealed, meta, channel_id, salt = (
            fields.get(k) for k in ("sealed", "meta", "channel", "hop_salt"))
        if sealed is None:
            self.counters["plaintext_refused"] += 1
            raise PlaintextRefused("this node takes activations only over attested channels")
        if not isinstance(sealed, (bytes, bytearray)) or not isinstance(meta, (bytes, bytearray)):
            raise WireError("`sealed` and `meta` must be bytes")
        if not isinstance(channel_id, bytes) or len(channel_id) != CHANNEL_ID_BYTES:
            raise WireError("`channel` must be 16 bytes")
        if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
            raise WireError("`hop_salt` must be 16 bytes")
        if len(meta) > MAX_HEADER + 128:
            raise WireError("`meta` is too long")
        overhead = RecordLayer.frame_size(0, ctx.task_id)
        if len(sealed) > max_bytes + overhead:
            raise WireError(f"sealed activation of {len(sealed)} bytes exceeds the limit")
        hop = (self._new_recv_hop if once else self._recv_hop)(ctx, channel_id, salt)
        try:
            record = await self._open(hop, meta, 0)
            self._check_binding(record, RecordKind.DATA, ctx)
            try:
                desc = _read_meta(record.payload, ctx.seq)
            finally:
                wipe(record.payload)
            record = await self._open(hop, sealed, len(sealed))
            self._check_binding(record, RecordKind.TENSOR, ctx)
        finally:
            if once:
                hop.erase()
        wire = {"dtype": desc["dtype"], "shape": desc["shape"], "data": record.payload}
        try:
            # the decrypted buffer becomes the tensor's memory: no copy of the plaintext
            tensor = tensor_from_wire(wire, max_bytes=max_bytes, dtype=dtype,
                                      shape=(1, None, hidden_size))
        except WireError:
            wipe(record.payload)
            raise
        self.counters["opened"] += 1
        return tensor

    # -- teardown ----------------------------------------------------------------------------
    def end_hops(self, task_id: bytes, stage: int | None = None) -> int:
        """Erase the hop keys of a task's session (one stage's hops, or all of the task's)."""
        n = 0
        for table in (self._send, self._recv):
            for key in [k for k in table if k[0] == task_id and (stage is None or k[1] == stage)]:
                table.pop(key).erase()
                n += 1
        self.counters["hops_erased"] += n
        return n
