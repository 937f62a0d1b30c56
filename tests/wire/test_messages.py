import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import UnsupportedVersion, WireError
from p2pinfer.wire import Message, decode_message, encode_message, error_message
from p2pinfer.wire.messages import DEFAULT_DECODE_LIMITS, SMALL_DECODE_LIMITS, DecodeLimits


def test_envelope_round_trip_keeps_type_version_and_fields():
    data = encode_message("ping", {"nonce": b"\x01" * 8, "n": 3})
    msg = decode_message(data, expect={"ping"})
    assert (msg.v, msg.t) == (1, "ping")
    assert msg.get("nonce", bytes) == b"\x01" * 8
    assert msg.get("n", int) == 3


def test_field_of_wrong_type_is_a_wire_error():
    msg = decode_message(encode_message("x", {"n": "3"}))
    with pytest.raises(WireError, match="expected int"):
        msg.get("n", int)


def test_bool_is_not_accepted_as_an_integer_field():
    msg = decode_message(encode_message("x", {"n": True}))
    with pytest.raises(WireError):
        msg.get("n", int)


def test_missing_field_is_a_wire_error_unless_defaulted():
    msg = decode_message(encode_message("x"))
    with pytest.raises(WireError, match="lacks field"):
        msg.get("n", int)
    assert msg.get("n", int, None) is None


def test_unknown_version_is_rejected_with_its_own_type():
    with pytest.raises(UnsupportedVersion):
        decode_message(encode_message("x", v=2))


def test_unexpected_type_is_rejected_but_error_replies_pass():
    with pytest.raises(WireError, match="unexpected"):
        decode_message(encode_message("x"), expect={"y"})
    err = decode_message(error_message("busy", "try later"), expect={"y"})
    assert err.t == "error" and err.get("code", str) == "busy"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 1}),
        msgpack.packb({"t": "x"}),
        msgpack.packb({"v": "1", "t": "x"}),
        msgpack.packb({"v": 1, "t": ""}),
        msgpack.packb({1: 2, "v": 1, "t": "x"}),
        msgpack.packb(msgpack.ExtType(5, b"evil")),
        msgpack.packb({"v": 1, "t": "x"}) + b"\x00",
    ],
)
def test_malformed_envelopes_are_wire_errors(raw):
    with pytest.raises(WireError):
        decode_message(raw)


def test_deep_nesting_is_a_wire_error():
    raw = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(WireError):
        decode_message(raw)


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(WireError, match="exceeds"):
        decode_message(encode_message("x", {"b": b"0" * 1000}), max_size=100)


def test_reserved_field_names_cannot_be_encoded():
    with pytest.raises(ValueError):
        encode_message("x", {"v": 9})


@settings(deadline=None, max_examples=3000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_wire_error(raw):
    try:
        msg = decode_message(raw)
    except WireError:
        return
    assert isinstance(msg, Message)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=20) | st.floats(allow_nan=False),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=20,
)


@settings(deadline=None, max_examples=1000)
@given(st.text(min_size=1, max_size=10), st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("v", "t")), _values, max_size=6))
def test_any_encodable_message_round_trips(t, fields):
    msg = decode_message(encode_message(t, fields))
    assert msg.t == t and msg.fields == fields


# -- decode limits: no message costs more than a small constant times its size ---------------
def _peak_decode_bytes(raw: bytes, limits: DecodeLimits | None = None) -> int:
    """Peak memory Python allocated while decoding `raw` (WireError or not)."""
    tracemalloc.start()
    try:
        try:
            decode_message(raw, limits=limits)
        except WireError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _envelope_with(value_bytes: bytes) -> bytes:
    """{"v": 1, "t": "x", "x": <value>} with the value given as raw msgpack."""
    return b"\x83\xa1v\x01\xa1t\xa1x\xa1x" + value_bytes


