"""The bytes written to libp2p streams never hold a plaintext activation when channels are on.

Every write to a libp2p stream (above Noise, so what a node's host could read off its own
process) is recorded; every activation a hop codec packs is recorded too. Without channels the
check finds the activations in the stream bytes, which shows the check can fail."""

from __future__ import annotations

import pytest
import torch
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



async def _fetch_and_audit(client, stages, model, written) -> tuple[bool | None, object, object]:
    """While a generation's session is open, the requester fetches stage 0's stored prefill
    output over the votes protocol and audits stage 1 on the spare replica of its span
    (fetching stage 0's output and stage 1's claim, sending the auditor its input)."""
    c = client.inference.client(model)
    result = None
    async for _ in c.generate([5, 17, 42, 3, 9, 11], 3, Sampler(SamplingParams(temperature=0))):
        if result is not None:
            continue
        stored = next(iter(stages[0].inference.consensus.outputs.values()))
        consensus = client.inference.consensus
        written.clear()  # from here on only the fetches and the audit write
        got = await consensus.fetch(stages[0].peer_id, stored.task, 0, 0)
        assert torch.equal(got.hidden, stored.hidden) and got.claim is not None
        on_route = stored.task.route[1].replicas[0]
        spare = stages[2] if on_route == stages[1].peer_id else stages[1]
        ok = await consensus.audit_stage(stored.task, 1, stored.hidden, [spare.peer_id])
        result = (ok, stored.hidden.clone(), spare)
        snapshot = list(written)
    written[:] = snapshot
    assert result is not None
    return result


async def test_fetched_outputs_and_audit_inputs_are_sealed_too(tmp_path, llama, wire):
    written, _ = wire
    spans = [[0, 3], [3, 6], [3, 6]]
    # audits=False: the generation's own random audits would also land on the spare
    async with tee_network(tmp_path, str(llama), spans, audits=False) as (client, stages):
        ok, hidden, spare = await _fetch_and_audit(client, stages, str(llama), written)
        assert ok is True
        assert spare.inference.consensus.counters["audits_served"] == 1
        assert client.inference.hop.name == "channel"
    assert _found(written, [hidden.contiguous().numpy().tobytes()]) == 0


async def test_fetched_outputs_travel_in_the_clear_without_channels(tmp_path, llama, wire):
    written, _ = wire
    spans = [[0, 3], [3, 6], [3, 6]]
    async with tee_network(tmp_path, str(llama), spans, trust=None,
                           audits=False) as (client, stages):
        ok, hidden, _ = await _fetch_and_audit(client, stages, str(llama), written)
        assert ok is True
    assert _found(written, [hidden.contiguous().numpy().tobytes()]) == 1
