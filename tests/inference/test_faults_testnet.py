"""Fault tolerance over a multi-process testnet: a killed and a stalled stage peer.

Four peer processes serve a small random Llama checkpoint, two replicas per span. A client node
in this process generates greedily; mid-generation the peer running one stage is killed (and,
in a second run, frozen with SIGSTOP). The requester re-plans that span onto the other replica,
replays the session's history, and the text equals the failure-free, single-process result.
"""

import os
import signal

import pytest
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet

from .conftest import save_checkpoint

SPANS = [[1, 3], [1, 3], [3, 5], [3, 5]]
PROMPT = [3, 17, 42, 8, 64, 5]
N = 14


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint("llama", tmp_path / "llama", seed=3)


def client_config(net, tmp_path):
    return config_from_dict({
        "node": {"name": "client", "data_dir": str(tmp_path / "client"),
                 "network_id": net.network_id, "roles": ["client"]},
        "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
        "control": {"enabled": False},
        "inference": {"step_timeout_s": 4.0, "k_head": 1, "k_tail": 1},
    })


async def test_generation_survives_a_killed_and_a_stalled_peer(tmp_path, checkpoint):
    reference = LocalModel.load(checkpoint).generate(PROMPT, N)
    assert len(set(reference)) > 2
    config_for = lambda i: {"serve": {"model": str(checkpoint), "layers": SPANS[i]},
                            "gossip": {"advert_interval_s": 1.0}}
    stopped: list[int] = []
    async with Testnet(4, base_dir=tmp_path / "net", config_for=config_for) as net:
        try:
            await net.wait_converged(timeout=60)
            by_id = {p.peer_id: p for p in net.peers}
            async with Node(client_config(net, tmp_path)) as client:
                with trio.fail_after(60):
                    while len([p for p in client.peers() if p.spans]) < 4:
                        await trio.sleep(0.2)
                c = client.inference.client(str(checkpoint))

                # 1. kill the peer running stage 0 after 4 tokens
                got = []
                run = c.generate(PROMPT, N, Sampler())
                async for tok in run:
                    got.append(tok)
                    if len(got) == 4:
                        victim = by_id[run.outcome.route[0].replicas[0]]
                        net.stop_peer(victim, hard=True)
                assert got == reference
                assert run.outcome.replans >= 1
                assert victim.peer_id not in {r for s in run.outcome.route for r in s.replicas}

                # 2. freeze the peer running stage 1 after 4 tokens
                got = []
                run = c.generate(PROMPT, N, Sampler())
                async for tok in run:
                    got.append(tok)
                    if len(got) == 4:
                        frozen = by_id[run.outcome.route[1].replicas[0]]
                        os.kill(frozen.proc.pid, signal.SIGSTOP)
                        stopped.append(frozen.proc.pid)
                assert got == reference
                assert run.outcome.replans >= 1
                assert frozen.peer_id not in {r for s in run.outcome.route for r in s.replicas}
                assert frozen.peer_id in c.backoff.excluded()
                # it missed the requester's ping: unreachable, left out of new routes
                assert frozen.peer_id in client.unreachable()
                assert victim.peer_id in client.unreachable()  # its dial is refused
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
