"""Record layer: AES-256-GCM frames with counter nonces, bound to channel, task and stage.

Byte layout (protocols/channel.md "Record frames"), all integers big-endian:

    0   u8   version (1)
    1   u8   kind (1 data, 2 tensor, 3 close)
    2   u8   task id length L (0..64)
    3   u8   flags (0)
    4   u32  stage index
    8   u32  key epoch
    12  u64  sequence number
    20  L    task id
    20+L     ciphertext || 16-byte GCM tag

Nonce (96 bit, NIST SP 800-38D section 8.2.1 deterministic construction):
u32 (direction << 31 | epoch) || u64 sequence. Associated data: channel id (16) || bytes 0..20+L.
Sequence numbers grow by one per frame across epochs and are never reused; a receiver accepts
only a sequence above the last one it accepted. The sender ratchets its key (HKDF-Expand, RFC
5869, like TLS 1.3's KeyUpdate) after a bounded number of frames or bytes and announces the new
epoch in the header; the receiver ratchets to it once a frame under it authenticates.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from .config import ChannelConfig
from .errors import (
    ChannelClosed,
    ChannelError,
    ChannelFailed,
    DecryptError,
    MalformedRecord,
    RecordRejected,
    ReplayError,
)
from .keys import KEY_BYTES, wipe

RECORD_VERSION = 1
HEADER = struct.Struct(">BBBBIIQ")
HEADER_BYTES = HEADER.size  # 20
TAG_BYTES = 16
NONCE = struct.Struct(">IQ")
MAX_TASK_ID = 64
MAX_STAGE = 2**32 - 1
MAX_EPOCH = 2**31 - 1
MAX_SEQ = 2**64 - 1
CHANNEL_ID_BYTES = 16
REKEY_INFO = b"p2pinfer/channel/1 rekey"
HOP_INFO = b"p2pinfer/channel/1 hop"
HOP_ID_INFO = b"p2pinfer/channel/1 hop-id"

INITIATOR_TO_RESPONDER = 0
RESPONDER_TO_INITIATOR = 1


class RecordKind(IntEnum):
    DATA = 1  # opaque bytes (e.g. a msgpack message)
    TENSOR = 2  # tensor wire bytes (p2pinfer.wire.tensors)
    CLOSE = 3  # authenticated end of the channel, empty payload


_KINDS = frozenset(int(k) for k in RecordKind)


@dataclass(frozen=True)
class Record:
    """One authenticated, decrypted frame."""

    kind: RecordKind
    task_id: bytes
    stage: int
    seq: int
    payload: bytearray = field(repr=False)  # plaintext: never in reprs or logs


@dataclass
class RecordStats:
    """Counters of one channel. Rejected frames are dropped and counted here."""

    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    replayed: int = 0  # sequence not above the last accepted one, or a retired epoch
    tampered: int = 0  # failed GCM authentication
    malformed: int = 0  # bad header or length
    skipped: int = 0  # sequence numbers never seen (frames lost or dropped upstream)
    rekeys_sent: int = 0
    rekeys_received: int = 0

    @property
    def failures(self) -> int:
        return self.replayed + self.tampered + self.malformed


def _ratchet(key: bytearray, next_epoch: int) -> bytearray:
    new = bytearray(KEY_BYTES)
    info = REKEY_INFO + next_epoch.to_bytes(4, "big")
    HKDFExpand(SHA256(), KEY_BYTES, info).derive_into(key, new)
    return new


class _TrafficKey:
    """One direction's key, its epoch, and the AEAD built from it."""

    __slots__ = ("aead", "direction", "epoch", "key")

    def __init__(self, key: bytearray, direction: int) -> None:
        self.key = key
        self.direction = direction
        self.epoch = 0
        self.aead: AESGCM | None = AESGCM(key)

    def nonce(self, epoch: int, seq: int) -> bytes:
        return NONCE.pack((self.direction << 31) | epoch, seq)

    def replace(self, key: bytearray, epoch: int, aead: AESGCM | None = None) -> None:
        wipe(self.key)
        self.key = key
        self.epoch = epoch
        self.aead = aead if aead is not None else AESGCM(key)

    def erase(self) -> None:
        wipe(self.key)
        self.aead = None


