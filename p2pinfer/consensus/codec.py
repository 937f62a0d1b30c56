"""Bounded msgpack codec and signature checks shared by the vote messages.

Layouts are in protocols/votes.md. Every decoder here bounds the input before unpacking, limits
msgpack container sizes, and raises MalformedVoteMessage (a WireError) or UnsupportedVersion.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pinfer.consensus.errors import MalformedVoteMessage, SignatureInvalid, UnknownPeer
from p2pinfer.errors import UnsupportedVersion, WireError
from p2pinfer.identity import IdentityError, public_key_from_peer_id
from p2pinfer.wire.messages import DecodeLimits, unpack_limited

VERSION = 1
MAX_REPLICAS = 16
#: array and map elements one vote message may hold in all (decoded under this bound, so a
#: message of nested empty arrays costs a small constant times its size)
MAX_VOTE_ITEMS = 8192



class PeerKeys(Protocol):
    """Where verifiers find a peer's Ed25519 public key: a dict, or `InlinedPeerKeys`."""

    def get(self, peer: str, /) -> Ed25519PublicKey | None: ...


class InlinedPeerKeys:
    """Public keys read from libp2p Ed25519 peer ids themselves, which inline the key."""

    def get(self, peer: str, /) -> Ed25519PublicKey | None:
        try:
            return Ed25519PublicKey.from_public_bytes(public_key_from_peer_id(peer))
        except (IdentityError, ValueError):
            return None


def verify_signature(
    keys: PeerKeys, signer: str, signature: bytes, message: bytes, what: str
) -> None:
    """Raise UnknownPeer or SignatureInvalid unless `signer` signed `message`."""
    key = keys.get(signer)
    if key is None:
        raise UnknownPeer(signer)
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureInvalid(what, signer) from None


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack_map(data: bytes, limit: int, what: str) -> dict[str, Any]:
    """Unpack a bounded msgpack map whose `t` is `what` and whose `v` is VERSION."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedVoteMessage(f"{what} is not bytes")
    if len(data) > limit:
        raise MalformedVoteMessage(f"{what} of {len(data)} bytes is over the {limit} byte limit")
    limits = DecodeLimits(
        max_str_len=limit, max_bin_len=limit, max_array_len=4 * MAX_REPLICAS + 4,
        max_map_len=32, max_items=MAX_VOTE_ITEMS, max_depth=8,
    )
    try:
        value = unpack_limited(data, limits)
    except WireError as exc:
        raise MalformedVoteMessage(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedVoteMessage(f"{what} is not a msgpack map")
    version = value.get("v")
    if type(version) is not int:
        raise MalformedVoteMessage(f"{what} has no integer version")
    if version != VERSION:
        raise UnsupportedVersion(f"{what} version {version}, this node speaks {VERSION}")
    if value.get("t") != what:
        raise MalformedVoteMessage(f"message type {value.get('t')!r} is not {what}")
    return value


def require_canonical(data: bytes, encoded: bytes, what: str) -> None:
    if bytes(data) != encoded:
        raise MalformedVoteMessage(f"{what} is not in canonical encoding")


class Fields:
    """Typed, bounded access to the fields of one decoded map."""

    def __init__(self, fields: dict[str, Any], what: str) -> None:
        self.fields = fields
        self.what = what

    def expect_keys(self, keys: list[str]) -> None:
        if list(self.fields) != keys:
            raise MalformedVoteMessage(f"{self.what} fields are not exactly {', '.join(keys)}")

    def str(self, key: str, limit: int) -> str:
        value = self.fields[key]
        if type(value) is not str or len(value) > limit:
            raise MalformedVoteMessage(f"{self.what} field {key} is not a string of <= {limit}")
        return value

    def bytes(self, key: str, limit: int) -> bytes:
        value = self.fields[key]
        if type(value) is not bytes or len(value) > limit:
            raise MalformedVoteMessage(f"{self.what} field {key} is not bytes of <= {limit}")
        return value

    def int(self, key: str, low: int, high: int) -> int:
        value = self.fields[key]
        if type(value) is not int or not (low <= value <= high):
            raise MalformedVoteMessage(f"{self.what} field {key} is not an integer in range")
        return value

    def map(self, key: str) -> dict[str, Any]:
        value = self.fields[key]
        if type(value) is not dict:
            raise MalformedVoteMessage(f"{self.what} field {key} is not a map")
        return value

    def list(self, key: str, limit: int) -> list[Any]:
        value = self.fields[key]
        if type(value) is not list or len(value) > limit:
            raise MalformedVoteMessage(f"{self.what} field {key} is not a list of <= {limit}")
        return value

    def peers(self, key: str) -> tuple[str, ...]:
        value = self.list(key, MAX_REPLICAS)
        if not all(type(peer) is str for peer in value):
            raise MalformedVoteMessage(f"{self.what} field {key} holds a non-string peer id")
        return tuple(value)
