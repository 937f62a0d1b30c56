"""The msgpack envelope every stream message and gossip payload uses.

A message is a msgpack map with string keys: `v` (wire version, int), `t` (message type, str) and
the type's own fields beside them (protocols/envelope.md). Decoding never executes anything, never
builds objects other than maps, lists, strings, bytes, ints, floats, bools and nil, and reports
every problem as `WireError`. Field access through `Message.get` checks the type, so protocol code
reads `msg.get("shape", list)` instead of trusting the peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pinfer.errors import WireError

WIRE_VERSION = 1
DEFAULT_MAX_MESSAGE = 80 * 1024 * 1024
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


def decode_message(
    data: bytes | bytearray | memoryview,
    *,
    expect: set[str] | frozenset[str] | None = None,
    versions: tuple[int, ...] = (WIRE_VERSION,),
    max_size: int = DEFAULT_MAX_MESSAGE,
) -> Message:
    """Decode one envelope. `expect` restricts the accepted types (an `error` is always let
    through so the caller can raise it as a `RemoteError`)."""
    from p2pinfer.errors import UnsupportedVersion

    if len(data) > max_size:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_reject_ext, timestamp=0
        )
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise WireError(f"not a msgpack message: {type(e).__name__}") from None
    except RecursionError:
        raise WireError("msgpack nesting too deep") from None
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
