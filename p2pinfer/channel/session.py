"""Async driver: runs the handshake over a framed stream and carries records over it.

The stream is anything with `async send(bytes)` and `async recv() -> bytes`, one call per frame
(the node's stream layer provides exactly that). The driver never closes the stream; its owner
does. A `SecureChannel` is an async context manager: leaving it sends an authenticated close
record when it can and erases the keys in every case, cancellation included.
"""

from __future__ import annotations

from contextlib import suppress
from functools import partial
from types import TracebackType
from typing import Protocol, Self

import trio

from p2pinfer.errors import P2PInferError

from .config import ChannelConfig
from .errors import ChannelClosed, HandshakeError, RecordRejected
from .handshake import (
    AttestationHooks,
    InitiatorHandshake,
    PeerAttestation,
    ResponderHandshake,
    _Handshake,
)
from .keys import ChannelIdentity
from .record import Record, RecordKind, RecordLayer, RecordStats

CLOSE_SEND_TIMEOUT = 1.0  # seconds spent trying to tell the peer we close
# what a broken or ended stream may raise: ours (p2pinfer.wire.EndOfStream, WireError), sockets'
# and trio's; libp2p's own stream errors are translated by the node's stream layer
_STREAM_FAILURES = (
    P2PInferError,
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
)


class FramedStream(Protocol):
    """One frame per call.

    `send` must be done with `data` when it returns (written or copied), as a socket's send is;
    `recv` returns a buffer the caller then owns (the channel reuses a received bytearray for a
    later plaintext). A failed or ended stream raises a `P2PInferError` (the node's stream layer
    turns libp2p's errors into `WireError`), `OSError` or `EOFError`.
    """

    async def send(self, data: bytes | bytearray | memoryview) -> None: ...

    async def recv(self) -> bytes | bytearray: ...


