"""Attested channel handshake, sans-IO (protocols/channel.md "Handshake").

Four msgpack envelopes (`v`, `t`; p2pinfer.wire.messages), initiator I, responder R:

    1  I -> R  ch-hello    proto, net, peer, s (static key), e (ephemeral key), n (nonce)
    2  R -> I  ch-reply    peer, s, e, n, ev (evidence binding s_R to n_I)
    3  I -> R  ch-finish   ev (evidence binding s_I to n_R), conf (I's confirmation tag)
    4  R -> I  ch-confirm  conf (R's confirmation tag)

Each side's evidence answers the other's fresh challenge nonce, as in /p2pinfer/attest/1.0.0:
report_data = trust's binding of (network id, peer id, static channel key, peer's nonce).
The shared secret mixes four X25519 results, ee || es || se || ss (named from I's side, as in
the Noise framework's KK pattern, noiseprotocol.org section 7.5): the ephemeral pairs give
forward secrecy, the static pairs tie the keys to the attested channel keys. Keys are
HKDF-SHA256 (RFC 5869) with the transcript hash as salt; the confirmation tags are HMAC-SHA256
over the transcript hash, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pinfer.errors import UnsupportedVersion, WireError
from p2pinfer.wire.messages import Message, decode_message, encode_message, error_message

from .config import ChannelConfig
from .errors import HandshakeError
from .keys import KEY_BYTES, ChannelIdentity, dh, public_bytes, wipe
from .record import (
    CHANNEL_ID_BYTES,
    INITIATOR_TO_RESPONDER,
    RESPONDER_TO_INITIATOR,
    RecordLayer,
)

PROTOCOL_ID = "/p2pinfer/channel/1.0.0"
HANDSHAKE_VERSION = 1
NONCE_BYTES = 32
TAG_BYTES = 32
MAX_PEER_ID = 128
MAX_NETWORK_ID = 1024  # as the attestation binding (protocols/attest.md)
KEYS_INFO = b"p2pinfer/channel/1 keys"
CONFIRM_I = b"p2pinfer/channel/1 initiator finished"
CONFIRM_R = b"p2pinfer/channel/1 responder finished"
ENVELOPE_SLACK = 4096  # bytes of a handshake message beyond its evidence

HELLO, REPLY, FINISH, CONFIRM = "ch-hello", "ch-reply", "ch-finish", "ch-confirm"


@dataclass(frozen=True)
class AttestationHooks:
    """What the channel needs from `p2pinfer.trust`, as plain callables.

    report_data(network_id, peer_id, channel_public_key, nonce) -> 64 bytes
    attest(report_data) -> evidence bytes (the wire form of an evidence bundle)
    verify(evidence, expected_report_data, peer_id) -> claims; raises on any failed check
    (an exception with a `.check` attribute has that name reported as `evidence_check`).
    """

    report_data: Callable[[str, bytes, bytes, bytes], bytes]
    attest: Callable[[bytes], bytes]
    verify: Callable[[bytes, bytes, bytes], Any]


@dataclass(frozen=True)
class PeerAttestation:
    """What the handshake established about the remote end."""

    peer_id: bytes
    static_key: bytes
    evidence_digest: bytes  # SHA-256 of the evidence bytes it sent
    claims: Any  # whatever `AttestationHooks.verify` returned


class _State(Enum):
    START = "start"
    WAIT_REPLY = "wait-reply"
    WAIT_HELLO = "wait-hello"
    WAIT_FINISH = "wait-finish"
    WAIT_CONFIRM = "wait-confirm"
    DONE = "done"
    FAILED = "failed"


def transcript_hash(*fields: bytes) -> bytes:
    """SHA-256 over the fields, each preceded by its u32 big-endian length."""
    h = hashlib.sha256()
    for f in fields:
        h.update(len(f).to_bytes(4, "big"))
        h.update(f)
    return h.digest()


def _take(okm: bytearray, start: int) -> bytearray:
    out = bytearray(KEY_BYTES)
    with memoryview(okm) as view:
        out[:] = view[start : start + KEY_BYTES]
    return out


class _Handshake:
    def __init__(
        self,
        identity: ChannelIdentity,
        attestation: AttestationHooks,
        *,
        remote_peer_id: bytes | None = None,
        remote_static_key: bytes | None = None,
        config: ChannelConfig | None = None,
    ) -> None:
        net = identity.network_id
        if not isinstance(net, str) or not 0 < len(net.encode()) <= MAX_NETWORK_ID:
            raise ValueError(f"network id must be 1..{MAX_NETWORK_ID} bytes of UTF-8")
        if not 0 < len(identity.peer_id) <= MAX_PEER_ID:
            raise ValueError(f"peer id must be 1..{MAX_PEER_ID} bytes")
        for name, value in (
            ("remote_peer_id", remote_peer_id),
            ("remote_static_key", remote_static_key),
        ):
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"{name} must be bytes")
        self._identity = identity
        self._hooks = attestation
        self._expect_peer = remote_peer_id
        self._expect_static = remote_static_key
        self.config = config or ChannelConfig()
        self._state = _State.START
        self._eph: X25519PrivateKey | None = X25519PrivateKey.generate()
        self._e = public_bytes(self._eph.public_key())
        self._n = os.urandom(NONCE_BYTES)
        self._keys: list[bytearray] = []  # i2r, r2i, confirm_i, confirm_r
        self._th = b""
        self._peer: PeerAttestation | None = None
        self._record: RecordLayer | None = None

    # -- public state ----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._state is _State.DONE

    @property
    def peer(self) -> PeerAttestation:
        if self._peer is None:
            raise HandshakeError("state", "the peer is not verified yet")
        return self._peer

    @property
    def transcript(self) -> bytes:
        """The transcript hash (public; both ends hold the same value once keys are derived)."""
        return self._th

    def channel(self) -> RecordLayer:
        """The record layer of the completed handshake (once; its keys move into it)."""
        if self._state is not _State.DONE or self._record is None:
            raise HandshakeError("state", "handshake not complete or channel already taken")
        record, self._record = self._record, None
        return record

    def error_reply(self, err: HandshakeError) -> bytes:
        """The typed error message to send the peer when this side rejects the handshake."""
        return error_message(f"handshake:{err.check}", err.detail[:200])

    def abort(self) -> None:
        """Erase every secret this handshake still holds."""
        self._state = _State.FAILED
        self._erase()
        if self._record is not None:
            self._record.close()
            self._record = None

    # -- shared steps ----------------------------------------------------------------------

    def _erase(self) -> None:
        self._eph = None
        for key in self._keys:
            wipe(key)
        self._keys = []

    def _step(
        self,
        data: bytes | bytearray | memoryview,
        handler: Callable[[Message], bytes | None],
        expect: str,
    ) -> bytes | None:
        try:
            msg = self._decode(data, expect)
            return handler(msg)
        except BaseException:  # typed failure or not: no secret outlives a failed handshake
            self.abort()
            raise

    def _decode(self, data: bytes | bytearray | memoryview, expect: str) -> Message:
        limit = self.config.max_evidence + ENVELOPE_SLACK
        try:
            msg = decode_message(
                data, expect={expect}, versions=(HANDSHAKE_VERSION,), max_size=limit
            )
        except UnsupportedVersion as err:
            raise HandshakeError("version", str(err)) from None
        except WireError as err:
            raise HandshakeError("message", str(err)) from None
        if msg.t == "error":
            code = msg.fields.get("code")
            text = msg.fields.get("message")
            code = code[:64] if isinstance(code, str) else "?"
            text = text[:200] if isinstance(text, str) else ""
            raise HandshakeError("rejected", f"peer rejected the handshake: {code}: {text!r}")
        return msg

    @staticmethod
    def _field(
        msg: Message, name: str, size: int | None = None, max_size: int | None = None
    ) -> Any:
        try:
            value = msg.get(name, bytes)
        except WireError as err:
            raise HandshakeError("message", str(err)) from None
        if size is not None and len(value) != size:
            raise HandshakeError("message", f"field {name!r} must be {size} bytes")
        if max_size is not None and not 0 < len(value) <= max_size:
            raise HandshakeError("message", f"field {name!r} must be 1..{max_size} bytes")
        return value

    def _check_remote(self, peer_id: bytes, static_key: bytes, eph: bytes) -> None:
        if self._expect_peer is not None and not hmac.compare_digest(peer_id, self._expect_peer):
            raise HandshakeError("peer-id", "the peer claims another peer id than expected")
        if self._expect_static is not None and not hmac.compare_digest(
            static_key, self._expect_static
        ):
            raise HandshakeError("static-key", "the peer's channel key is not the expected one")
        if hmac.compare_digest(eph, self._e) or hmac.compare_digest(
            static_key, self._identity.keys.public
        ):
            raise HandshakeError("key", "the peer reflected this side's own key")

    def _attest(self, nonce: bytes) -> bytes:
        ident = self._identity
        try:
            rd = self._hooks.report_data(ident.network_id, ident.peer_id, ident.keys.public, nonce)
            evidence = self._hooks.attest(rd)
        except Exception as err:
            raise HandshakeError(
                "attest", f"local attestation failed: {type(err).__name__}"
            ) from err
        if not isinstance(evidence, (bytes, bytearray)) or len(evidence) > self.config.max_evidence:
            raise HandshakeError("attest", "local evidence is not bytes or exceeds max_evidence")
        return bytes(evidence)

    def _verify(
        self, evidence: bytes, peer_id: bytes, static_key: bytes, nonce: bytes
    ) -> PeerAttestation:
        net = self._identity.network_id
        try:
            expected = self._hooks.report_data(net, peer_id, static_key, nonce)
            claims = self._hooks.verify(evidence, expected, peer_id)
        except Exception as err:  # anything the verifier raises rejects the peer
            check = getattr(err, "check", None)
            raise HandshakeError(
                "evidence",
                f"peer evidence rejected: {type(err).__name__}: {err}"[:300],
                evidence_check=check if isinstance(check, str) else None,
            ) from err
        return PeerAttestation(peer_id, static_key, hashlib.sha256(evidence).digest(), claims)

    def _derive(self, ikm: bytearray, th: bytes) -> None:
        # five keys: the first four as before, the fifth is the exporter (hop keys); HKDF's
        # output is a prefix code, so asking for more does not change the first four
        okm = bytearray(5 * KEY_BYTES)
        HKDF(SHA256(), len(okm), salt=th, info=KEYS_INFO).derive_into(ikm, okm)
        wipe(ikm)
        self._keys = [_take(okm, i * KEY_BYTES) for i in range(5)]
        wipe(okm)
        self._th = th

    def _tag(self, index: int, label: bytes) -> bytes:
        return hmac.new(self._keys[index], label + self._th, hashlib.sha256).digest()

    def _finish(self, send_direction: int) -> None:
        i2r, r2i = self._keys[0], self._keys[1]
        send, recv = (i2r, r2i) if send_direction == INITIATOR_TO_RESPONDER else (r2i, i2r)
        self._record = RecordLayer(
            self._th[:CHANNEL_ID_BYTES],
            send,
            recv,
            send_direction=send_direction,
            config=self.config,
            exporter=self._keys[4],
        )
        for key in self._keys[2:4]:
            wipe(key)
        self._keys = []
        self._eph = None
        self._state = _State.DONE

    def _expect_state(self, state: _State) -> None:
        if self._state is not state:
            raise HandshakeError("state", f"unexpected message in state {self._state.value}")


def _ikm(ee: bytes, es: bytes, se: bytes, ss: bytes) -> bytearray:
    ikm = bytearray(4 * KEY_BYTES)
    for i, part in enumerate((ee, es, se, ss)):
        ikm[i * KEY_BYTES : (i + 1) * KEY_BYTES] = part
    return ikm


class InitiatorHandshake(_Handshake):
    """The dialing side: `start()`, then `receive(reply)` -> finish, `receive(confirm)` -> None."""

    def start(self) -> bytes:
        self._expect_state(_State.START)
        ident = self._identity
        self._state = _State.WAIT_REPLY
        return encode_message(
            HELLO,
            {
                "proto": PROTOCOL_ID,
                "net": ident.network_id,
                "peer": ident.peer_id,
                "s": ident.keys.public,
                "e": self._e,
                "n": self._n,
            },
            v=HANDSHAKE_VERSION,
        )

    def receive(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Process the responder's next message; return the message to send, if any."""
        if self._state is _State.WAIT_REPLY:
            return self._step(data, self._on_reply, REPLY)
        if self._state is _State.WAIT_CONFIRM:
            return self._step(data, self._on_confirm, CONFIRM)
        self.abort()
        raise HandshakeError("state", f"no message expected in state {self._state.value}")

    def _on_reply(self, msg: Message) -> bytes:
        peer_r = self._field(msg, "peer", max_size=MAX_PEER_ID)
        s_r = self._field(msg, "s", KEY_BYTES)
        e_r = self._field(msg, "e", KEY_BYTES)
        n_r = self._field(msg, "n", NONCE_BYTES)
        ev_r = self._field(msg, "ev", max_size=self.config.max_evidence)
        self._check_remote(peer_r, s_r, e_r)
        self._peer = self._verify(ev_r, peer_r, s_r, self._n)
        ev_i = self._attest(n_r)
        ident = self._identity
        assert self._eph is not None
        ikm = _ikm(
            dh(self._eph, e_r),
            dh(self._eph, s_r),
            ident.keys.exchange(e_r),
            ident.keys.exchange(s_r),
        )
        th = transcript_hash(
            PROTOCOL_ID.encode(),
            ident.network_id.encode(),
            ident.peer_id,
            peer_r,
            ident.keys.public,
            s_r,
            self._e,
            e_r,
            hashlib.sha256(ev_i).digest(),
            self._peer.evidence_digest,
            self._n,
            n_r,
        )
        self._derive(ikm, th)
        self._state = _State.WAIT_CONFIRM
        return encode_message(
            FINISH, {"ev": ev_i, "conf": self._tag(2, CONFIRM_I)}, v=HANDSHAKE_VERSION
        )

    def _on_confirm(self, msg: Message) -> None:
        conf = self._field(msg, "conf", TAG_BYTES)
        if not hmac.compare_digest(conf, self._tag(3, CONFIRM_R)):
            raise HandshakeError("confirmation", "the responder's confirmation tag is wrong")
        self._finish(INITIATOR_TO_RESPONDER)


