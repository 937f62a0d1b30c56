"""`p2pinfer status`: a running node's identity, uptime and counters, over its control
socket."""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from p2pinfer.cli.peers import control_socket
from p2pinfer.services.control import query_control


def run(args: argparse.Namespace) -> int:
    reply = trio.run(query_control, control_socket(args), "status")
    reply.pop("ok", None)
    print(json.dumps(reply, indent=2, default=str))
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common],
                       help="a running node's counters (requests, sessions, rejected messages "
                            "by reason, votes, bans, channels, uptime) as JSON")
    p.add_argument("--config", help="the running node's config TOML")
    p.add_argument("--socket", help="the node's control socket (default from --config)")
    p.set_defaults(func=run)
