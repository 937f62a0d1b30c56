"""Many requests at once through one requester, over a multi-process testnet.

Five peer processes: three serve layers [1, 5) of a small random Llama (so a request may ask for
three replicas), one serves a small random BERT encoder, one a provable MLP (critical mode). One
requester node runs, in one nursery, greedy generations with different prompts, embeddings, a
redundancy-3 generation and a critical inference: every answer equals the same request run
alone, and every request's route, verification report and proofs are its own. Then 32 short
generations at once, after which no stage peer holds a session or a hop key; then a stage peer
is killed mid-run and only the requests routed through it replay.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio

from p2pinfer.config import RequestSettings, config_from_dict
from p2pinfer.consensus.claimbox import try_vote
from p2pinfer.inference.critical import critical_client
from p2pinfer.inference.redundancy import task_tolerance
from p2pinfer.models import LocalModel
from p2pinfer.models.mlp import zk_mlp_config
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.services.control import query_control
from p2pinfer.testnet import Testnet
from p2pinfer.zk.checkpoint import write_committed_mlp

from .conftest import save_checkpoint

LLAMA_PEERS = 3
PROMPTS = [[3, 17, 42, 8, 64, 5], [9, 1, 33], [70, 2, 2, 51, 6], [11, 12, 13, 14]]
EMBED_INPUTS = [[2, 11, 23, 5, 7, 9], [4, 8, 15, 16, 23]]
N = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    mlp = tmp / "mlp"
    mlp.mkdir()
    write_committed_mlp(mlp, zk_mlp_config("zk-mlp-concurrency", layers=6, hidden=32))
    return {"llama": save_checkpoint("llama", tmp / "llama", seed=3),
            "bert": save_checkpoint("bert", tmp / "bert", seed=4), "mlp": mlp}


@pytest.fixture(scope="module")
def testnet(tmp_path_factory, models):
    tmp = tmp_path_factory.mktemp("concurrency")
    serve = [str(models["llama"])] * LLAMA_PEERS + [str(models["bert"]), str(models["mlp"])]

    def config_for(i: int) -> dict[str, dict[str, Any]]:
        return {"serve": {"model": serve[i], "layers": [1, 5], "threads": 1},
                "gossip": {"advert_interval_s": 1.0}}

    net = Testnet(len(serve), base_dir=tmp / "net", network_id="concurrency-test",
                  config_for=config_for, start_timeout=180.0)
    trio.run(net.start)
    try:
        yield net, tmp
    finally:
        net.stop()


def client_config(net: Testnet, tmp: Path, name: str) -> Any:
    return config_from_dict({
        "node": {"name": name, "data_dir": str(tmp / name), "network_id": net.network_id,
                 "roles": ["client"]},
        "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
        "control": {"enabled": False},
        "gossip": {"advert_interval_s": 1.0},
        "inference": {"step_timeout_s": 30.0, "k_head": 1, "k_tail": 1},
    })


async def wait_for_servers(client: Node, n: int) -> None:
    with trio.fail_after(120):
        while len([p for p in client.peers() if p.spans]) < n:
            await trio.sleep(0.2)


async def stage_status(net: Testnet) -> list[dict[str, Any]]:
    out = []
    for p in net.peers:
        if p.proc is not None and p.proc.poll() is None:
            reply = await query_control(p.control_path, "status")
            out.append(reply["inference"])
    return out


def route_peers(outcome: Any) -> set[str]:
    return {p for s in outcome.route for p in s.replicas}


def assert_report_is_its_own(outcome: Any, redundancy: int) -> None:
    """The verification report names this request's route and replicas, nothing else."""
    report = outcome.verification()
    assert report is not None and report["redundancy"] == redundancy
    assert [s["replicas"] for s in report["stages"]] == [list(s.replicas) for s in outcome.route]
    named = {p for s in report["stages"] for key in ("agreeing", "dissenting", "missing")
             for p in s[key]}
    assert named <= route_peers(outcome)


