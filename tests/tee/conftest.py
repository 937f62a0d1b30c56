"""In-process networks of real nodes on loopback with simulated TEEs and attested channels."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pinfer.node import Node
from tests.inference.conftest import node_config, save_checkpoint

TRUST = {"attester": "simulated", "policy": "testnet"}


@asynccontextmanager
async def tee_network(tmp: Path, model: str, spans: list[list[int]], *,
                      trust: dict[str, Any] | None = TRUST,
                      stage_trust: list[dict[str, Any] | None] | None = None,
                      wait_verified: int | None = None, **client_inference: Any):
    """Stage nodes serving `spans` and a client node, all with `trust` (per-stage overrides
    in `stage_trust`); waits until the client sees every span and has attested
    `wait_verified` peers (default: all). Yields (client, stages)."""
    async with AsyncExitStack() as stack:
        stages: list[Node] = []
        boot: list[str] = []
        for i, span in enumerate(spans):
            t = stage_trust[i] if stage_trust is not None else trust
            extra = {"trust": t} if t else {}
            node = await stack.enter_async_context(Node(node_config(
                tmp, f"stage{i}", boot=boot, serve={"model": model, "layers": span}, **extra)))
            stages.append(node)
            boot = boot or [node.addrs[0]]
        extra = {"trust": trust} if trust else {}
        client = await stack.enter_async_context(
            Node(node_config(tmp, "client", boot=boot, inference=client_inference, **extra)))
        want = len(spans) if wait_verified is None else wait_verified
        with trio.fail_after(30):
            while len([p for p in client.peers() if p.spans]) < len(spans):
                await trio.sleep(0.1)
            att = client.attestation
            while att is not None and sum(
                    1 for p in client.peers()
                    if "tee_level" in p.extra or "tee_error" in p.extra) < want:
                await trio.sleep(0.1)
        yield client, stages


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Path:
    return save_checkpoint("llama", tmp_path_factory.mktemp("tee-ckpt") / "llama")
