"""Signed fingerprint claims and vote tallies, and their canonical msgpack encoding.

Byte layouts are specified in protocols/votes.md (sections "Claim" and "Tally"). Every message
is a msgpack map with `v` (version) and `t` (type), keys in the order listed there, the Ed25519
signature `sig` last. The signature covers a domain tag and the encoding of the map without
`sig`; the network id is inside, so a claim from one network is never valid on another.
Decoders bound the input size before unpacking, check every field's type and range, and accept
only the canonical encoding (re-encoding must give the same bytes), so one statement has one
encoding and one digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pinfer.consensus.codec import (
    MAX_REPLICAS,
    VERSION,
    Fields,
    PeerKeys,
    pack,
    require_canonical,
    unpack_map,
    verify_signature,
)
from p2pinfer.consensus.errors import FingerprintError, MalformedVoteMessage
from p2pinfer.consensus.fingerprint import (
    PRECISION_CLASSES,
    SCHEME,
    Fingerprint,
    FingerprintContext,
)

CLAIM_TAG = b"p2pinfer/votes/claim/1\x00"
TALLY_TAG = b"p2pinfer/votes/tally/1\x00"

MAX_FINGERPRINT_BYTES = 1 << 20  # 8192 tokens at rank 32
MAX_CLAIM_BYTES = MAX_FINGERPRINT_BYTES + 4096
MAX_TALLY_BYTES = 16384
MAX_NETWORK_ID = 64
MAX_TASK_ID = 64
MAX_PEER_ID = 128
MAX_STAGE = 1 << 16
MAX_STEP = 1 << 32
SIGNATURE_SIZE = 64


@dataclass(frozen=True)
class FingerprintClaim:
    """A replica's signed statement: "my output for (task, stage, step) has this fingerprint".

    `replicas` is m, the number of replicas the signed task route gives the stage; all claims
    of one vote carry the same m, which fixes what counts as a majority. `precision` is the
    class the replica computed in (`float32` or `bfloat16`, fingerprint.PRECISION_CLASSES),
    signed with the fingerprint: it fixes the tolerance every comparison of this claim uses.
    """

    network_id: str
    task_id: bytes
    stage: int
    step: int
    replicas: int
    replica: str
    fingerprint: Fingerprint
    signature: bytes
    precision: str = "float32"

    sealed: bytes = b""

    @property
    def context(self) -> FingerprintContext:
        return FingerprintContext(self.network_id, self.task_id, self.stage, self.step,
                                  self.sealed)

    def signed_bytes(self) -> bytes:
        return CLAIM_TAG + pack(_claim_body(self))

    def encode(self) -> bytes:
        return pack({**_claim_body(self), "sig": self.signature})

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding; names this claim in tallies."""
        return hashlib.sha256(self.encode()).digest()

    def verify(self, keys: PeerKeys) -> None:
        """Raise UnknownPeer or SignatureInvalid unless the replica's signature verifies."""
        verify_signature(keys, self.replica, self.signature, self.signed_bytes(),
                         "fingerprint claim")

    def __repr__(self) -> str:
        return (f"FingerprintClaim(task={self.task_id.hex()}, stage={self.stage}, "
                f"step={self.step}, replica={self.replica}, m={self.replicas})")


def sign_claim(
    key: Ed25519PrivateKey,
    replica: str,
    context: FingerprintContext,
    replicas: int,
    fingerprint: Fingerprint,
    precision: str = "float32",
) -> FingerprintClaim:
    """Sign a fingerprint claim for `context` as `replica` (whose public key is `key`'s), for
    an output computed in precision class `precision`."""
    unsigned = FingerprintClaim(context.network_id, context.task_id, context.stage, context.step,
                                replicas, replica, fingerprint, b"\x00" * SIGNATURE_SIZE,
                                precision, context.sealed)
    _check_claim_fields(unsigned)
    return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))


