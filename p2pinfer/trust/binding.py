"""Binding of attestation evidence to a channel key (protocols/attest.md, "Binding").

    report_data = SHA-512(TAG || lp(network id) || lp(peer id) || lp(X25519 key) || lp(nonce))

where lp(x) is x prefixed with its length as a big-endian u32. The 64-byte result fills the
REPORT_DATA field of an SEV-SNP report or a TDX quote exactly. A GPU (SPDM) nonce is derived
from it, so GPU evidence is bound to the same channel.
"""

from __future__ import annotations

import hashlib
import hmac

from p2pinfer.trust.errors import BindingMismatch

TAG = b"p2pinfer/attest/report-data/v1"
GPU_NONCE_TAG = b"p2pinfer/attest/gpu-nonce/v1"
X25519_KEY_LEN = 32
NONCE_LEN = 32
MAX_FIELD_LEN = 1024


def _lp(field: bytes) -> bytes:
    return len(field).to_bytes(4, "big") + field


def report_data(network_id: str, peer_id: bytes, channel_public_key: bytes, nonce: bytes) -> bytes:
    """The 64 bytes a node puts in its evidence for this network, peer, channel key and nonce."""
    net = network_id.encode("utf-8")
    if not net or len(net) > MAX_FIELD_LEN:
        raise ValueError("network id must be 1..1024 bytes of UTF-8")
    if not peer_id or len(peer_id) > MAX_FIELD_LEN:
        raise ValueError("peer id must be 1..1024 bytes")
    if len(channel_public_key) != X25519_KEY_LEN:
        raise ValueError("channel public key must be a 32-byte X25519 key")
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 32 bytes")
    h = hashlib.sha512(TAG)
    for field in (net, bytes(peer_id), bytes(channel_public_key), bytes(nonce)):
        h.update(_lp(field))
    return h.digest()


def gpu_nonce(report_data_: bytes) -> bytes:
    """The 32-byte SPDM nonce a GPU signs, derived from the CPU evidence's report data."""
    return hashlib.sha256(GPU_NONCE_TAG + bytes(report_data_)).digest()


def check_binding(actual: bytes, expected: bytes, what: str = "report data") -> None:
    """Constant-time comparison; raises `BindingMismatch` when they differ."""
    if not hmac.compare_digest(bytes(actual), bytes(expected)):
        raise BindingMismatch(f"{what} does not match the expected channel binding")
