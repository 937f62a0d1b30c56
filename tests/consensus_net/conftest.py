"""One multi-process testnet per module: m = 3 replicas per stage, one dishonest peer per stage.

The testnet is started outside trio (its peers are separate processes) and shared by the tests
of a module; each test runs its own short-lived client node in-process.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import torch
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet

from ..inference.conftest import save_checkpoint

#: the middle layers [1, 5) of a 6-layer model in three stages
SPANS = [[1, 2], [2, 3], [3, 5]]
PROMPT = [3, 17, 42, 8, 64, 5]


def start_testnet(tmp: Path, faults: list[str], threads: list[int] | None = None,
                  dtypes: list[str] | None = None,
                  peer_dtypes: list[str] | None = None) -> tuple[Testnet, Path]:
    """Three replicas per span; `faults[i]` is the TEST-ONLY fault of stage i's third peer;
    replica j of every stage runs `threads[j]` torch threads in precision `dtypes[j]` (or peer
    3 i + j in `peer_dtypes[3 i + j]` when given)."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint("llama", tmp / "llama", seed=3)
    threads = threads or [1, 2, 1]
    dtypes = dtypes or ["float32"] * 3

    def config_for(i: int) -> dict[str, dict[str, Any]]:
        stage, replica = divmod(i, 3)
        serve: dict[str, Any] = {"model": str(checkpoint), "layers": SPANS[stage],
                                 "threads": threads[replica],
                                 "dtype": peer_dtypes[i] if peer_dtypes else dtypes[replica]}
        if replica == 2 and faults[stage]:
            serve["fault_injection"] = faults[stage]
        return {"serve": serve, "gossip": {"advert_interval_s": 1.0}}

    net = Testnet(3 * len(SPANS), base_dir=tmp / "net", config_for=config_for,
                  start_timeout=120)
    try:
        trio.run(net.start)
        trio.run(net.wait_converged, 90)
    except BaseException:
        net.stop()
        raise
    return net, checkpoint


def client_config(net: Testnet, tmp: Path, name: str) -> Any:
    # a fresh identity per attempt: a rerun must not look like the last attempt's requester
    data_dir = tmp / f"{name}-{secrets.token_hex(4)}"
    return config_from_dict({
        "node": {"name": name, "data_dir": str(data_dir), "network_id": net.network_id,
                 "roles": ["client"]},
        "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
        "control": {"enabled": False},
        "gossip": {"advert_interval_s": 1.0},
        "inference": {"step_timeout_s": 15.0, "k_head": 1, "k_tail": 1, "redundancy": 3},
    })


async def wait_for_servers(client: Node, n: int) -> None:
    with trio.fail_after(60):
        while len([p for p in client.peers() if p.spans]) < n:
            await trio.sleep(0.2)


async def wait_until_true(cond: Any, timeout: float, what: str, context: Any) -> None:
    """Poll `cond()` for up to `timeout` s; on timeout fail with `context()` (the consensus
    state, the report) in the message, so a slow machine's failure says what was missing."""
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.1)
    if not cond():
        raise AssertionError(f"{what} not within {timeout} s; state: {context()}")


def consensus_state(client: Node, outcome: Any = None) -> dict[str, Any]:
    """The consensus service's state and, given a request's `RequestOutcome`, its report."""
    state: dict[str, Any] = {"consensus": client.inference.consensus.status()}
    if outcome is not None and outcome.report is not None:
        state["report"] = outcome.verification()
    return state


def fault_peer(net: Testnet, stage: int) -> str:
    return net.peers[3 * stage + 2].peer_id


async def with_client(net: Testnet, tmp: Path, name: str, body: Any) -> None:
    """Run `body(client_node)` on a fresh requester node (a failure of the body propagates
    as itself: a node's exit never wraps or replaces it)."""
    async with Node(client_config(net, tmp, name)) as client:
        await body(client)
