"""Real nodes on 127.0.0.1 for the net tests; every wait is bounded by trio.fail_after."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from p2pinfer.config import NodeConfig, config_from_dict
from p2pinfer.identity import NodeIdentity
from p2pinfer.node import Node

NETWORK = "net-test"


def node_config(
    tmp: Path, name: str, *, boot: list[str] | None = None, **sections: Any
) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"name": name, "data_dir": str(tmp / name), "network_id": NETWORK},
        "net": {"bootstrap": boot or [], "redial_interval_s": 0.5},
        "control": {"enabled": False},
        "gossip": {"advert_interval_s": 2.0},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return config_from_dict(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run_node(
    cfg: NodeConfig, identity: NodeIdentity | None, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    async with Node(cfg, identity=identity) as node:
        task_status.started(node)
        await trio.sleep_forever()


class NodeRunner:
    """Runs nodes in their own tasks so each can be stopped (and restarted) on its own."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self._scopes: dict[str, tuple[trio.CancelScope, trio.Event]] = {}

    async def start(self, cfg: NodeConfig, identity: NodeIdentity | None = None) -> Node:
        scope = trio.CancelScope()
        done = trio.Event()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await _run_node(cfg, identity, task_status=task_status)
            finally:
                done.set()

        node: Node = await self.nursery.start(run)
        self._scopes[node.peer_id] = (scope, done)
        return node

    async def start_many(self, cfgs: list[NodeConfig]) -> list[Node]:
        out: dict[int, Node] = {}

        async def one(i: int, cfg: NodeConfig) -> None:
            out[i] = await self.start(cfg)

        async with trio.open_nursery() as n:
            for i, cfg in enumerate(cfgs):
                n.start_soon(one, i, cfg)
        return [out[i] for i in range(len(cfgs))]

    async def stop(self, node: Node) -> None:
        scope, done = self._scopes.pop(node.peer_id)
        scope.cancel()
        with trio.fail_after(10):
            await done.wait()


@asynccontextmanager
async def node_runner() -> AsyncIterator[NodeRunner]:
    async with trio.open_nursery() as nursery:
        yield NodeRunner(nursery)
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Any, timeout: float, what: str = "condition") -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
