"""The node's persistent Ed25519 identity and libp2p-compatible peer ids.

The key file is PKCS#8 PEM, created with mode 0600 on first start (or by `p2pinfer keygen`); a
key file readable by group or others is refused, as ssh does. The peer id is the libp2p one:
base58btc of the identity multihash of the protobuf `PublicKey{Type: Ed25519, Data: key}`
(libp2p peer-ids spec), so it is stable across restarts and equal to what libp2p computes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2pinfer.errors import ConfigError, P2PInferError

# protobuf PublicKey: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes
_PB_PREFIX = b"\x08\x01\x12\x20"
# multihash: code 0x00 (identity), length 36
_MH_PREFIX = b"\x00\x24"


class IdentityError(P2PInferError):
    """A peer id or signature does not check out."""


def peer_id_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise IdentityError("an Ed25519 public key has 32 bytes")
    return base58.b58encode(_MH_PREFIX + _PB_PREFIX + public_key).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inlined in a peer id; other key types are refused."""
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise IdentityError(f"peer id {peer_id[:60]!r} is not base58") from None
    if len(raw) != 38 or not raw.startswith(_MH_PREFIX + _PB_PREFIX):
        raise IdentityError("peer id does not inline an Ed25519 key")
    return raw[6:]


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise `IdentityError` unless `signature` is a valid Ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IdentityError("bad signature") from None


def verify_peer_signature(peer_id: str, message: bytes, signature: bytes) -> None:
    verify_signature(public_key_from_peer_id(peer_id), message, signature)


@dataclass(frozen=True, repr=False)
class NodeIdentity:
    """An Ed25519 key pair. `repr` never shows the private key."""

    _private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def seed(self) -> bytes:
        """The 32-byte private seed, for handing to libp2p. Never log it."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"NodeIdentity(peer_id={self.peer_id})"

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    @classmethod
    def load(cls, path: Path) -> NodeIdentity:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"{path}: identity key file not found") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path}: identity key is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 on it"
            )
        if st.st_size > 4096:
            raise ConfigError(f"{path}: identity key file is too large to be a key")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"{path}: not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: identity key must be Ed25519")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[NodeIdentity, bool]:
        """Load the key at `path`, creating it (mode 0600) if absent. Returns (identity, created)."""
        if path.exists():
            return cls.load(path), False
        ident = cls.generate()
        try:
            ident.save(path)
        except FileExistsError:  # another process created it first: use theirs
            return cls.load(path), False
        return ident, True


#: The devnet's bootstrap peer listens here, with a key anyone can derive (DEVNET_KEY_LABEL),
#: so that commands and configs on one machine can name the local devnet's bootstrap address
#: verbatim. A public key gives no authority (every advert is signed by its own peer), but anyone
#: on the machine could stand in for the bootstrap: a node refuses the key unless it listens on
#: loopback only (`NodeConfig.validate`).
DEVNET_PORT = 4001
DEVNET_KEY_LABEL = b"p2pinfer devnet bootstrap key: public, loopback only, v1"


def devnet_identity() -> NodeIdentity:
    """The devnet bootstrap's identity, the same on every machine (its private key is public)."""
    return NodeIdentity.from_seed(hashlib.sha256(DEVNET_KEY_LABEL).digest())


def devnet_bootstrap_addr(port: int = DEVNET_PORT) -> str:
    """The multiaddr (with /p2p/ id) of the local devnet's bootstrap peer."""
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{devnet_identity().peer_id}"
