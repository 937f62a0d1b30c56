"""The HTTP API as one of the node's services: a node whose config has `[api] enabled` serves
it from its own nursery, on loopback, with no second nursery in the caller."""

from __future__ import annotations

import httpx
import pytest
import trio

from p2pinfer.api.app import node_services
from p2pinfer.errors import ConfigError
from p2pinfer.node import Node

from ..inference.conftest import node_config, save_checkpoint


def test_a_node_with_the_api_enabled_answers_v1_models(tmp_path):
    gpt = str(save_checkpoint("gpt2", tmp_path / "gpt2", seed=5))

    async def main():
        stage_cfg = node_config(tmp_path, "stage", serve={"model": gpt, "layers": [1, 5]})
        async with Node(stage_cfg) as stage:
            cfg = node_config(tmp_path, "front", boot=[stage.addrs[0]],
                              api={"enabled": True, "listen": "127.0.0.1:0", "models": [gpt]})
            async with Node(cfg, services=node_services(cfg)) as node:
                [url] = node.service_info
                assert url.startswith("http://127.0.0.1:")
                await node.wait_for_route(gpt, timeout=60)
                async with httpx.AsyncClient() as h:
                    reply = await h.get(f"{url}/v1/models", timeout=30)
                assert reply.status_code == 200
                [model] = reply.json()["data"]
                assert model["id"] == gpt and model["object"] == "model"
                assert model["p2pinfer"]["route"] == [{"layers": [1, 5], "peers": [stage.peer_id]}]
            with pytest.raises(httpx.ConnectError):  # the API stopped with its node
                async with httpx.AsyncClient() as h:
                    await h.get(f"{url}/v1/models", timeout=5)

    trio.run(main)


def test_the_api_is_a_node_service_only_when_enabled(tmp_path):
    assert node_services(node_config(tmp_path, "off")) == []
    on = node_config(tmp_path, "on", api={"enabled": True, "listen": "127.0.0.1:0"})
    assert len(node_services(on)) == 1
    with pytest.raises(ConfigError, match="without a key"):  # refused before any node starts
        node_config(tmp_path, "public", api={"enabled": True, "listen": "0.0.0.0:8000"})
