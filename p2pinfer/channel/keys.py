"""Key material of the channel: the node's static X25519 key pair, its identity, and erasure.

The static key pair is made once when the node starts, inside its TEE boundary; attestation
evidence binds its public half (report_data, DESIGN.md "Trust"). Symmetric keys live in
`bytearray`s so they can be overwritten in place; see protocols/channel.md "Erasure" for what
this does and does not guarantee in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import HandshakeError

KEY_BYTES = 32


def wipe(buf: bytearray | memoryview) -> None:
    """Overwrite a mutable buffer with zeros in place (same length, so no reallocation)."""
    buf[:] = bytes(len(buf))


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 with a peer's raw public key; low-order points (all-zero output) are refused."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise HandshakeError("key", "X25519 exchange refused the peer's public key") from None


@dataclass(frozen=True, repr=False)
class ChannelKeyPair:
    """A static X25519 key pair. The private half never leaves this object."""

    _private: X25519PrivateKey
    public: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", public_bytes(self._private.public_key()))

    @classmethod
    def generate(cls) -> ChannelKeyPair:
        return cls(X25519PrivateKey.generate())

    def exchange(self, peer_public: bytes) -> bytes:
        return dh(self._private, peer_public)

    def __repr__(self) -> str:
        return f"ChannelKeyPair(public={self.public.hex()})"


@dataclass(frozen=True)
class ChannelIdentity:
    """Who this end of a channel is: network, libp2p peer id bytes, static channel key pair."""

    network_id: str
    peer_id: bytes
    keys: ChannelKeyPair
