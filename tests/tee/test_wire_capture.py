"""The bytes written to libp2p streams never hold a plaintext activation when channels are on.

Every write to a libp2p stream (above Noise, so what a node's host could read off its own
process) is recorded; every activation a hop codec packs is recorded too. Without channels the
check finds the activations in the stream bytes, which shows the check can fail."""

from __future__ import annotations

import pytest
from libp2p.network.stream.net_stream import NetStream

from p2pinfer.inference.hop import PlainHop
from p2pinfer.inference.secure_hop import ChannelHop
from p2pinfer.models.sampling import Sampler, SamplingParams

from .conftest import tee_network


@pytest.fixture
def wire(monkeypatch):
    """Records every buffer written to any libp2p stream, and every activation packed."""
    written: list[bytes] = []
    activations: list[bytes] = []
    write = NetStream.write

    async def recording_write(self, data):
        written.append(bytes(data))
        return await write(self, data)

    monkeypatch.setattr(NetStream, "write", recording_write)
    for codec in (PlainHop, ChannelHop):
        pack = codec.pack

        async def recording_pack(self, hidden, ctx, _pack=pack):
            activations.append(hidden.detach().contiguous().numpy().tobytes())
            return await _pack(self, hidden, ctx)

        monkeypatch.setattr(codec, "pack", recording_pack)
    return written, activations


def _found(written: list[bytes], activations: list[bytes]) -> int:
    """How many activations appear (as their middle 64 bytes) in some stream write."""
    blob = b"\x00".join(written)
    return sum(1 for a in activations if a[len(a) // 2 - 32:len(a) // 2 + 32] in blob)


async def _generate(client, model) -> None:
    c = client.inference.client(model)
    async for _ in c.generate([5, 17, 42, 3, 9, 11], 4, Sampler(SamplingParams(temperature=0))):
        pass


async def test_stream_bytes_never_hold_a_plaintext_activation_with_channels(
        tmp_path, llama, wire):
    written, activations = wire
    async with tee_network(tmp_path, str(llama), [[0, 3], [3, 6]]) as (client, _):
        written.clear()
        await _generate(client, str(llama))
    assert len(activations) == 3 * 4  # client -> stage 0 -> stage 1 -> client, 4 steps
    assert sum(len(w) for w in written) > sum(len(a) for a in activations)
    assert _found(written, activations) == 0


async def test_stream_bytes_hold_the_activations_without_channels(tmp_path, llama, wire):
    written, activations = wire
    async with tee_network(tmp_path, str(llama), [[0, 3], [3, 6]], trust=None) as (client, _):
        written.clear()
        await _generate(client, str(llama))
    assert len(activations) == 3 * 4
    assert _found(written, activations) == len(activations)
