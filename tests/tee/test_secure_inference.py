"""Inference over attested channels between simulated TEEs: output equals local inference."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.inference.client import RequestSettings
from p2pinfer.inference.planner import NoRouteError
from p2pinfer.inference.secure_hop import ChannelHop
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler, SamplingParams
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet
from p2pinfer.trust import TeeLevel

from .conftest import TRUST, tee_network

PROMPT = [5, 17, 42, 3]
N = 6


def greedy() -> Sampler:
    return Sampler(SamplingParams(temperature=0.0))


async def test_generation_over_attested_channels_equals_local(tmp_path, llama):
    reference = LocalModel.load(llama).generate(PROMPT, N)
    async with tee_network(tmp_path, str(llama), [[0, 3], [3, 6]], k_head=1,
                           k_tail=1) as (client, stages):
        assert isinstance(client.inference.hop, ChannelHop)
        c = client.inference.client(str(llama))
        got = [t async for t in c.generate(PROMPT, N, greedy())]
        assert got == reference
        hop = client.inference.hop
        assert hop.counters["sealed"] == N and hop.counters["opened"] == N
        for s in stages:
            assert s.inference.hop.counters["opened"] == N
            assert s.inference.hop.counters["sealed"] == N
        assert {p.extra.get("tee_level") for p in client.peers()} == {"simulated"}
        for s in stages:  # adverts carry each node's evidence digest
            assert client.peer(s.peer_id).tee_digest == s.attestation.local_bundle.digest()
        status = client.status()["counters"]["attestation"]
        assert status["attester"] == "simulated" and status["channels_required"]


async def test_the_policy_minimum_tee_level_per_mode_is_enforced_by_the_planner(tmp_path, llama):
    async with tee_network(tmp_path, str(llama), [[0, 6]], min_tee="simulated") as (client, _):
        att = client.attestation
        c = client.inference.client(str(llama))
        assert c.min_tee() == "simulated" and c.plan()
        min_level = {**att.policy.min_level, "general": TeeLevel.CPU_TEE}
        att.policy = dataclasses.replace(att.policy, min_level=min_level)
        assert c.min_tee() == "cpu-tee"
        with pytest.raises(NoRouteError):
            c.plan()


async def test_multiprocess_testnet_with_trust_config_runs_encrypted_inference(tmp_path, llama):
    reference = LocalModel.load(llama).generate(PROMPT, N)
    spans = [[1, 3], [3, 5]]
    config_for = lambda i: {
        "serve": {"model": str(llama), "layers": spans[i]},
        "gossip": {"advert_interval_s": 1.0},
        "trust": dict(TRUST),
    }
    async with Testnet(2, base_dir=tmp_path / "net", config_for=config_for) as net:
        await net.wait_converged(timeout=60)
        cfg = config_from_dict({
            "node": {"name": "client", "data_dir": str(tmp_path / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"step_timeout_s": 10.0, "k_head": 1, "k_tail": 1},
            "trust": dict(TRUST),
        })
        async with Node(cfg) as client:
            with trio.fail_after(60):
                while len([p for p in client.peers() if p.extra.get("tee_level")]) < 2:
                    await trio.sleep(0.2)
            c = client.inference.client(str(llama))
            got = [t async for t in c.generate(PROMPT, N, greedy())]
            assert got == reference
            assert client.inference.hop.counters["opened"] == N
            assert client.inference.hop.counters["sealed"] == N
            assert client.attestation.counters["rejected"] == 0


async def test_redundant_stage_zero_hops_each_carry_their_own_replicas_sealed_input(
        tmp_path, llama, monkeypatch):
    """Each replica of a redundant stage 0 gets the input sealed for it alone, over its own
    hop, whatever order the hops came up in: here the second replica's hop opens last."""
    reference = LocalModel.load(llama).generate(PROMPT, N)
    spans = [[0, 3]] * 3 + [[3, 6]] * 3
    async with tee_network(tmp_path, str(llama), spans, k_head=1, k_tail=1) as (client, stages):
        c = client.inference.client(str(llama))
        open_stream = client.open_stream
        delayed: list[str] = []

        async def second_replica_last(peer_id: str, name: str, **kw: object):
            for session in list(c.sessions.values()):
                if name == "stage" and peer_id == session.route[0].replicas[1]:
                    delayed.append(peer_id)
                    await trio.sleep(0.5)
            return await open_stream(peer_id, name, **kw)

        monkeypatch.setattr(client, "open_stream", second_replica_last)
        settings = RequestSettings(k_head=1, k_tail=1, redundancy=3, step_timeout_s=30.0)
        stream = c.generate(PROMPT, N, greedy(), settings=settings)
        with trio.fail_after(60):
            got = [t async for t in stream]
        assert got == reference
        assert delayed, "the second replica's hop was not the one delayed"
        outcome = stream.outcome
        assert outcome.replans == 0 and not outcome.failures
        with trio.move_on_after(15):  # the tallies complete after the late claims' grace
            while [len(s["agreeing"]) for s in outcome.verification()["stages"]] != [3, 3]:
                await trio.sleep(0.2)
        report = outcome.verification()
        assert report["faults"] == []
        assert [len(s["agreeing"]) for s in report["stages"]] == [3, 3]
        assert [s["dissenting"] + s["missing"] for s in report["stages"]] == [[], []]
        # every replica committed to each output before its claim's seed existed
        counters = [s.inference.consensus.counters for s in stages]
        assert [c["unsealed_claims"] for c in counters] == [0] * 6
        assert all(c["sealed_claims"] >= N - 1 for c in counters)
        assert client.inference.consensus.counters["commits_received"] >= 3 * (N - 1)