async def test_mixed_requests_at_once_equal_their_runs_alone(testnet, models):
    net, tmp = testnet
    llama, bert, mlp = (str(models[k]) for k in ("llama", "bert", "mlp"))
    local = LocalModel.load(models["llama"])
    references = [local.generate(p, N) for p in PROMPTS]
    x = np.random.default_rng(7).normal(size=(3, 32))

    async with Node(client_config(net, tmp, "client-mixed")) as client:
        await wait_for_servers(client, len(net.peers))
        service = client.inference
        gen = service.client(llama)
        enc = service.client(bert)
        crit = critical_client(service, mlp, RequestSettings(k_head=1, k_tail=1))
        m3 = RequestSettings(k_head=1, k_tail=1, redundancy=3)

        # each request alone first
        alone_embed = [(await enc.embed(ids)).vector for ids in EMBED_INPUTS]
        alone_critical = await crit.infer(x)
        alone_m3 = gen.generate(PROMPTS[0], N, Sampler(), settings=m3)
        assert [t async for t in alone_m3] == references[0]

        results: dict[str, Any] = {}

        async def generation(i: int) -> None:
            run = gen.generate(PROMPTS[i], N, Sampler())
            results[f"gen{i}"] = ([t async for t in run], run.outcome)

        async def embedding(i: int) -> None:
            results[f"embed{i}"] = await enc.embed(EMBED_INPUTS[i])

        async def redundant() -> None:
            run = gen.generate(PROMPTS[0], N, Sampler(), settings=m3)
            results["m3"] = ([t async for t in run], run.outcome)

        async def critical() -> None:
            results["critical"] = await crit.infer(x)

        async with trio.open_nursery() as nursery:
            for i in range(len(PROMPTS)):
                nursery.start_soon(generation, i)
            for i in range(len(EMBED_INPUTS)):
                nursery.start_soon(embedding, i)
            nursery.start_soon(redundant)
            nursery.start_soon(critical)

        for i, want in enumerate(references):
            got, outcome = results[f"gen{i}"]
            assert got == want, f"generation {i}"
            assert len(outcome.route) == 1 and len(outcome.route[0].replicas) == 1
            assert outcome.report is not None
            assert_report_is_its_own(outcome, 1)
            assert len(outcome.step_s) == N and outcome.first_s is not None
        for i, want in enumerate(alone_embed):
            done = results[f"embed{i}"]
            torch.testing.assert_close(done.vector, want, atol=1e-5, rtol=1e-5)
            assert route_peers(done.outcome) == {net.peers[LLAMA_PEERS].peer_id}
            assert_report_is_its_own(done.outcome, 1)
        got, outcome = results["m3"]
        assert got == references[0]
        assert route_peers(outcome) == {p.peer_id for p in net.peers[:LLAMA_PEERS]}
        assert_report_is_its_own(outcome, 3)
        assert outcome.verification()["dissenters"] == []
        done = results["critical"]
        assert done.output_fixed.tolist() == alone_critical.output_fixed.tolist()
        assert [p.peer for p in done.proofs] == [net.peers[-1].peer_id]
        assert [p.proof_bytes for p in done.proofs] == [p.proof_bytes
                                                        for p in alone_critical.proofs]
        assert done.route == [{"layers": [1, 5], "peers": [net.peers[-1].peer_id]}]


async def test_concurrent_stall_fetches_each_get_their_own_position(testnet, models):
    """A replica fetching several steps at once (after stalls) gets each step's own KV
    position: concurrency never hands one fetch another's position."""
    net, tmp = testnet
    llama = str(models["llama"])
    async with Node(client_config(net, tmp, "client-fetch")) as client:
        await wait_for_servers(client, len(net.peers))
        service = client.inference
        consensus = service.consensus
        gen = service.client(llama)
        run = gen.generate(PROMPTS[0], N, Sampler(),
                           settings=RequestSettings(k_head=1, k_tail=1, redundancy=3))
        checked = 0
        async for _ in run:
            if checked or len(run.outcome.step_s) < 4:
                continue
            (session,) = [s for s in service.sessions.values() if s.outcome is run.outcome]
            task = session.task
            replicas = task.route[0].replicas
            steps = range(len(run.outcome.step_s))
            outcomes = {}
            for seq in steps:
                claims = [(await consensus.fetch(p, task, 0, seq)).claim for p in replicas]
                outcomes[seq] = try_vote(claims, consensus.keys, task_tolerance(task))
            got: dict[int, int] = {}

            async def fetch(task: Any, seq: int, outcome: Any, got: dict[int, int]) -> None:
                _, got[seq] = await consensus.fetch_majority(task, 0, seq, outcome)

            for _ in range(3):  # the interleaving differs from round to round
                async with trio.open_nursery() as nursery:
                    for seq in reversed(steps):
                        nursery.start_soon(fetch, task, seq, outcomes[seq], got)
                # step 0 is the prefill at position 0; step s >= 1 decodes at prompt + s - 1
                assert got == {s: 0 if s == 0 else len(PROMPTS[0]) + s - 1 for s in steps}
            checked = len(steps)
        assert checked >= 4