def decode_claim(data: bytes) -> FingerprintClaim:
    """Decode a canonical claim; raises MalformedVoteMessage / UnsupportedVersion.

    The signature is not checked here: call `claim.verify(keys)`.
    """
    fields = unpack_map(data, MAX_CLAIM_BYTES, "claim")
    reader = Fields(fields, "claim")
    reader.expect_keys(["v", "t", "net", "task", "stage", "step", "m", "replica", "prec", "seal",
                        "fp", "sig"])
    fp = Fields(reader.map("fp"), "claim fingerprint")
    fp.expect_keys(["scheme", "hidden", "dtype", "shape", "data"])
    if fp.str("scheme", 16) != SCHEME:
        raise MalformedVoteMessage(f"claim fingerprint scheme is not {SCHEME}")
    if fp.str("dtype", 16) != "float32":
        raise MalformedVoteMessage("claim fingerprint dtype is not float32")
    shape = fp.list("shape", 2)
    if len(shape) != 2 or not all(type(n) is int and n > 0 for n in shape):
        raise MalformedVoteMessage("claim fingerprint shape is not two positive integers")
    tokens, rank = shape
    values = fp.bytes("data", MAX_FINGERPRINT_BYTES)
    if len(values) != 4 * tokens * rank:
        raise MalformedVoteMessage("claim fingerprint data does not match its shape")
    try:
        fingerprint = Fingerprint(hidden=fp.int("hidden", 1, 1 << 16), tokens=tokens, rank=rank,
                                  values=values)
    except FingerprintError as exc:
        raise MalformedVoteMessage(f"claim fingerprint: {exc}") from None
    claim = FingerprintClaim(
        network_id=reader.str("net", MAX_NETWORK_ID),
        task_id=reader.bytes("task", MAX_TASK_ID),
        stage=reader.int("stage", 0, MAX_STAGE),
        step=reader.int("step", 0, MAX_STEP),
        replicas=reader.int("m", 1, MAX_REPLICAS),
        replica=reader.str("replica", MAX_PEER_ID),
        fingerprint=fingerprint,
        signature=reader.bytes("sig", SIGNATURE_SIZE),
        precision=reader.str("prec", 16),
        sealed=reader.bytes("seal", 32),
    )
    _check_claim_fields(claim)
    require_canonical(data, claim.encode(), "claim")
    return claim


@dataclass(frozen=True)
class VoteTally:
    """A signed summary of one vote, as the reporter saw it, for the votes gossip topic.

    The majority fingerprint is named by the digest of the central majority claim.
    """

    network_id: str
    task_id: bytes
    stage: int
    step: int
    replicas: int
    reporter: str
    majority_digest: bytes
    agreeing: tuple[str, ...]
    dissenting: tuple[str, ...]
    missing: tuple[str, ...]
    signature: bytes

    def signed_bytes(self) -> bytes:
        return TALLY_TAG + pack(_tally_body(self))

    def encode(self) -> bytes:
        return pack({**_tally_body(self), "sig": self.signature})

    def verify(self, keys: PeerKeys) -> None:
        """Raise UnknownPeer or SignatureInvalid unless the reporter's signature verifies."""
        verify_signature(keys, self.reporter, self.signature, self.signed_bytes(), "vote tally")


def sign_tally(
    key: Ed25519PrivateKey,
    reporter: str,
    context: FingerprintContext,
    replicas: int,
    majority_digest: bytes,
    agreeing: tuple[str, ...],
    dissenting: tuple[str, ...],
    missing: tuple[str, ...] = (),
) -> VoteTally:
    """Sign a tally. Peer lists are stored sorted so that a tally has one encoding."""
    unsigned = VoteTally(context.network_id, context.task_id, context.stage, context.step,
                         replicas, reporter, majority_digest, tuple(sorted(agreeing)),
                         tuple(sorted(dissenting)), tuple(sorted(missing)),
                         b"\x00" * SIGNATURE_SIZE)
    _check_tally_fields(unsigned)
    signature = key.sign(unsigned.signed_bytes())
    return replace(unsigned, signature=signature)


def decode_tally(data: bytes) -> VoteTally:
    """Decode a canonical tally; raises MalformedVoteMessage / UnsupportedVersion."""
    fields = unpack_map(data, MAX_TALLY_BYTES, "tally")
    reader = Fields(fields, "tally")
    reader.expect_keys(["v", "t", "net", "task", "stage", "step", "m", "reporter", "majority",
                        "agree", "dissent", "missing", "sig"])
    tally = VoteTally(
        network_id=reader.str("net", MAX_NETWORK_ID),
        task_id=reader.bytes("task", MAX_TASK_ID),
        stage=reader.int("stage", 0, MAX_STAGE),
        step=reader.int("step", 0, MAX_STEP),
        replicas=reader.int("m", 1, MAX_REPLICAS),
        reporter=reader.str("reporter", MAX_PEER_ID),
        majority_digest=reader.bytes("majority", 32),
        agreeing=reader.peers("agree"),
        dissenting=reader.peers("dissent"),
        missing=reader.peers("missing"),
        signature=reader.bytes("sig", SIGNATURE_SIZE),
    )
    _check_tally_fields(tally)
    require_canonical(data, tally.encode(), "tally")
    return tally


