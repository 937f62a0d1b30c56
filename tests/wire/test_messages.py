import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import UnsupportedVersion, WireError
from p2pinfer.wire import Message, decode_message, encode_message, error_message


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
