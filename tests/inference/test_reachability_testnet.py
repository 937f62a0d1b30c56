"""Dead peers leave plans at once, over a multi-process testnet.

Three peer processes serve the same middle layers of a small random Llama checkpoint. A client
node in this process generates once (so it is connected to the replica it used), then that
replica's process is killed with SIGKILL: the client marks it unreachable within seconds (its
connection dropped and the dial back is refused), so the next request plans around it with no
failed attempt although its advert is still in the table. Restarted, the peer is probed again
and routed to once more.
"""

import time

import pytest
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet

from .conftest import save_checkpoint

PROMPT = [3, 17, 42, 8, 64, 5]
N = 6


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint("llama", tmp_path / "llama", seed=3)


def client_config(net, tmp_path):
    return config_from_dict({
        "node": {"name": "client", "data_dir": str(tmp_path / "client"),
                 "network_id": net.network_id, "roles": ["client"]},
        "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
        "control": {"enabled": False},
        "gossip": {"advert_interval_s": 1.0},
        "inference": {"step_timeout_s": 10.0, "k_head": 1, "k_tail": 1},
    })


async def wait_until(pred, timeout: float, what: str, state=lambda: "") -> float:
    t0 = time.monotonic()
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return time.monotonic() - t0
    raise AssertionError(f"not within {timeout} s: {what} {state()}")


async def test_a_killed_replica_leaves_the_next_plan_without_a_failed_attempt(
        tmp_path, checkpoint):
    reference = LocalModel.load(checkpoint).generate(PROMPT, N)
    config_for = lambda i: {"serve": {"model": str(checkpoint), "layers": [1, 5]},
                            "gossip": {"advert_interval_s": 1.0}}
    async with Testnet(3, base_dir=tmp_path / "net", config_for=config_for) as net:
        await net.wait_converged(timeout=60)
        by_id = {p.peer_id: p for p in net.peers}
        async with Node(client_config(net, tmp_path)) as client:
            await wait_until(lambda: len([p for p in client.peers() if p.spans]) == 3, 60,
                             "the client knows the three servers")
            c = client.inference.client(str(checkpoint))
            # the victim must not be the bootstrap peer: restarted on a new port with no
            # bootstrap of its own, nobody would find it again
            boot = net.peers[0].peer_id
            not_boot = c._settings(None).__class__(**{**vars(c.settings), "deny": [boot]})
            run = c.generate(PROMPT, N, Sampler(), settings=not_boot)
            assert [t async for t in run] == reference
            victim = by_id[run.outcome.route[0].replicas[0]]
            assert victim.peer_id != boot
            assert victim.peer_id in client.connected_peers()

            net.stop_peer(victim, hard=True)
            took = await wait_until(lambda: victim.peer_id in client.unreachable(), 10,
                                    "the killed peer is marked unreachable")
            assert took < 5.0
            # its advert is still in the table, but it is not routed to
            assert victim.peer_id in {p.peer_id for p in client.peers()}
            run = c.generate(PROMPT, N, Sampler())
            assert [t async for t in run] == reference
            assert run.outcome.replans == 0 and run.outcome.failures == []
            assert victim.peer_id not in run.outcome.route[0].replicas
            assert victim.peer_id not in c.backoff.excluded()  # it never failed a request
            assert client.status()["counters"]["reachability"]["unreachable"] == 1

            # back again: probed (its fresh advert, its connection or the back-off schedule)
            # and routable once it answered
            await net.restart_peer(victim)
            await wait_until(lambda: victim.peer_id not in client.unreachable(), 60,
                             "the restarted peer is reachable again",
                             lambda: (client.peer(victim.peer_id).to_dict(), victim.addrs,
                                      client.status()["counters"]["reachability"],
                                      time.time()))
            # a restarted peer advertises its spans once its layers have loaded again
            await wait_until(lambda: (row := client.peer(victim.peer_id)) is not None
                             and bool(row.spans), 60, "the restarted peer serves again")
            others = [p for p in by_id if p != victim.peer_id]
            only = c._settings(None).__class__(**{**vars(c.settings), "deny": others})
            run = c.generate(PROMPT, N, Sampler(), settings=only)
            assert [t async for t in run] == reference
            assert run.outcome.replans == 0
            assert run.outcome.route[0].replicas == (victim.peer_id,)