# -- encoding pieces shared with evidence.py --------------------------------------------------


def _claim_body(claim: FingerprintClaim) -> dict[str, Any]:
    fp = claim.fingerprint
    return {
        "v": VERSION, "t": "claim", "net": claim.network_id, "task": claim.task_id,
        "stage": claim.stage, "step": claim.step, "m": claim.replicas, "replica": claim.replica,
        "prec": claim.precision, "seal": claim.sealed,
        "fp": {"scheme": SCHEME, "hidden": fp.hidden, "dtype": "float32",
               "shape": [fp.tokens, fp.rank], "data": fp.values},
    }


def _tally_body(tally: VoteTally) -> dict[str, Any]:
    return {
        "v": VERSION, "t": "tally", "net": tally.network_id, "task": tally.task_id,
        "stage": tally.stage, "step": tally.step, "m": tally.replicas, "reporter": tally.reporter,
        "majority": tally.majority_digest, "agree": list(tally.agreeing),
        "dissent": list(tally.dissenting), "missing": list(tally.missing),
    }


def _check_claim_fields(claim: FingerprintClaim) -> None:
    _check_context(claim.network_id, claim.task_id, claim.stage, claim.step, claim.replicas)
    check_peer(claim.replica)
    if claim.precision not in PRECISION_CLASSES:
        raise MalformedVoteMessage(f"claim precision class {claim.precision!r} is not one of "
                                   f"{', '.join(PRECISION_CLASSES)}")
    if len(claim.sealed) not in (0, 32):
        raise MalformedVoteMessage("claim seal is neither empty nor 32 bytes")
    if len(claim.fingerprint.values) > MAX_FINGERPRINT_BYTES:
        raise MalformedVoteMessage("fingerprint over the claim size limit")
    if len(claim.signature) != SIGNATURE_SIZE:
        raise MalformedVoteMessage("claim signature is not 64 bytes")


def _check_tally_fields(tally: VoteTally) -> None:
    _check_context(tally.network_id, tally.task_id, tally.stage, tally.step, tally.replicas)
    check_peer(tally.reporter)
    if len(tally.majority_digest) != 32:
        raise MalformedVoteMessage("tally majority digest is not 32 bytes")
    everyone = tally.agreeing + tally.dissenting + tally.missing
    for peer in everyone:
        check_peer(peer)
    if len(set(everyone)) != len(everyone):
        raise MalformedVoteMessage("tally names a replica twice")
    if len(everyone) != tally.replicas:
        raise MalformedVoteMessage("tally does not account for exactly m replicas")
    if 2 * len(tally.agreeing) <= tally.replicas:
        raise MalformedVoteMessage("tally majority is not more than half of the replicas")
    for group in (tally.agreeing, tally.dissenting, tally.missing):
        if list(group) != sorted(group):
            raise MalformedVoteMessage("tally peer lists are not sorted")
    if len(tally.signature) != SIGNATURE_SIZE:
        raise MalformedVoteMessage("tally signature is not 64 bytes")


def _check_context(network_id: str, task_id: bytes, stage: int, step: int, m: int) -> None:
    if not (1 <= len(network_id) <= MAX_NETWORK_ID):
        raise MalformedVoteMessage(f"network id length outside 1..{MAX_NETWORK_ID}")
    if not (1 <= len(task_id) <= MAX_TASK_ID):
        raise MalformedVoteMessage(f"task id length outside 1..{MAX_TASK_ID}")
    if not (0 <= stage < MAX_STAGE) or not (0 <= step < MAX_STEP):
        raise MalformedVoteMessage("stage or step out of range")
    if not (1 <= m <= MAX_REPLICAS):
        raise MalformedVoteMessage(f"replica count outside 1..{MAX_REPLICAS}")


def check_peer(peer: str) -> None:
    if not (1 <= len(peer) <= MAX_PEER_ID) or not peer.isascii() or not peer.isprintable():
        raise MalformedVoteMessage("peer id is not 1..128 printable ASCII characters")