async def test_32_short_generations_at_once_complete_and_leave_no_session(testnet, models):
    net, tmp = testnet
    llama = str(models["llama"])
    local = LocalModel.load(models["llama"])
    prompts = [PROMPTS[i % 4][: 2 + i % 3] + [i] for i in range(32)]
    references = [local.generate(p, 2) for p in prompts]
    async with Node(client_config(net, tmp, "client-32")) as client:
        await wait_for_servers(client, len(net.peers))
        gen = client.inference.client(llama)
        got: dict[int, list[int]] = {}

        async def one(i: int) -> None:
            got[i] = [t async for t in gen.generate(prompts[i], 2, Sampler())]

        async with trio.open_nursery() as nursery:
            for i in range(32):
                nursery.start_soon(one, i)
        assert [got[i] for i in range(32)] == references
        assert client.inference.sessions == {}
        # a stage's session ends when the requester's `close` reaches it
        deadline = time.monotonic() + 30
        while True:
            status = await stage_status(net)
            if all(s["stage_sessions"] == 0 and s["hop_keys"] == 0 for s in status):
                break
            assert time.monotonic() < deadline, status
            await trio.sleep(0.5)
        assert sum(s["stage"]["counters"]["opened"] for s in status) >= 32
        assert all(s["requester_sessions"] == 0 for s in status)


async def test_a_killed_stage_peer_costs_only_its_own_requests_a_replay(testnet, models):
    """Requests 0 and 1 may use peer 0 or 1, requests 2 and 3 only peer 2; the peer that
    request 0 runs through is killed once every request has two tokens: the requests routed
    through it replay on the other peer, the others never re-plan, and every text equals the
    failure-free run."""
    net, tmp = testnet
    llama = str(models["llama"])
    local = LocalModel.load(models["llama"])
    references = [local.generate(p, N) for p in PROMPTS]
    peers = [p.peer_id for p in net.peers[:LLAMA_PEERS]]
    allowed = [peers[:2], peers[:2], peers[2:], peers[2:]]
    async with Node(client_config(net, tmp, "client-kill")) as client:
        await wait_for_servers(client, len(net.peers))
        gen = client.inference.client(llama)
        first_route: dict[int, str] = {}
        got: dict[int, list[int]] = {}
        outcomes: dict[int, Any] = {}
        killed = trio.Event()
        at_two = [trio.Event() for _ in PROMPTS]

        async def one(i: int) -> None:
            s = RequestSettings(k_head=1, k_tail=1, step_timeout_s=10.0, allow=allowed[i])
            run = gen.generate(PROMPTS[i], N, Sampler(), settings=s)
            outcomes[i] = run.outcome
            out = []
            async for t in run:
                out.append(t)
                if len(out) == 1:
                    first_route[i] = run.outcome.route[0].replicas[0]
                if len(out) == 2:
                    at_two[i].set()
                    await killed.wait()
            got[i] = out

        async with trio.open_nursery() as nursery:
            for i in range(len(PROMPTS)):
                nursery.start_soon(one, i)
            for ev in at_two:
                await ev.wait()
            victim = next(p for p in net.peers if p.peer_id == first_route[0])
            net.stop_peer(victim, hard=True)
            killed.set()

    assert [got[i] for i in range(len(PROMPTS))] == references
    for i in range(len(PROMPTS)):
        if first_route[i] == victim.peer_id:
            assert outcomes[i].replans >= 1, f"request {i}"
            assert victim.peer_id not in route_peers(outcomes[i])
        else:
            assert outcomes[i].replans == 0, f"request {i} replayed without cause"
    assert {first_route[2], first_route[3]} == {peers[2]}
