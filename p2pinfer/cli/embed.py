"""`p2pinfer embed`: sentence embeddings through the network from a short-lived client node."""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from p2pinfer.cli.options import add_client_args, client_config, preflight, wait_for_route
from p2pinfer.config import NodeConfig


async def _run_embed(args: argparse.Namespace, cfg: NodeConfig) -> int:
    from p2pinfer.node import Node

    async with Node(cfg) as node:
        await wait_for_route(node, args.model, args.wait)
        vecs = await node.embed(args.text, model=args.model)
        out: dict[str, Any] = {"model": args.model, "dim": int(vecs.shape[1]),
                               "embeddings": [[round(float(x), 6) for x in v] for v in vecs]}
        if len(args.text) > 1:
            sims = vecs @ vecs.T
            out["cosine"] = [[round(float(x), 4) for x in row] for row in sims]
        print(json.dumps(out))
        return 0


def run(args: argparse.Namespace) -> int:
    cfg = client_config(args)
    preflight(args, cfg, task="embedding")
    return trio.run(_run_embed, args, cfg)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("embed", parents=[common], help="sentence embeddings through the network")
    p.add_argument("--text", action="append", required=True, help="text to embed (repeatable)")
    add_client_args(p, "all-minilm-l6-v2")
    p.set_defaults(func=run)
