"""Capability adverts: what a peer serves, on what hardware, signed by its node key.

Layout and rules: protocols/adverts.md. An advert travels as a msgpack envelope
`{v: 1, t: "advert", body: <bin>, sig: <bin 64>}`. `body` is itself a msgpack map (the record);
the signature is Ed25519 by the claimed peer's key over `SIGNING_TAG || body`, so the bytes that
were signed are exactly the bytes that travel (no canonicalisation step). The record carries the
network id, a sequence number that only grows, and an expiry.

`AdvertValidator` applies the rules in a fixed order (size, envelope, record, network, origin,
signature, expiry, sequence) and raises one `AdvertRejected` subclass whose `reason` names the
failed check; it counts rejections per reason.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.identity import IdentityError, NodeIdentity, verify_peer_signature
from p2pinfer.wire.messages import DecodeLimits, unpack_limited

ADVERT_VERSION = 1
SIGNING_TAG = b"p2pinfer/advert/v1\x00"
SIGNATURE_BYTES = 64
#: an advert may not claim to live longer than this (a stolen advert ages out)
MAX_LIFETIME_MS = 3600 * 1000
#: tolerated clock difference for `issued_ms` in the future
MAX_CLOCK_SKEW_MS = 60 * 1000
DEFAULT_MAX_ADVERT_BYTES = 16 * 1024

MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
MAX_ROLES = 8
MAX_SPANS = 32
MAX_NAME_CHARS = 128
MAX_TEE_DIGEST_BYTES = 64
MAX_PRECISION_CHARS = 16
#: a weights digest is `sha256:` and 64 hex digits
MAX_WEIGHTS_DIGEST_CHARS = 80


# -- errors ------------------------------------------------------------------------------------


class AdvertRejected(P2PInferError):
    """An advert failed validation; `reason` is the short name of the failed check."""

    reason = "malformed"


class AdvertTooLarge(AdvertRejected):
    reason = "oversized"


class AdvertMalformed(AdvertRejected, WireError):
    reason = "malformed"


class AdvertUnsigned(AdvertRejected):
    reason = "unsigned"


class AdvertBadSignature(AdvertRejected):
    reason = "bad-signature"


class AdvertWrongSigner(AdvertRejected):
    """The advert claims a peer other than the one it came from."""

    reason = "wrong-signer"


class AdvertForeignNetwork(AdvertRejected):
    reason = "foreign-network"


class AdvertExpired(AdvertRejected):
    reason = "expired"


class AdvertReplayed(AdvertRejected):
    """The sequence number is not greater than the last accepted one for this peer."""

    reason = "replayed"


REJECT_REASONS = (
    "oversized",
    "malformed",
    "unsigned",
    "bad-signature",
    "wrong-signer",
    "foreign-network",
    "expired",
    "replayed",
)


# -- the record --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    cpu_count: int = 0
    cpu_kind: str = ""
    gpu_kind: str = ""
    memory_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_count": self.cpu_count,
            "cpu_kind": self.cpu_kind,
            "gpu_kind": self.gpu_kind,
            "memory_bytes": self.memory_bytes,
        }


@dataclass(frozen=True)
class Advert:
    """A peer's signed statement of what it serves. Times are Unix milliseconds."""

    peer_id: str
    network_id: str
    seq: int
    issued_ms: int
    expires_ms: int
    addrs: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    model: str = ""
    #: [start, end) layer spans of `model` this peer serves
    spans: tuple[tuple[int, int], ...] = ()
    hardware: Hardware = field(default_factory=Hardware)
    #: measured throughput, tokens per second through the served spans (0 = not measured)
    throughput: float = 0.0
    #: current load, 0.0 (idle) to 1.0 (saturated)
    load: float = 0.0
    #: digest of the TEE evidence the peer presents on a channel; None = no TEE
    tee_digest: bytes | None = None
    software: str = ""
    #: compute precision of the served layers (`float32`, `bfloat16`, ...); "" = not stated.
    #: Optional on the wire (absent when ""), so adverts of older peers still verify.
    precision: str = ""
    #: digest of the stored weights of each span, in the order of `spans`
    #: (`sha256:<hex>`, p2pinfer.models.weights_digest); () = not stated. Optional on the
    #: wire (absent when empty), so adverts of older peers still verify.
    weights: tuple[str, ...] = ()
    #: digest of the zero-knowledge manifest the peer's critical-mode proofs are made against
    #: (`sha256:<hex>` of p2pinfer.zk's manifest digest); "" = serves no critical tasks.
    #: Optional on the wire (absent when ""), so adverts of older peers still verify.
    manifest: str = ""

    def body(self) -> dict[str, Any]:
        body = {
            "peer_id": self.peer_id,
            "network_id": self.network_id,
            "seq": self.seq,
            "issued_ms": self.issued_ms,
            "expires_ms": self.expires_ms,
            "addrs": list(self.addrs),
            "roles": list(self.roles),
            "model": self.model,
            "spans": [list(s) for s in self.spans],
            "hardware": self.hardware.to_dict(),
            "throughput": float(self.throughput),
            "load": float(self.load),
            "tee_digest": self.tee_digest,
            "software": self.software,
        }
        if self.precision:
            body["precision"] = self.precision
        if self.weights:
            body["weights"] = list(self.weights)
        if self.manifest:
            body["manifest"] = self.manifest
        return body

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (the TEE digest as hex)."""
        d = self.body()
        d["tee_digest"] = self.tee_digest.hex() if self.tee_digest is not None else None
        return d

    def serves(self, model: str, layer: int | None = None) -> bool:
        if self.model != model:
            return False
        return layer is None or any(a <= layer < b for a, b in self.spans)


def sign_advert(advert: Advert, identity: NodeIdentity) -> bytes:
    """The wire bytes of `advert`, signed by `identity` (which must be the advert's peer)."""
    if identity.peer_id != advert.peer_id:
        raise ValueError("an advert is signed by the peer it describes")
    body = msgpack.packb(advert.body(), use_bin_type=True)
    sig = identity.sign(SIGNING_TAG + body)
    return msgpack.packb(
        {"v": ADVERT_VERSION, "t": "advert", "body": body, "sig": sig}, use_bin_type=True
    )


# -- decoding ----------------------------------------------------------------------------------


#: what an advert envelope or body may hold, enforced while decoding (adverts are <= 16 KiB)
ADVERT_DECODE_LIMITS = DecodeLimits(
    max_str_len=1024, max_bin_len=64 * 1024, max_array_len=64, max_map_len=32,
    max_items=2048, max_containers=256, max_depth=6,
)


def _unpack(data: bytes, what: str) -> Any:
    try:
        return unpack_limited(data, ADVERT_DECODE_LIMITS)
    except WireError as e:
        raise AdvertMalformed(f"{what}: {e}") from None


def _int(body: dict[str, Any], key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    v = body.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise AdvertMalformed(f"advert field {key!r} must be an integer in [{lo}, {hi}]")
    return v


def _float(body: dict[str, Any], key: str, hi: float) -> float:
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AdvertMalformed(f"advert field {key!r} must be a number")
    v = float(v)
    if not (math.isfinite(v) and 0.0 <= v <= hi):
        raise AdvertMalformed(f"advert field {key!r} must be a finite number in [0, {hi}]")
    return v


def _str(body: dict[str, Any], key: str, limit: int = MAX_NAME_CHARS) -> str:
    v = body.get(key)
    if not isinstance(v, str) or len(v) > limit:
        raise AdvertMalformed(f"advert field {key!r} must be a string of at most {limit} chars")
    return v


def _strs(body: dict[str, Any], key: str, count: int, chars: int) -> tuple[str, ...]:
    v = body.get(key)
    if not isinstance(v, list) or len(v) > count:
        raise AdvertMalformed(f"advert field {key!r} must be a list of at most {count} strings")
    for s in v:
        if not isinstance(s, str) or len(s) > chars:
            raise AdvertMalformed(f"advert field {key!r} holds a non-string or too long entry")
    return tuple(v)


def parse_advert_body(body: Any) -> Advert:
    """Check a decoded record map field by field and build the `Advert`."""
    if not isinstance(body, dict):
        raise AdvertMalformed("advert body is not a map")
    spans_raw = body.get("spans")
    if not isinstance(spans_raw, list) or len(spans_raw) > MAX_SPANS:
        raise AdvertMalformed(f"advert field 'spans' must be a list of at most {MAX_SPANS} spans")
    spans = []
    for s in spans_raw:
        if (
            not isinstance(s, list)
            or len(s) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in s)
            or not 0 <= s[0] < s[1] <= 1 << 20
        ):
            raise AdvertMalformed("advert spans are [start, end) with 0 <= start < end")
        spans.append((s[0], s[1]))
    hw = body.get("hardware")
    if not isinstance(hw, dict):
        raise AdvertMalformed("advert field 'hardware' must be a map")
    hardware = Hardware(
        cpu_count=_int(hw, "cpu_count", 0, 1 << 20),
        cpu_kind=_str(hw, "cpu_kind"),
        gpu_kind=_str(hw, "gpu_kind"),
        memory_bytes=_int(hw, "memory_bytes", 0, 1 << 60),
    )
    tee = body.get("tee_digest")
    if tee is not None and (not isinstance(tee, bytes) or len(tee) > MAX_TEE_DIGEST_BYTES):
        raise AdvertMalformed(
            f"advert field 'tee_digest' must be nil or at most {MAX_TEE_DIGEST_BYTES} bytes"
        )
    weights = _strs(body, "weights", MAX_SPANS, MAX_WEIGHTS_DIGEST_CHARS) if "weights" in body \
        else ()
    if weights and len(weights) != len(spans):
        raise AdvertMalformed("advert field 'weights' must name one digest per span")
    return Advert(
        peer_id=_str(body, "peer_id", 128),
        network_id=_str(body, "network_id", 63),
        seq=_int(body, "seq"),
        issued_ms=_int(body, "issued_ms"),
        expires_ms=_int(body, "expires_ms"),
        addrs=_strs(body, "addrs", MAX_ADDRS, MAX_ADDR_CHARS),
        roles=_strs(body, "roles", MAX_ROLES, 32),
        model=_str(body, "model"),
        spans=tuple(spans),
        hardware=hardware,
        throughput=_float(body, "throughput", 1e12),
        load=_float(body, "load", 1.0),
        tee_digest=tee,
        software=_str(body, "software", 64),
        precision=_str(body, "precision", MAX_PRECISION_CHARS) if "precision" in body else "",
        weights=weights,
        manifest=(_str(body, "manifest", MAX_WEIGHTS_DIGEST_CHARS) if "manifest" in body
                  else ""),
    )


def decode_advert(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_ADVERT_BYTES
) -> tuple[Advert, bytes, bytes]:
    """Decode envelope and record without checking the signature: (advert, body, sig).

    Raises `AdvertTooLarge`, `AdvertMalformed` or `AdvertUnsigned`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AdvertMalformed("advert is not bytes")
    if len(data) > max_bytes:
        raise AdvertTooLarge(f"advert of {len(data)} bytes exceeds the limit of {max_bytes}")
    env = _unpack(bytes(data), "advert envelope")
    if not isinstance(env, dict):
        raise AdvertMalformed("advert envelope is not a map")
    if env.get("t") != "advert":
        raise AdvertMalformed("advert envelope type is not 'advert'")
    v = env.get("v")
    if v != ADVERT_VERSION or isinstance(v, bool):
        raise AdvertMalformed(f"advert version {v!r} is not supported")
    body = env.get("body")
    if not isinstance(body, bytes):
        raise AdvertMalformed("advert envelope lacks a binary 'body'")
    sig = env.get("sig")
    if sig is None or sig == b"":
        raise AdvertUnsigned("advert carries no signature")
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        raise AdvertMalformed(f"advert signature must be {SIGNATURE_BYTES} bytes")
    advert = parse_advert_body(_unpack(body, "advert body"))
    return advert, body, sig


#: at most this many peers of other networks are remembered (for the user's error message)
MAX_FOREIGN_PEERS = 64


class AdvertValidator:
    """Validates adverts for one network and remembers the last sequence number per peer.

    `accept(data, origin)` returns the `Advert` when it is new (greater `seq`), `None` when it
    is byte-identical to the last one accepted (a harmless duplicate), and raises an
    `AdvertRejected` subclass otherwise. `rejected` counts rejections by reason.
    """

    def __init__(self, network_id: str, *, max_bytes: int = DEFAULT_MAX_ADVERT_BYTES) -> None:
        self.network_id = network_id
        self.max_bytes = max_bytes
        self.rejected: Counter[str] = Counter({r: 0 for r in REJECT_REASONS})
        self.accepted = 0
        self.duplicates = 0
        self._last: dict[str, tuple[int, bytes]] = {}
        #: peers whose signed advert names another network: peer id -> that network id
        self.foreign: dict[str, str] = {}

    def check(self, data: bytes, origin: str | None, *, now_ms: int | None = None) -> Advert:
        """All checks except the sequence number; does not change state."""
        advert, body, sig = decode_advert(data, max_bytes=self.max_bytes)
        foreign = advert.network_id != self.network_id
        if foreign and (origin is None or advert.peer_id != origin):
            raise AdvertForeignNetwork(
                f"advert is for network {advert.network_id!r}, this is {self.network_id!r}"
            )
        if origin is not None and advert.peer_id != origin:
            raise AdvertWrongSigner("advert claims a peer other than the one that sent it")
        try:
            verify_peer_signature(advert.peer_id, SIGNING_TAG + body, sig)
        except IdentityError:
            raise AdvertBadSignature("advert signature does not verify under its peer id") from None
        if foreign:
            # signed by the peer that sent it: worth telling a user who joined the wrong network
            if advert.peer_id not in self.foreign and len(self.foreign) >= MAX_FOREIGN_PEERS:
                self.foreign.pop(next(iter(self.foreign)))
            self.foreign[advert.peer_id] = advert.network_id
            raise AdvertForeignNetwork(
                f"advert is for network {advert.network_id!r}, this is {self.network_id!r}"
            )
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if advert.expires_ms <= now:
            raise AdvertExpired("advert has expired")
        lifetime = advert.expires_ms - advert.issued_ms
        if lifetime < 0 or lifetime > MAX_LIFETIME_MS:
            raise AdvertMalformed("advert lifetime is negative or longer than one hour")
        if advert.issued_ms > now + MAX_CLOCK_SKEW_MS:
            raise AdvertMalformed("advert is issued in the future")
        return advert

    def accept(
        self, data: bytes, origin: str | None, *, now_ms: int | None = None
    ) -> Advert | None:
        try:
            advert = self.check(data, origin, now_ms=now_ms)
            last = self._last.get(advert.peer_id)
            if last is not None:
                if advert.seq == last[0] and bytes(data) == last[1]:
                    self.duplicates += 1
                    return None
                if advert.seq <= last[0]:
                    raise AdvertReplayed(
                        f"advert sequence {advert.seq} is not greater than {last[0]}"
                    )
        except AdvertRejected as e:
            self.rejected[e.reason] += 1
            raise
        self._last[advert.peer_id] = (advert.seq, bytes(data))
        self.accepted += 1
        return advert

    def latest_raw(self, peer_id: str) -> bytes | None:
        last = self._last.get(peer_id)
        return last[1] if last else None

    def forget(self, peer_id: str) -> None:
        self._last.pop(peer_id, None)

    def counters(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "foreign_networks": dict(self.foreign),
        }
