"""`p2pinfer peers`: the peer table of a running node, read over its control socket."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import trio

from p2pinfer.cli.options import UsageError, node_config
from p2pinfer.services.control import query_control


def format_peer_table(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no peers known yet"
    rows = [("PEER", "ROLES", "MODEL [SPANS)", "RTT ms", "LOAD", "TEE", "SEEN s ago")]
    now = time.time()
    for p in peers:
        spans = ",".join(f"[{a},{b})" for a, b in p.get("spans", []) or [])
        model = p.get("model") or p.get("model_id") or ""
        rtt = p.get("rtt_ms")
        tee = p.get("tee_level") or ("-" if not p.get("tee_error") else f"rejected: {p['tee_error']}")
        rows.append((
            p["peer_id"][:16] + "..." + p["peer_id"][-6:],
            ",".join(p.get("roles", [])),
            f"{model} {spans}".strip() or "-",
            "-" if rtt is None else f"{rtt:.1f}",
            "-" if p.get("load") is None else f"{p['load']:.2f}",
            tee,
            "-" if not p.get("last_seen") else f"{max(0.0, now - p['last_seen']):.0f}",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def control_socket(args: argparse.Namespace) -> str:
    path = args.socket or str(node_config(args).control_path)
    if not Path(path).exists():
        raise UsageError(f"no running node's control socket at {path} (start `p2pinfer node` "
                         "with this config, or pass --socket)")
    return path


def run(args: argparse.Namespace) -> int:
    reply = trio.run(query_control, control_socket(args), "peers")
    if args.json:
        print(json.dumps(reply, indent=2, default=str))
    else:
        print(format_peer_table(reply.get("peers", [])))
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("peers", parents=[common], help="show the peer table of a running node")
    p.add_argument("--config", help="the running node's config TOML")
    p.add_argument("--socket", help="the node's control socket (default from --config)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)