class ResponderHandshake(_Handshake):
    """The accepting side: `receive(hello)` -> reply, `receive(finish)` -> confirm (done)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = _State.WAIT_HELLO
        self._hello: tuple[bytes, bytes, bytes, bytes] | None = None
        self._evidence_digest = b""

    def receive(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Process the initiator's next message; return the message to send."""
        if self._state is _State.WAIT_HELLO:
            return self._step(data, self._on_hello, HELLO)
        if self._state is _State.WAIT_FINISH:
            return self._step(data, self._on_finish, FINISH)
        self.abort()
        raise HandshakeError("state", f"no message expected in state {self._state.value}")

    def _on_hello(self, msg: Message) -> bytes:
        try:
            proto = msg.get("proto", str)
            net = msg.get("net", str)
        except WireError as err:
            raise HandshakeError("message", str(err)) from None
        if proto != PROTOCOL_ID:
            raise HandshakeError("version", f"protocol {proto[:64]!r} is not {PROTOCOL_ID}")
        ident = self._identity
        if net != ident.network_id:
            raise HandshakeError("network", f"peer is on network {net[:64]!r}")
        peer_i = self._field(msg, "peer", max_size=MAX_PEER_ID)
        s_i = self._field(msg, "s", KEY_BYTES)
        e_i = self._field(msg, "e", KEY_BYTES)
        n_i = self._field(msg, "n", NONCE_BYTES)
        self._check_remote(peer_i, s_i, e_i)
        evidence = self._attest(n_i)
        self._evidence_digest = hashlib.sha256(evidence).digest()
        self._hello = (peer_i, s_i, e_i, n_i)
        self._state = _State.WAIT_FINISH
        return encode_message(
            REPLY,
            {
                "peer": ident.peer_id,
                "s": ident.keys.public,
                "e": self._e,
                "n": self._n,
                "ev": evidence,
            },
            v=HANDSHAKE_VERSION,
        )

    def _on_finish(self, msg: Message) -> bytes:
        assert self._hello is not None and self._eph is not None
        peer_i, s_i, e_i, n_i = self._hello
        ev_i = self._field(msg, "ev", max_size=self.config.max_evidence)
        conf = self._field(msg, "conf", TAG_BYTES)
        self._peer = self._verify(ev_i, peer_i, s_i, self._n)
        ident = self._identity
        ikm = _ikm(
            dh(self._eph, e_i),
            ident.keys.exchange(e_i),
            dh(self._eph, s_i),
            ident.keys.exchange(s_i),
        )
        th = transcript_hash(
            PROTOCOL_ID.encode(),
            ident.network_id.encode(),
            peer_i,
            ident.peer_id,
            s_i,
            ident.keys.public,
            e_i,
            self._e,
            self._peer.evidence_digest,
            self._evidence_digest,
            n_i,
            self._n,
        )
        self._derive(ikm, th)
        if not hmac.compare_digest(conf, self._tag(2, CONFIRM_I)):
            raise HandshakeError("confirmation", "the initiator's confirmation tag is wrong")
        reply = encode_message(CONFIRM, {"conf": self._tag(3, CONFIRM_R)}, v=HANDSHAKE_VERSION)
        self._finish(RESPONDER_TO_INITIATOR)
        return reply
