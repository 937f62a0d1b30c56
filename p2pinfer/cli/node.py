"""`p2pinfer node`: run a peer until Ctrl-C (or SIGTERM)."""

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


def _write_ready(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def _run_node(cfg: NodeConfig, ready_file: str | None) -> None:
    from p2pinfer.node import Node  # libp2p and torch: loaded only by commands that run a node

    services: list[Any] = []
    if cfg.api.enabled:
        from p2pinfer.api.app import node_services  # the HTTP stack, only when it is on

        services = node_services(cfg)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Node(cfg, services=services) as node:
            print(f"p2pinfer node {node.peer_id} on network {cfg.node.network_id}", flush=True)
            for addr in node.addrs:
                print(f"  listening {addr}", flush=True)
            api = node.service_info[0] if cfg.api.enabled else ""
            if api:
                print(f"  API on {api}/v1 (status page {api}/, metrics {api}/metrics)",
                      flush=True)
                if not cfg.api.keys:
                    say(f"note: no API keys set; anyone who can reach {api} may use it")
            if ready_file:
                _write_ready(Path(ready_file), {
                    "peer_id": node.peer_id, "addrs": node.addrs, "pid": os.getpid(),
                    "control": str(cfg.control_path) if cfg.control.enabled else "",
                    "api": api,
                })
            async for _ in signals:
                print("stopping", flush=True)
                break


def run(args: argparse.Namespace) -> int:
    cfg = node_config(args)
    if args.data_dir:  # one config, several peers on one machine: each its own key and socket
        cfg = with_overrides(cfg, node={"data_dir": args.data_dir})
    trio.run(_run_node, cfg, args.ready_file)
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("node", parents=[common], help="run a peer until Ctrl-C")
    p.add_argument("--config", help="node config TOML (see node_configs/)")
    p.add_argument("--data-dir", help="the node's key, caches and control socket go here "
                   "(overrides node.data_dir: run one config as several peers)")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(func=run)
