"""Inference over attested channels between simulated TEEs equals local inference."""

from __future__ import annotations

from p2pinfer.inference.secure_hop import ChannelHop
from p2pinfer.models.sampling import Sampler, SamplingParams

from .conftest import tee_network


async def test_generation_over_attested_channels_equals_a_route_without_them(tmp_path, llama):
    prompt = [5, 17, 42, 3]
    async with tee_network(tmp_path / "a", str(llama), [[0, 3], [3, 6]], k_head=1,
                           k_tail=1) as (client, stages):
        assert isinstance(client.inference.hop, ChannelHop)
        c = client.inference.client(str(llama))
        toks = [t async for t in c.generate(prompt, 6, Sampler(SamplingParams(temperature=0.0)))]
        hop = client.inference.hop
        assert hop.counters["sealed"] >= 6 and hop.counters["opened"] >= 6
        for s in stages:
            assert s.inference.hop.counters["opened"] >= 6
            assert s.inference.hop.counters["plaintext_refused"] == 0
        levels = {p.peer_id: p.extra.get("tee_level") for p in client.peers()}
        assert set(levels.values()) == {"simulated"}
    async with tee_network(tmp_path / "b", str(llama), [[0, 3], [3, 6]], trust=None,
                           k_head=1, k_tail=1) as (plain, _):
        c = plain.inference.client(str(llama))
        ref = [t async for t in c.generate(prompt, 6, Sampler(SamplingParams(temperature=0.0)))]
    assert toks == ref
