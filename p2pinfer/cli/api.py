"""`p2pinfer api`: run a node with the HTTP API on (OpenAI-compatible /v1, /metrics, status
page) until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

import trio

from p2pinfer.cli.options import node_config, say
from p2pinfer.config import NodeConfig, with_overrides


async def _run_api(cfg: NodeConfig, ready_file: str | None) -> None:
    # starlette, libp2p and torch: loaded when it runs
    from p2pinfer.api.app import node_services
    from p2pinfer.node import Node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Node(cfg, services=node_services(cfg)) as node:
            url = node.service_info[0]
            print(f"p2pinfer node {node.peer_id} on network {cfg.node.network_id}", flush=True)
            print(f"  API on {url}/v1 (status page {url}/, metrics {url}/metrics)", flush=True)
            if not cfg.api.keys:
                say(f"note: no API keys set; anyone who can reach {url} may use it")
            if ready_file:
                tmp = Path(ready_file).with_suffix(".tmp")
                tmp.write_text(json.dumps({"peer_id": node.peer_id, "addrs": node.addrs,
                                           "pid": os.getpid(), "api": url}))
                os.replace(tmp, ready_file)
            async for _ in signals:
                print("stopping", flush=True)
                break


def run(args: argparse.Namespace) -> int:
    cfg = node_config(args)
    api: dict[str, Any] = {"enabled": True}
    if args.listen:
        api["listen"] = args.listen
    overrides: dict[str, dict[str, Any]] = {"api": api}
    if args.bootstrap:
        overrides["net"] = {"bootstrap": list(args.bootstrap)}
    if args.network_id:
        overrides["node"] = {"network_id": args.network_id}
    trio.run(_run_api, with_overrides(cfg, **overrides), args.ready_file)
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("api", parents=[common],
                       help="run a node serving the OpenAI-compatible HTTP API")
    p.add_argument("--config", help="node config TOML with an [api] section (see node_configs/)")
    p.add_argument("--listen", help="host:port for the API (default: the config's api.listen)")
    p.add_argument("--bootstrap", action="append",
                   help="a peer to join through, as /ip4/.../tcp/.../p2p/<id> (repeatable; "
                        "replaces the config's net.bootstrap)")
    p.add_argument("--network-id", help="network to join (default: the config's)")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(func=run)