class RecordLayer:
    """Seals and opens frames of one established channel (sans-IO; not thread-safe).

    Made by a completed handshake. `seal` returns the frame to send; `open` returns a `Record`
    or raises a `RecordRejected` subclass after counting it (the layer stays usable), or
    `ChannelFailed` once `config.max_failures` frames were rejected (keys are then erased).
    """

    def __init__(
        self,
        channel_id: bytes,
        send_key: bytearray,
        recv_key: bytearray,
        *,
        send_direction: int,
        config: ChannelConfig | None = None,
        exporter: bytearray | None = None,
    ) -> None:
        if len(channel_id) != CHANNEL_ID_BYTES:
            raise ValueError("channel id must be 16 bytes")
        if len(send_key) != KEY_BYTES or len(recv_key) != KEY_BYTES:
            raise ValueError("traffic keys must be 32 bytes")
        if send_direction not in (INITIATOR_TO_RESPONDER, RESPONDER_TO_INITIATOR):
            raise ValueError("send_direction must be 0 or 1")
        self.channel_id = bytes(channel_id)
        self.config = config or ChannelConfig()
        self.stats = RecordStats()
        if exporter is not None and len(exporter) != KEY_BYTES:
            raise ValueError("the exporter secret must be 32 bytes")
        self._send = _TrafficKey(send_key, send_direction)
        self._recv = _TrafficKey(recv_key, 1 - send_direction)
        self._exporter = exporter
        self._next_seq = 0
        self._last_seq = -1
        self._epoch_frames = 0
        self._epoch_bytes = 0
        self._closed = False

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_epoch(self) -> int:
        return self._send.epoch

    @property
    def recv_epoch(self) -> int:
        return self._recv.epoch

    def close(self) -> None:
        """Erase both traffic keys (idempotent). Further seal/open raise `ChannelClosed`."""
        self._closed = True
        self._send.erase()
        self._recv.erase()
        if self._exporter is not None:
            wipe(self._exporter)
            self._exporter = None

    def derive_hop(self, label: bytes, salt: bytes) -> RecordLayer:
        """A fresh record layer for one hop of a task, keyed from this channel's exporter
        secret (protocols/channel.md "Hop keys"): both ends derive the same keys from the same
        `label` (task id and stage) and `salt` (16+ random bytes the sender chose, never
        reused), so many hops can share one handshake and still each have strict sequence
        order, their own keys, and their own erasure."""
        self._check_open()
        if self._exporter is None:
            raise ChannelError("this channel has no exporter secret")
        if not 16 <= len(salt) <= 64 or len(label) > 256:
            raise ChannelError("hop salt must be 16..64 bytes and label at most 256")
        okm = bytearray(2 * KEY_BYTES)
        info = HOP_INFO + len(label).to_bytes(4, "big") + bytes(label)
        HKDF(SHA256(), len(okm), salt=bytes(salt), info=info).derive_into(self._exporter, okm)
        i2r, r2i = bytearray(KEY_BYTES), bytearray(KEY_BYTES)
        with memoryview(okm) as view:  # copy without intermediate (unwiped) slices
            i2r[:] = view[:KEY_BYTES]
            r2i[:] = view[KEY_BYTES:]
        wipe(okm)
        direction = self._send.direction
        send, recv = (i2r, r2i) if direction == INITIATOR_TO_RESPONDER else (r2i, i2r)
        h = hashlib.sha256(HOP_ID_INFO + self.channel_id)
        for part in (bytes(salt), bytes(label)):
            h.update(len(part).to_bytes(4, "big") + part)
        return RecordLayer(
            h.digest()[:CHANNEL_ID_BYTES],
            send,
            recv,
            send_direction=direction,
            config=self.config,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed("channel is closed")

    # -- sending ---------------------------------------------------------------------------

    def seal(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        task_id: bytes = b"",
        stage: int = 0,
        kind: RecordKind = RecordKind.DATA,
        out: bytearray | memoryview | None = None,
    ) -> bytearray | memoryview:
        """Encrypt `payload` into one frame bound to (channel, task, stage, seq, kind).

        The frame is a new bytearray, or `out` (of exactly `frame_size(...)` bytes, not
        overlapping `payload`) when given, so a sender can reuse one buffer for large frames.
        """
        self._check_open()
        if not isinstance(task_id, (bytes, bytearray)) or len(task_id) > MAX_TASK_ID:
            raise ChannelError(f"task id must be at most {MAX_TASK_ID} bytes")
        if not isinstance(stage, int) or not 0 <= stage <= MAX_STAGE:
            raise ChannelError("stage index must be an integer in [0, 2**32)")
        if int(kind) not in _KINDS:
            raise ChannelError(f"unknown record kind {kind!r}")
        n = len(payload)
        if n > self.config.max_payload:
            raise ChannelError(
                f"payload of {n} bytes exceeds the limit of {self.config.max_payload}"
            )
        if kind == RecordKind.CLOSE and n:
            raise ChannelError("a close record carries no payload")
        hdr_len = HEADER_BYTES + len(task_id)
        if out is not None and len(out) != hdr_len + n + TAG_BYTES:
            raise ChannelError("the output buffer must be exactly the frame size")
        if self._next_seq > MAX_SEQ:
            self.close()
            raise ChannelClosed("sequence numbers exhausted")
        cfg = self.config
        if self._epoch_frames and (
            self._epoch_frames >= cfg.rekey_after_messages
            or self._epoch_bytes + n > cfg.rekey_after_bytes
        ):
            self._rekey_send()
        seq = self._next_seq
        epoch = self._send.epoch
        frame: bytearray | memoryview = bytearray(hdr_len + n + TAG_BYTES) if out is None else out
        HEADER.pack_into(frame, 0, RECORD_VERSION, int(kind), len(task_id), 0, stage, epoch, seq)
        frame[HEADER_BYTES:hdr_len] = task_id
        ad = self.channel_id + bytes(frame[:hdr_len])
        assert self._send.aead is not None
        with memoryview(frame) as view:
            self._send.aead.encrypt_into(self._send.nonce(epoch, seq), payload, ad, view[hdr_len:])
        self._next_seq = seq + 1
        self._epoch_frames += 1
        self._epoch_bytes += n
        self.stats.sent += 1
        self.stats.bytes_sent += n
        return frame

    @staticmethod
    def frame_size(payload_bytes: int, task_id: bytes = b"") -> int:
        """The size of the frame `seal` makes for a payload of this length."""
        return HEADER_BYTES + len(task_id) + payload_bytes + TAG_BYTES

    def seal_tensor(
        self, tensor_wire_bytes: bytes | bytearray | memoryview, task_id: bytes, stage: int
    ) -> bytearray | memoryview:
        """Seal encoded tensor bytes (`p2pinfer.wire.tensors`) for `task_id` at `stage`."""
        return self.seal(tensor_wire_bytes, task_id=task_id, stage=stage, kind=RecordKind.TENSOR)

    def seal_close(self) -> bytearray | memoryview:
        """Seal the authenticated close record, then erase the keys."""
        frame = self.seal(b"", kind=RecordKind.CLOSE)
        self.close()
        return frame

    def _rekey_send(self) -> None:
        epoch = self._send.epoch + 1
        if epoch > MAX_EPOCH:
            self.close()
            raise ChannelClosed("key epochs exhausted")
        self._send.replace(_ratchet(self._send.key, epoch), epoch)
        self._epoch_frames = 0
        self._epoch_bytes = 0
        self.stats.rekeys_sent += 1

    # -- receiving -------------------------------------------------------------------------

    def open(
        self, frame: bytes | bytearray | memoryview, *, out: bytearray | None = None
    ) -> Record:
        """Authenticate and decrypt one frame. A close record erases the keys on return.

        `out`, a spare bytearray at least as long as the payload and not viewed by anyone,
        is shrunk to the payload and receives the plaintext instead of a new allocation.
        """
        self._check_open()
        try:
            record = self._open(frame, out)
        except RecordRejected as err:
            if isinstance(err, ReplayError):
                self.stats.replayed += 1
            elif isinstance(err, DecryptError):
                self.stats.tampered += 1
            else:
                self.stats.malformed += 1
            if self.stats.failures >= self.config.max_failures:
                self.close()
                raise ChannelFailed(
                    f"channel closed after {self.stats.failures} rejected frames"
                ) from err
            raise
        if record.kind == RecordKind.CLOSE:
            self.close()
        return record

    def open_tensor(self, frame: bytes | bytearray | memoryview) -> Record:
        """Open a frame that must be a tensor record."""
        record = self.open(frame)
        if record.kind != RecordKind.TENSOR:
            raise ChannelError(f"expected a tensor record, got {record.kind.name.lower()}")
        return record

    def _open(self, frame: bytes | bytearray | memoryview, spare: bytearray | None) -> Record:
        n = len(frame)
        if n < HEADER_BYTES + TAG_BYTES:
            raise MalformedRecord(f"frame of {n} bytes is shorter than a record")
        version, kind, tlen, flags, stage, epoch, seq = HEADER.unpack_from(frame, 0)
        if version != RECORD_VERSION:
            raise MalformedRecord(f"record version {version} is not supported")
        if kind not in _KINDS:
            raise MalformedRecord(f"unknown record kind {kind}")
        if flags:
            raise MalformedRecord("reserved record flags are set")
        if tlen > MAX_TASK_ID:
            raise MalformedRecord(f"task id of {tlen} bytes exceeds {MAX_TASK_ID}")
        hdr_len = HEADER_BYTES + tlen
        if n < hdr_len + TAG_BYTES:
            raise MalformedRecord("frame is shorter than its header and tag")
        plen = n - hdr_len - TAG_BYTES
        if plen > self.config.max_payload:
            raise MalformedRecord(f"payload of {plen} bytes exceeds {self.config.max_payload}")
        if kind == RecordKind.CLOSE and plen:
            raise MalformedRecord("a close record carries no payload")
        if seq <= self._last_seq:
            raise ReplayError(f"sequence {seq} is not above the last accepted {self._last_seq}")
        current = self._recv.epoch
        if epoch < current:
            raise ReplayError(f"frame under retired key epoch {epoch} (current {current})")
        if epoch - current > self.config.max_epoch_skip:
            raise MalformedRecord(f"key epoch {epoch} is too far ahead of {current}")

        trial: list[bytearray] = []
        if epoch == current:
            aead = self._recv.aead
            assert aead is not None
        else:
            key = self._recv.key
            for step in range(current + 1, epoch + 1):
                key = _ratchet(key, step)
                trial.append(key)
            aead = AESGCM(trial[-1])
        if spare is not None and len(spare) >= plen and spare is not frame:
            del spare[plen:]  # shrinks in place: the pages stay mapped
            out = spare
        else:
            out = bytearray(plen)
        with memoryview(frame) as view:
            ad = self.channel_id + bytes(view[:hdr_len])
            try:
                aead.decrypt_into(self._recv.nonce(epoch, seq), view[hdr_len:], ad, out)
            except InvalidTag:
                wipe(out)
                for key in trial:
                    wipe(key)
                raise DecryptError(f"frame {seq} failed authentication") from None
            task_id = bytes(view[HEADER_BYTES:hdr_len])
        if trial:
            for key in trial[:-1]:
                wipe(key)
            self._recv.replace(trial[-1], epoch, aead)
            self.stats.rekeys_received += epoch - current
        self.stats.skipped += seq - self._last_seq - 1
        self._last_seq = seq
        self.stats.received += 1
        self.stats.bytes_received += plen
        return Record(RecordKind(kind), task_id, stage, seq, out)
