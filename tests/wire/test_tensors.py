import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import WireError
from p2pinfer.wire import (
    ACTIVATION_DTYPES,
    DTYPES,
    decode_message,
    encode_message,
    tensor_from_wire,
    tensor_to_wire,
)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_round_trips_bit_exact(name):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(3, 5, 7, generator=g) * 50).to(DTYPES[name])
    back = tensor_from_wire(decode_message(encode_message("a", {"x": tensor_to_wire(t)})).fields["x"])
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.uint8), t.contiguous().view(torch.uint8))


def test_non_contiguous_tensor_is_encoded_in_logical_order():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert torch.equal(tensor_from_wire(tensor_to_wire(t)), t)


def test_data_is_raw_little_endian():
    wire = tensor_to_wire(torch.tensor([1, 256], dtype=torch.int32))
    assert wire == {"dtype": "int32", "shape": [2], "data": b"\x01\x00\x00\x00\x00\x01\x00\x00"}


def test_empty_tensor_round_trips():
    t = torch.empty(0, 4)
    assert tensor_from_wire(tensor_to_wire(t)).shape == (0, 4)


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1], "expected a map"),
        ({"dtype": "float32", "shape": [1]}, "exactly the keys"),
        ({"dtype": "complex64", "shape": [1], "data": b"\0" * 8}, "unknown tensor dtype"),
        ({"dtype": "float32", "shape": [2], "data": b"\0" * 4}, "need 8"),
        ({"dtype": "float32", "shape": [-1], "data": b""}, "non-negative"),
        ({"dtype": "float32", "shape": [True], "data": b"\0" * 4}, "non-negative"),
        ({"dtype": "float32", "shape": [1] * 9, "data": b"\0" * 4}, "at most 8"),
        ({"dtype": "float32", "shape": "1", "data": b"\0" * 4}, "list"),
        ({"dtype": "float32", "shape": [1], "data": "abcd"}, "must be bytes"),
        ({"dtype": "float32", "shape": [2**40, 2**40], "data": b""}, "exceeds the limit"),
    ],
)
def test_malformed_tensors_are_wire_errors(obj, match):
    with pytest.raises(WireError, match=match):
        tensor_from_wire(obj)


def test_expected_dtype_and_shape_are_enforced():
    wire = tensor_to_wire(torch.zeros(1, 4, 8))
    assert tensor_from_wire(wire, dtype="float32", shape=(1, None, 8)).shape == (1, 4, 8)
    with pytest.raises(WireError, match="dtype"):
        tensor_from_wire(wire, dtype="float16")
    with pytest.raises(WireError, match="shape"):
        tensor_from_wire(wire, shape=(1, None, 16))


def test_an_activation_may_come_in_any_float_precision_but_nothing_else():
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        got = tensor_from_wire(tensor_to_wire(torch.ones(1, 2, 8, dtype=dt)),
                               dtype=ACTIVATION_DTYPES)
        assert got.dtype == dt
    for dt in (torch.int64, torch.float64, torch.uint8):
        with pytest.raises(WireError, match="expected one of"):
            tensor_from_wire(tensor_to_wire(torch.ones(1, 2, 8, dtype=dt)),
                             dtype=ACTIVATION_DTYPES)


def test_empty_tensor_with_absurd_dims_is_a_wire_error():
    with pytest.raises(WireError, match="exceeds"):
        tensor_from_wire({"dtype": "bfloat16", "shape": [0, 1056027, 1056374, 8267934], "data": b""})


def test_size_limit_is_checked_before_allocation():
    with pytest.raises(WireError, match="exceeds"):
        tensor_from_wire({"dtype": "float32", "shape": [1000], "data": b"\0" * 4000}, max_bytes=100)


@settings(deadline=None, max_examples=2000)
@given(
    st.sampled_from(sorted(DTYPES) + ["x", 1]),
    st.lists(st.integers(-2, 2**33), max_size=9),
    st.binary(max_size=64),
)
def test_generated_tensor_maps_decode_or_raise_wire_error(dtype, shape, data):
    try:
        t = tensor_from_wire({"dtype": dtype, "shape": shape, "data": data}, max_bytes=1 << 20)
    except WireError:
        return
    assert t.numel() * t.element_size() == len(data)
