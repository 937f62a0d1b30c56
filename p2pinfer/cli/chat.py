"""`p2pinfer chat`: a conversation with a chat model through the network.

One user message per line on stdin (a terminal or a pipe); each answer is streamed as it is
generated, formatted with the model's chat template. Every turn continues the same route
session, whose stages keep the earlier turns in their KV caches: a turn sends only its own new
tokens. `/reset` starts over, Ctrl-C stops one answer, Ctrl-D (end of input) leaves.

With `--mode critical` and a provable model (e.g. p2pinfer-zk-llama) every token is a proven
step: each stage proves its layers over its committed KV cache and the requester verifies every
stage's proof before it samples the next token; the stages' committed caches keep the earlier
turns too (the model's byte vocabulary stays on this machine).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import trio

from p2pinfer.cli.options import (
    add_client_args,
    client_config,
    preflight,
    say,
    wait_for_route,
)
from p2pinfer.config import NodeConfig

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"


def turn_summary(user: str, gen: Any) -> dict[str, Any]:
    """One turn as a JSON-able dict (what `--json` prints, one line per turn)."""
    return {"user": user, "text": gen.text, "token_ids": gen.token_ids,
            "prompt_tokens": gen.prompt_tokens, "tokens_sent": gen.tokens_sent,
            "tokens_reused": gen.tokens_reused, "notes": gen.notes, "route": gen.route,
            "replans": gen.replans, "verification": gen.verification, "timings": gen.timings,
            "mode": gen.mode, "proofs": gen.proofs}


class _Answering:
    """Which answer Ctrl-C stops (None between answers: Ctrl-C then leaves)."""

    def __init__(self, leave: trio.CancelScope) -> None:
        self.scope: trio.CancelScope | None = None
        self.leave = leave


async def _watch_interrupts(state: _Answering) -> None:
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            if state.scope is not None:
                state.scope.cancel()
            else:
                state.leave.cancel()


async def _converse(args: argparse.Namespace, conv: Any, state: _Answering) -> None:
    from p2pinfer.inference.client import PromptTooLong  # torch: only once a node runs

    interactive = sys.stdin.isatty()
    if interactive:
        say("type a message; /reset starts over, Ctrl-C stops an answer, Ctrl-D leaves")
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:  # end of input
            if interactive:
                print(file=sys.stderr)
            return
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            await conv.reset()
            say("(conversation reset)")
            continue
        stream = conv.send(text)
        with trio.CancelScope() as scope:
            state.scope = scope
            try:
                async for ev in stream:
                    if not args.json:
                        print(ev.text, end="", flush=True)
            except PromptTooLong as e:
                say(f"p2pinfer: {e}")
                continue
            finally:
                state.scope = None
        if scope.cancelled_caught:
            if not args.json:
                print(flush=True)
            say("(answer stopped)")
            continue
        gen = stream.result
        assert gen is not None
        if args.json:
            print(json.dumps(turn_summary(text, gen)), flush=True)
        else:
            print(flush=True)
            reused = f", {gen.tokens_reused} cached" if gen.tokens_reused else ""
            proven = (f"; {len(gen.proofs)} stage proofs of KV-cache steps verified"
                      if gen.proofs else "")
            say(f"[{len(gen.token_ids)} tokens in {gen.seconds:.2f}s; {gen.tokens_sent} "
                f"sent to the route{reused}{proven}]" + "".join(f" {n}" for n in gen.notes))


async def _run_chat(args: argparse.Namespace, cfg: NodeConfig) -> int:
    from p2pinfer.node import Node

    async with Node(cfg) as node:
        await wait_for_route(node, args.model, args.wait)
        async with node.conversation(
                model=args.model, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                system=args.system) as conv, trio.open_nursery() as nursery:
            state = _Answering(nursery.cancel_scope)
            nursery.start_soon(_watch_interrupts, state)
            await _converse(args, conv, state)
            nursery.cancel_scope.cancel()
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = client_config(args)
    preflight(args, cfg, task="chat")
    return trio.run(_run_chat, args, cfg)


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"stop an answer after this many new tokens (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: keep the smallest set of tokens with this much "
                        "probability (default 1.0 = all)")
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible runs)")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("chat", parents=[common],
                       help="a multi-turn conversation with a chat model through the network")
    add_sampling_args(p, 128)
    p.add_argument("--system", help="a system message that opens the conversation")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line per turn (text, tokens sent, route, verification) "
                        "instead of the streamed text")
    add_client_args(p, DEFAULT_CHAT_MODEL)
    p.set_defaults(func=run)
