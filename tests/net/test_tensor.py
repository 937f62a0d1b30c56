"""`/p2pinfer/tensor/1.0.0`: tensors round-trip bit-exact; bad tensors get typed errors."""

from __future__ import annotations

import hashlib

import pytest
import torch
import trio

from p2pinfer.errors import RemoteError
from p2pinfer.net.streams import encode_message_parts
from p2pinfer.services.tensor import tensor_wire_view
from p2pinfer.wire import encode_message, tensor_to_wire
from tests.spec_vectors import vectors

from .conftest import node_config, node_runner


async def _pair(runner, tmp_path):
    a = await runner.start(node_config(tmp_path, "a", net={"dht": False}))
    b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False}))
    with trio.fail_after(20):
        await b.wait_for_peers(1, timeout=20)
    return a, b


def _random(nbytes: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    return raw.view(dtype)


async def test_tensors_of_1kib_1mib_and_8mib_round_trip_bit_exact(tmp_path):
    async with node_runner() as runner:
        a, b = await _pair(runner, tmp_path)
        cases = [
            (1 << 10, torch.float32, (16, 16)),
            (1 << 20, torch.float16, (512, 1024)),
            (8 << 20, torch.bfloat16, (4, 1024, 1024)),
            (1 << 10, torch.int8, (1024,)),
        ]
        with trio.fail_after(120):
            for i, (nbytes, dtype, shape) in enumerate(cases):
                t = _random(nbytes, dtype, i).reshape(shape)
                back = await b.send_tensor(a.peer_id, t)
                assert back.dtype == t.dtype and back.shape == t.shape
                # bit-exact, NaN payloads included
                assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))


@pytest.mark.slow
async def test_a_64mib_tensor_round_trips_bit_exact(tmp_path):
    async with node_runner() as runner:
        a, b = await _pair(runner, tmp_path)
        t = _random(64 << 20, torch.float32, 64).reshape(4096, 4096)
        with trio.fail_after(180):
            back = await b.send_tensor(a.peer_id, t, timeout=170)
        assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))


async def test_a_stored_tensor_is_kept_by_the_receiver_and_its_digest_returned(tmp_path):
    async with node_runner() as runner:
        a, b = await _pair(runner, tmp_path)
        t = torch.arange(12, dtype=torch.int64).reshape(3, 4)[:, 1:]  # not contiguous
        with trio.fail_after(20):
            digest = await b.store_tensor(a.peer_id, t)
        assert digest == hashlib.sha256(t.contiguous().numpy().tobytes()).digest()
        assert torch.equal(a.stored_tensors[b.peer_id], t)


@pytest.mark.parametrize(
    ("tensor", "code"),
    [
        ({"dtype": "complex64", "shape": [1], "data": b"\x00" * 8}, "bad-message"),
        ({"dtype": "float32", "shape": [3], "data": b"\x00" * 8}, "bad-message"),
        ({"dtype": "float32", "shape": [-1], "data": b""}, "bad-message"),
        ({"dtype": "float32", "shape": [1 << 30], "data": b""}, "bad-message"),
        ({"dtype": "float32", "shape": [1], "data": b"\x00" * 4, "extra": 1}, "bad-message"),
        ([1, 2, 3], "bad-message"),
    ],
    ids=["unknown-dtype", "short-data", "negative-dim", "over-the-limit", "extra-key", "not-a-map"],
)
async def test_a_malformed_tensor_gets_a_typed_error_reply(tmp_path, tensor, code):
    async with node_runner() as runner:
        a, b = await _pair(runner, tmp_path)
        with trio.fail_after(20):
            for mode in ("echo", "store"):
                with pytest.raises(RemoteError) as e:
                    await b.request(a.peer_id, "tensor", "tensor", {"tensor": tensor, "mode": mode})
                assert e.value.code == code
            with pytest.raises(RemoteError):
                await b.request(
                    a.peer_id,
                    "tensor",
                    "tensor",
                    {"tensor": tensor_to_wire(torch.ones(2)), "mode": "burn"},
                )
            # and the protocol still works afterwards
            assert torch.equal(await b.send_tensor(a.peer_id, torch.ones(3)), torch.ones(3))


def test_the_zero_copy_view_encodes_like_the_wire_codec():
    for t in (torch.randn(3, 5), torch.arange(10, dtype=torch.int16)[::2], torch.zeros(0, 4)):
        view = tensor_wire_view(t)
        ref = tensor_to_wire(t)
        assert view["dtype"] == ref["dtype"] and view["shape"] == ref["shape"]
        assert bytes(view["data"]) == ref["data"]


def test_spec_vectors_are_what_the_codec_produces():
    vec = vectors("tensor-transfer.md")
    t = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    wire = tensor_to_wire(t)
    assert vec["tensor-echo-request"] == encode_message("tensor", {"tensor": wire, "mode": "echo"})
    parts = encode_message_parts("tensor", {"tensor": tensor_wire_view(t), "mode": "echo"})
    assert b"".join(bytes(p) for p in parts) == vec["tensor-echo-request"]
    digest = hashlib.sha256(wire["data"]).digest()
    assert vec["tensor-stored-reply"] == encode_message("stored", {"sha256": digest, "nbytes": 16})
