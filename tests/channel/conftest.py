"""Shared fixtures for channel tests: a small Ed25519-signed stand-in for a TEE attester, a
direct sans-IO handshake runner, and an in-memory framed stream pair."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pinfer.channel import (
    AttestationHooks,
    ChannelConfig,
    ChannelIdentity,
    ChannelKeyPair,
    InitiatorHandshake,
    ResponderHandshake,
)
from p2pinfer.errors import P2PInferError

NETWORK = "testnet-channel"
EVIDENCE_TAG = b"fake-tee-evidence"


class FakeAttestationError(P2PInferError):
    def __init__(self, check: str) -> None:
        super().__init__(f"fake evidence rejected: {check}")
        self.check = check


def fake_report_data(network_id: str, peer_id: bytes, key: bytes, nonce: bytes) -> bytes:
    h = hashlib.sha512(b"p2pinfer test binding")
    for part in (network_id.encode(), peer_id, key, nonce):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def fake_verify(evidence: bytes, expected_report_data: bytes, peer_id: bytes) -> dict:
    """Evidence = signer public key (32) || report data (64) || Ed25519 signature (64)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(evidence) != 160:
        raise FakeAttestationError("format")
    pub, rd, sig = evidence[:32], evidence[32:96], evidence[96:]
    if pub != peer_id:  # in these tests a peer id is its Ed25519 public key
        raise FakeAttestationError("signer")
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, EVIDENCE_TAG + rd)
    except InvalidSignature:
        raise FakeAttestationError("signature") from None
    if not hmac.compare_digest(rd, expected_report_data):
        raise FakeAttestationError("binding")
    return {"kind": "fake", "peer": pub.hex()}


@dataclass
class FakePeer:
    """A peer with a signing key standing in for its TEE, and its channel identity."""

    network: str = NETWORK
    signing: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    keys: ChannelKeyPair = field(default_factory=ChannelKeyPair.generate)
    # optional evidence mutator, to play a lying or broken attester
    tamper: Callable[[bytes], bytes] | None = None
    attested: list[bytes] = field(default_factory=list)

    @property
    def peer_id(self) -> bytes:
        return self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def identity(self) -> ChannelIdentity:
        return ChannelIdentity(self.network, self.peer_id, self.keys)

    def attest(self, report_data: bytes) -> bytes:
        evidence = self.peer_id + report_data + self.signing.sign(EVIDENCE_TAG + report_data)
        self.attested.append(evidence)
        return self.tamper(evidence) if self.tamper else evidence

    @property
    def hooks(self) -> AttestationHooks:
        return AttestationHooks(fake_report_data, self.attest, fake_verify)


def handshakes(
    a: FakePeer, b: FakePeer, config: ChannelConfig | None = None, **kwargs
) -> tuple[InitiatorHandshake, ResponderHandshake]:
    i = InitiatorHandshake(a.identity, a.hooks, config=config, **kwargs)
    r = ResponderHandshake(b.identity, b.hooks, config=config)
    return i, r


def run_handshake(
    i: InitiatorHandshake,
    r: ResponderHandshake,
    tap: Callable[[int, bytes], bytes] | None = None,
) -> None:
    """Carry the four messages between the two state machines; `tap(index, msg)` may alter."""
    t = tap or (lambda _i, m: m)
    m2 = r.receive(t(1, i.start()))
    m3 = i.receive(t(2, m2))
    m4 = r.receive(t(3, m3))
    assert i.receive(t(4, m4)) is None


class MemoryStream:
    """One end of an in-memory framed stream; `tap` sees (and may replace or drop) each frame."""

    def __init__(self, send, recv, tap=None, wire=None) -> None:
        self._send = send
        self._recv = recv
        self._tap = tap
        self.wire = wire if wire is not None else []

    async def send(self, data) -> None:
        data = bytes(data)
        self.wire.append(data)
        if self._tap is not None:
            data = self._tap(data)
            if data is None:
                return
        await self._send.send(data)

    async def recv(self) -> bytes:
        return await self._recv.receive()


def stream_pair(tap_ab=None, tap_ba=None) -> tuple[MemoryStream, MemoryStream]:
    ab_send, ab_recv = trio.open_memory_channel(64)
    ba_send, ba_recv = trio.open_memory_channel(64)
    return MemoryStream(ab_send, ba_recv, tap_ab), MemoryStream(ba_send, ab_recv, tap_ba)
