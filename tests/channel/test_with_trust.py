"""The channel with p2pinfer.trust's simulated attester and verifier plugged in as hooks."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pinfer.channel import (
    AttestationHooks,
    ChannelIdentity,
    ChannelKeyPair,
    HandshakeError,
    InitiatorHandshake,
    ResponderHandshake,
)

from .conftest import run_handshake

trust = pytest.importorskip("p2pinfer.trust", reason="p2pinfer.trust is not installed")

NET = "p2pinfer-testnet"


class Node:
    def __init__(self, registry: dict[bytes, bytes], policy: str) -> None:
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id = b"\x00\x24\x08\x01\x12\x20" + pub  # identity multihash of the key
        registry[self.peer_id] = pub
        attester = trust.SimulatedAttester(key, code_digest_=bytes(32))
        chosen = trust.Policy.preset(policy)

        def verify(evidence: bytes, expected: bytes, peer_id: bytes):
            return trust.verify_bundle(
                trust.EvidenceBundle.decode(evidence),
                expected_report_data=expected,
                policy=chosen,
                now=time.time(),
                peer_public_key=registry[peer_id],
            )

        self.hooks = AttestationHooks(
            trust.report_data, lambda rd: attester.attest(rd).encode(), verify
        )
        self.identity = ChannelIdentity(NET, self.peer_id, ChannelKeyPair.generate())


def test_simulated_evidence_opens_a_channel_under_a_testnet_policy():
    registry: dict[bytes, bytes] = {}
    a, b = Node(registry, "testnet"), Node(registry, "testnet")
    i = InitiatorHandshake(a.identity, a.hooks)
    r = ResponderHandshake(b.identity, b.hooks)
    run_handshake(i, r)
    assert i.peer.claims.simulated and r.peer.claims.simulated
    ci, cr = i.channel(), r.channel()
    assert cr.open(ci.seal(b"x")).payload == b"x"


def test_simulated_evidence_is_refused_by_a_production_policy():
    registry: dict[bytes, bytes] = {}
    a, b = Node(registry, "strict"), Node(registry, "testnet")
    with pytest.raises(HandshakeError) as e:
        run_handshake(
            InitiatorHandshake(a.identity, a.hooks), ResponderHandshake(b.identity, b.hooks)
        )
    assert e.value.check == "evidence" and e.value.evidence_check == "simulated"
