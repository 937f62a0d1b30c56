"""The msgpack envelope every stream message and gossip payload uses.

A message is a msgpack map with string keys: `v` (wire version, int), `t` (message type, str) and
the type's own fields beside them (protocols/envelope.md). Decoding never executes anything, never
builds objects other than maps, lists, strings, bytes, ints, floats, bools and nil, and reports
every problem as `WireError`. Field access through `Message.get` checks the type, so protocol code
reads `msg.get("shape", list)` instead of trusting the peer.

Decoding cost is bounded before it starts: `DecodeLimits` (one per protocol or message kind)
sets msgpack's own length limits (strings, byte strings, arrays, maps), a cap on the number of
elements held by all arrays and maps together and on the number of arrays and maps (a fixed
allowance plus one per `bytes_per_container` bytes), both counted while decoding, so a frame of
a million empty arrays stops early, and a nesting depth. An array or map costs ~130 bytes
decoded for 1 byte encoded, a scalar at most ~20x its encoding, so a message costs at most
about 20x its size plus ~130 bytes per allowed container: a small per-kind constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pinfer.errors import UnsupportedVersion, WireError

WIRE_VERSION = 1
DEFAULT_MAX_MESSAGE = 80 * 1024 * 1024
#: msgpack's decoder stops at this nesting depth on its own (StackError)
MSGPACK_MAX_DEPTH = 1023


@dataclass(frozen=True)
class DecodeLimits:
    """What one message may hold, checked by the decoder before and while it allocates."""

    #: longest UTF-8 string, in bytes
    max_str_len: int = 1 << 16
    #: longest byte string (tensor payloads live here)
    max_bin_len: int = DEFAULT_MAX_MESSAGE
    #: longest array / map (entries)
    max_array_len: int = 1 << 16
    max_map_len: int = 256
    #: elements of all arrays plus keys and values of all maps, together
    max_items: int = 1 << 17
    #: arrays and maps (each costs ~130 bytes decoded for 1 byte encoded): this many, plus
    #: one per `bytes_per_container` bytes of the message
    max_containers: int = 1024
    bytes_per_container: int = 64
    #: arrays and maps inside each other; the envelope map is depth 1
    max_depth: int = 32

    def __post_init__(self) -> None:
        for name in ("max_str_len", "max_bin_len", "max_array_len", "max_map_len", "max_items",
                     "max_containers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.bytes_per_container < 1:
            raise ValueError("bytes_per_container must be >= 1")
        if not 1 <= self.max_depth <= MSGPACK_MAX_DEPTH:
            raise ValueError(f"max_depth must be within 1..{MSGPACK_MAX_DEPTH}")


#: the limits `decode_message` applies when the caller names none
DEFAULT_DECODE_LIMITS = DecodeLimits()
#: small control messages (ping, advert requests, error replies)
SMALL_DECODE_LIMITS = DecodeLimits(
    max_str_len=4096, max_bin_len=64 * 1024, max_array_len=256, max_map_len=64,
    max_items=1024, max_containers=64, max_depth=4,
)
_RESERVED = ("v", "t")
_MISSING = object()


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed")


def encode_message(t: str, fields: dict[str, Any] | None = None, *, v: int = WIRE_VERSION) -> bytes:
    """Encode a message of type `t` with the given fields (which may not use `v` or `t`)."""
    body: dict[str, Any] = {"v": v, "t": t}
    if fields:
        for key in _RESERVED:
            if key in fields:
                raise ValueError(f"field name {key!r} is reserved by the envelope")
        body.update(fields)
    return msgpack.packb(body, use_bin_type=True)


def error_message(code: str, message: str) -> bytes:
    """A typed error reply (`t = "error"`) that a peer sends instead of an answer."""
    return encode_message("error", {"code": code, "message": message[:512]})


@dataclass(frozen=True)
class Message:
    v: int
    t: str
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The field `name`, checked to be of `kind`; a missing field returns `default` if given."""
        if name not in self.fields:
            if default is _MISSING:
                raise WireError(f"message {self.t!r} lacks field {name!r}")
            return default
        value = self.fields[name]
        # bool is an int subclass: never accept it where a number is asked for
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise WireError(f"field {name!r} of {self.t!r} has the wrong type (bool)")
        if not isinstance(value, kind):
            raise WireError(
                f"field {name!r} of {self.t!r} has type {type(value).__name__}, "
                f"expected {_kind_name(kind)}"
            )
        return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))


class _ItemCount:
    """msgpack hooks that count every finished array and map and their elements, and stop the
    decoder (by raising) once either total passes its limit."""

    __slots__ = ("containers", "items")

    def __init__(self, items: int, containers: int) -> None:
        self.items = items
        self.containers = containers

    def _count(self, elements: int) -> None:
        self.items -= elements
        self.containers -= 1
        if self.items < 0:
            raise WireError("message holds too many array and map elements")
        if self.containers < 0:
            raise WireError("message holds too many arrays and maps for its size")

    def on_list(self, value: list[Any]) -> list[Any]:
        self._count(len(value))
        return value

    def on_map(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self._count(2 * len(value))
        return value


def _depth_exceeds(obj: Any, max_depth: int) -> bool:
    """True when arrays/maps nest deeper than `max_depth` (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (list, dict)):
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


def unpack_limited(data: bytes | bytearray | memoryview, limits: DecodeLimits) -> Any:
    """One msgpack value decoded under `limits` (no extension types, string map keys);
    every problem is a `WireError`."""
    count = _ItemCount(
        limits.max_items, limits.max_containers + len(data) // limits.bytes_per_container
    )
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_reject_ext, timestamp=0,
            use_list=True, list_hook=count.on_list, object_hook=count.on_map,
            max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len, max_ext_len=0,
        )
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise WireError(f"not a msgpack message within its limits: {type(e).__name__}: "
                        f"{str(e)[:120]}") from None
    except RecursionError:
        raise WireError("msgpack nesting too deep") from None
    if isinstance(obj, (list, dict)) and _depth_exceeds(obj, limits.max_depth):
        raise WireError(f"message nests deeper than {limits.max_depth} levels")
    return obj


def decode_message(
    data: bytes | bytearray | memoryview,
    *,
    expect: set[str] | frozenset[str] | None = None,
    versions: tuple[int, ...] = (WIRE_VERSION,),
    max_size: int = DEFAULT_MAX_MESSAGE,
    limits: DecodeLimits | None = None,
) -> Message:
    """Decode one envelope. `expect` restricts the accepted types (an `error` is always let
    through so the caller can raise it as a `RemoteError`); `limits` bounds what it may hold
    (`DEFAULT_DECODE_LIMITS` when not given)."""
    if len(data) > max_size:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    obj = unpack_limited(data, limits or DEFAULT_DECODE_LIMITS)
    if not isinstance(obj, dict):
        raise WireError(f"message is a {type(obj).__name__}, expected a map")
    v = obj.pop("v", None)
    t = obj.pop("t", None)
    if not isinstance(v, int) or isinstance(v, bool):
        raise WireError("message lacks an integer version 'v'")
    if not isinstance(t, str) or not t:
        raise WireError("message lacks a type 't'")
    if v not in versions:
        raise UnsupportedVersion(f"message version {v} is not supported (supported: {versions})")
    if expect is not None and t not in expect and t != "error":
        raise WireError(f"unexpected message type {t!r}")
    return Message(v=v, t=t, fields=obj)
