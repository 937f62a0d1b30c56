"""`p2pinfer infer`: generate text through the network from a short-lived client node."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import trio

from p2pinfer.cli.chat import add_sampling_args
from p2pinfer.cli.options import (
    add_client_args,
    client_config,
    preflight,
    say,
    wait_for_route,
)
from p2pinfer.config import NodeConfig


async def _run_infer(args: argparse.Namespace, cfg: NodeConfig) -> int:
    from p2pinfer.node import Node

    async with Node(cfg) as node:
        await wait_for_route(node, args.model, args.wait)
        t0 = time.perf_counter()
        text_parts: list[str] = []
        sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                    "top_p": args.top_p, "seed": args.seed}
        if args.chat is not None:  # one turn with the model's chat template
            stream = node.chat_stream([{"role": "user", "content": args.chat}],
                                      model=args.model, **sampling)
        else:
            stream = node.generate_stream(args.prompt, model=args.model, **sampling)
        async for ev in stream:
            text_parts.append(ev.text)
            if not args.json:
                print(ev.text, end="", flush=True)
        dt = time.perf_counter() - t0
        gen = stream.result
        assert gen is not None  # set once the stream ended
        ids, route = gen.token_ids, gen.route
        summary = {"prompt": args.prompt if args.chat is None else args.chat, "text": "".join(text_parts), "token_ids": ids,
                   "seconds": round(dt, 3), "tokens_per_s": round(len(ids) / dt, 2) if dt else None,
                   "route": route, "replans": gen.replans, "privacy": gen.privacy,
                   "random_weights": gen.random_weights, "verification": gen.verification,
                   "timings": gen.timings}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print()
            hops = " -> ".join(f"[{r['layers'][0]},{r['layers'][1]})@{r['peers'][0][-6:]}"
                               for r in route)
            (_, head_end), (tail_start, layers) = gen.local_layers
            say(f"{len(ids)} tokens in {dt:.2f}s; route: local[0,{head_end}) -> {hops} "
                f"-> local[{tail_start},{layers})")
            if gen.random_weights:
                say(f"note: {args.model} has RANDOM weights: the text is meaningless by design")
        return 0


def run(args: argparse.Namespace) -> int:
    cfg = client_config(args)
    preflight(args, cfg, task="generation")
    return trio.run(_run_infer, args, cfg)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("infer", parents=[common], help="generate text through the network")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="the text to continue")
    what.add_argument("--chat", help="a user message, answered with the model's chat template "
                      "(a chat model, e.g. --model smollm2-135m-instruct)")
    add_sampling_args(p, 32)
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary (text, route, verification report)")
    add_client_args(p, "p2pinfer-tiny-llama")
    p.set_defaults(func=run)
