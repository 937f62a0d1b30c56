"""The three calls the channel handshake needs from attestation, bundled with a policy.

`ChannelAttestation(attester, policy)` offers `report_data`, `attest` (bytes out) and `verify`
(bytes in, `VerifiedClaims` out), matching `p2pinfer.channel.AttestationHooks`. Simulated
evidence is checked against the Ed25519 key inside the peer's libp2p id.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from p2pinfer.trust import binding
from p2pinfer.trust.attester import Attester
from p2pinfer.trust.claims import ClaimsCache, VerifiedClaims
from p2pinfer.trust.errors import SignatureInvalid, TeeUnavailable
from p2pinfer.trust.evidence import KIND_SIMULATED, EvidenceBundle
from p2pinfer.trust.policy import Policy
from p2pinfer.trust.verify import verify_bundle

# libp2p peer id of an Ed25519 key: identity multihash (0x00, length 36) of the protobuf
# PublicKey {Type: Ed25519 (1), Data: 32 bytes} = 08 01 12 20 || key.
_ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def ed25519_key_from_peer_id(peer_id: bytes) -> bytes | None:
    """The raw Ed25519 public key inlined in a libp2p peer id, or None for other key types."""
    if len(peer_id) == 38 and peer_id[:6] == _ED25519_PEER_ID_PREFIX:
        return bytes(peer_id[6:])
    return None


class ChannelAttestation:
    """Local evidence and remote verification for one node, under one policy."""

    def __init__(
        self,
        attester: Attester | None,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        cache: ClaimsCache | None = None,
        tdx_collateral: bytes | None = None,
        gpu_rims: list[bytes] | None = None,
    ) -> None:
        self._attester = attester
        self.policy = policy
        self._clock = clock
        self.cache = cache if cache is not None else ClaimsCache()
        self._collateral = tdx_collateral
        self._rims = gpu_rims

    @staticmethod
    def report_data(
        network_id: str, peer_id: bytes, channel_public_key: bytes, nonce: bytes
    ) -> bytes:
        return binding.report_data(network_id, peer_id, channel_public_key, nonce)

    def attest(self, report_data: bytes) -> bytes:
        if self._attester is None:
            raise TeeUnavailable("this node has no attester (no TEE, simulation off)")
        return self._attester.attest(report_data).encode()

    def verify(
        self, evidence: bytes, expected_report_data: bytes, peer_id: bytes
    ) -> VerifiedClaims:
        bundle = EvidenceBundle.decode(evidence)
        peer_key = ed25519_key_from_peer_id(bytes(peer_id))
        if bundle.kind == KIND_SIMULATED and peer_key is None:
            raise SignatureInvalid(
                "simulated evidence needs a peer id with an Ed25519 key", check="signer"
            )
        now = int(self._clock())
        claims = verify_bundle(
            bundle,
            expected_report_data=expected_report_data,
            policy=self.policy,
            now=now,
            peer_public_key=peer_key,
            collateral=self._collateral,
            gpu_rims=self._rims,
        )
        self.cache.put(bytes(peer_id), bundle.digest(), claims, now)
        return claims