class SecureChannel:
    """An established channel: `send`/`recv` records, `stats`, `peer`, `aclose`.

    Sends are serialized (a lock keeps sequence order equal to stream order); so are receives.
    Rejected frames are dropped and counted in `stats`; `recv` raises `ChannelFailed` once too
    many were rejected, and `ChannelClosed` after the peer's authenticated close.
    """

    def __init__(self, stream: FramedStream, record: RecordLayer, peer: PeerAttestation) -> None:
        self._stream = stream
        self._record = record
        self.peer = peer
        self._send_lock = trio.Lock()
        self._recv_lock = trio.Lock()
        self._send_buffer = bytearray(0)
        self._spare: bytearray | None = None  # last large received frame, reused for output

    @property
    def channel_id(self) -> bytes:
        return self._record.channel_id

    @property
    def stats(self) -> RecordStats:
        return self._record.stats

    @property
    def closed(self) -> bool:
        return self._record.closed

    @property
    def send_epoch(self) -> int:
        return self._record.send_epoch

    @property
    def recv_epoch(self) -> int:
        return self._record.recv_epoch

    def derive_hop(self, label: bytes, salt: bytes) -> RecordLayer:
        """A record layer of its own for one hop of a task (see `RecordLayer.derive_hop`)."""
        return self._record.derive_hop(label, salt)

    def _offload(self, size: int) -> bool:
        limit = self._record.config.offload_bytes
        return limit > 0 and size >= limit

    def _recheck_closed(self) -> None:
        # a close() that ran while a worker thread held the record layer may have raced a
        # rekey: erase again (idempotent) so no key survives, and refuse to go on
        if self._record.closed:
            self._record.close()
            raise ChannelClosed("channel was closed")

    async def send(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        task_id: bytes = b"",
        stage: int = 0,
        kind: RecordKind = RecordKind.DATA,
    ) -> None:
        """Seal and send one record. The payload must not change until this returns.

        Large records are sealed in a worker thread into a send buffer the channel keeps and
        reuses (ciphertext only; dropped on close), which the stream must be done with when
        its `send` returns.
        """
        async with self._send_lock:
            seal = partial(self._record.seal, payload, task_id=task_id, stage=stage, kind=kind)
            if self._offload(len(payload)):
                size = RecordLayer.frame_size(len(payload), task_id)
                if len(self._send_buffer) < size:
                    self._send_buffer = bytearray(0)  # let the old one go before allocating
                    self._send_buffer = bytearray(size)
                with memoryview(self._send_buffer)[:size] as frame:
                    await trio.to_thread.run_sync(partial(seal, out=frame))
                    self._recheck_closed()
                    await self._send_frame(frame)
            else:
                await self._send_frame(seal())

    async def _send_frame(self, frame: bytearray | memoryview) -> None:
        try:
            await self._stream.send(frame)
        except _STREAM_FAILURES as err:
            self._record.close()
            raise ChannelClosed(f"the stream failed: {err}") from err

    async def send_tensor(
        self, tensor_wire_bytes: bytes | bytearray | memoryview, task_id: bytes, stage: int
    ) -> None:
        await self.send(tensor_wire_bytes, task_id=task_id, stage=stage, kind=RecordKind.TENSOR)

    async def recv(self) -> Record:
        """The next authenticated record; rejected frames are skipped (and counted)."""
        async with self._recv_lock:
            while True:
                if self._record.closed:
                    raise ChannelClosed("channel is closed")
                try:
                    frame = await self._stream.recv()
                except _STREAM_FAILURES as err:
                    self._record.close()
                    raise ChannelClosed(f"the stream ended without a close record: {err}") from err
                try:
                    if self._offload(len(frame)):
                        spare, self._spare = self._spare, None
                        try:
                            record = await trio.to_thread.run_sync(
                                partial(self._record.open, frame, out=spare)
                            )
                        finally:
                            # the ciphertext is spent: its buffer takes the next plaintext
                            if isinstance(frame, bytearray):
                                self._spare = frame
                        self._recheck_closed()
                    else:
                        record = self._record.open(frame)
                except RecordRejected:
                    continue
                if record.kind == RecordKind.CLOSE:
                    raise ChannelClosed("the peer closed the channel")
                return record

    def close(self) -> None:
        """Erase the keys now, without telling the peer."""
        self._record.close()
        self._release_buffer()

    def _release_buffer(self) -> None:
        if not self._send_lock.locked():  # a send in progress still holds a view of it
            self._send_buffer = bytearray(0)
        self._spare = None

    async def aclose(self) -> None:
        """Send an authenticated close record if possible, then erase the keys."""
        if self._record.closed:
            return
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SEND_TIMEOUT):
                async with self._send_lock:
                    if not self._record.closed:
                        await self._stream.send(self._record.seal_close())
        except _STREAM_FAILURES:
            pass
        finally:
            self._record.close()
            self._release_buffer()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _run(
    hs: _Handshake, stream: FramedStream, first: bytes | None, config: ChannelConfig
) -> SecureChannel:
    async def send(data: bytes) -> None:
        try:
            await stream.send(data)
        except _STREAM_FAILURES as err:
            raise HandshakeError("stream", f"stream failed: {err}") from err

    try:
        with trio.fail_after(config.handshake_timeout):
            if first is not None:
                await send(first)
            while not hs.complete:
                try:
                    data = await stream.recv()
                except _STREAM_FAILURES as err:
                    raise HandshakeError("stream", f"stream failed: {err}") from err
                try:
                    out = hs.receive(data)
                except HandshakeError as err:
                    if err.check != "rejected":
                        with trio.move_on_after(CLOSE_SEND_TIMEOUT), suppress(*_STREAM_FAILURES):
                            await stream.send(hs.error_reply(err))
                    raise
                if out is not None:
                    await send(out)
    except trio.TooSlowError:
        hs.abort()
        raise HandshakeError(
            "timeout", f"no handshake within {config.handshake_timeout} s"
        ) from None
    except BaseException:
        hs.abort()
        raise
    return SecureChannel(stream, hs.channel(), hs.peer)


async def open_channel(
    stream: FramedStream,
    identity: ChannelIdentity,
    attestation: AttestationHooks,
    *,
    remote_peer_id: bytes | None = None,
    remote_static_key: bytes | None = None,
    config: ChannelConfig | None = None,
) -> SecureChannel:
    """Dial side: run the handshake as initiator and return the established channel.

    Raises `HandshakeError` (its `check` names what failed) and erases all secrets on failure.
    """
    config = config or ChannelConfig()
    hs = InitiatorHandshake(
        identity,
        attestation,
        remote_peer_id=remote_peer_id,
        remote_static_key=remote_static_key,
        config=config,
    )
    return await _run(hs, stream, hs.start(), config)


async def accept_channel(
    stream: FramedStream,
    identity: ChannelIdentity,
    attestation: AttestationHooks,
    *,
    remote_peer_id: bytes | None = None,
    remote_static_key: bytes | None = None,
    config: ChannelConfig | None = None,
) -> SecureChannel:
    """Listen side: run the handshake as responder and return the established channel."""
    config = config or ChannelConfig()
    hs = ResponderHandshake(
        identity,
        attestation,
        remote_peer_id=remote_peer_id,
        remote_static_key=remote_static_key,
        config=config,
    )
    return await _run(hs, stream, None, config)