def test_an_array_announcing_more_entries_than_allowed_is_refused_at_its_header():
    bomb = _envelope_with(b"\xdd" + (8 << 20).to_bytes(4, "big") + b"\x90" * (8 << 20))
    with pytest.raises(WireError, match="max_array_len"):
        decode_message(bomb)
    assert _peak_decode_bytes(bomb) < 64 * 1024


def test_a_bomb_of_empty_arrays_stops_early():
    # 1,000 arrays of 1,000 empty arrays: 1 MB that would decode into ~1M lists (~130 MB)
    bomb = _envelope_with(b"\xdc\x03\xe8" + (b"\xdc\x03\xe8" + b"\x90" * 1000) * 1000)
    with pytest.raises(WireError, match="too many arrays and maps"):
        decode_message(bomb)
    assert _peak_decode_bytes(bomb) < 2 * len(bomb)
    # with room for the containers, the element count stops it
    many = DecodeLimits(max_items=10_000, max_containers=10_000)
    with pytest.raises(WireError, match="too many array and map elements"):
        decode_message(bomb, limits=many)
    assert _peak_decode_bytes(bomb, many) < 2 * len(bomb) + 160 * 10_000


def test_hostile_messages_cost_a_small_constant_times_their_size():
    bombs = [
        _envelope_with(b"\xdc\xff\xff" + b"\x90" * 0xFFFF),  # one array of 65535 empty arrays
        _envelope_with(b"\xdc\xff\xff" + b"\x80" * 0xFFFF),  # ... of empty maps
        _envelope_with(b"\xdc\xff\xff" + b"\xa2ab" * 0xFFFF),  # ... of 2-char strings
        _envelope_with(b"\xdc\xff\xff" + b"\xcd\x12\x34" * 0xFFFF),  # ... of ints
        _envelope_with(b"\xdc\xff\xff" + b"\xc0" * 0xFFFF),  # ... of nils
        _envelope_with(b"\xdc\x03\xe8" + (b"\xdc\x03\xe8" + b"\x90" * 1000) * 1000),
        b"\x91" * 200_000 + b"\x90",  # nesting
    ]
    allowance = 160 * DEFAULT_DECODE_LIMITS.max_containers  # the containers every message may hold
    for raw in bombs:
        assert _peak_decode_bytes(raw) < 24 * len(raw) + allowance


def test_nesting_deeper_than_the_limit_is_a_wire_error():
    deep = encode_message("x", {"a": [[[["leaf"]]]]})  # the envelope map is depth 1
    assert decode_message(deep, limits=DecodeLimits(max_depth=5)).fields["a"] == [[[["leaf"]]]]
    with pytest.raises(WireError, match="deeper"):
        decode_message(deep, limits=DecodeLimits(max_depth=4))


@pytest.mark.parametrize(("field", "value", "limits"), [
    ("s", "x" * 101, DecodeLimits(max_str_len=100)),
    ("b", b"x" * 101, DecodeLimits(max_bin_len=100)),
    ("a", list(range(11)), DecodeLimits(max_array_len=10)),
    ("m", {str(i): i for i in range(11)}, DecodeLimits(max_map_len=10)),
])
def test_each_msgpack_length_limit_is_applied(field, value, limits):
    raw = encode_message("x", {field: value})
    with pytest.raises(WireError):
        decode_message(raw, limits=limits)
    assert decode_message(raw).fields[field] == value


def test_small_control_limits_admit_a_ping_and_refuse_a_tensor():
    assert decode_message(encode_message("ping", {"n": 1}), limits=SMALL_DECODE_LIMITS).t == "ping"
    with pytest.raises(WireError):
        decode_message(encode_message("x", {"b": bytes(1 << 20)}), limits=SMALL_DECODE_LIMITS)


def test_decode_limits_reject_nonsense():
    with pytest.raises(ValueError):
        DecodeLimits(max_items=-1)
    with pytest.raises(ValueError):
        DecodeLimits(max_depth=0)
