"""`p2pinfer testnet`: N peer processes on loopback joined through the first one."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import trio

from p2pinfer.cli.options import UsageError, say
from p2pinfer.config import InferenceSection
from p2pinfer.identity import DEVNET_PORT, devnet_bootstrap_addr
from p2pinfer.testnet import DEFAULT_NETWORK_ID, Testnet, TestnetError, serving_plan


def _model_layers(names: list[str]) -> dict[str, tuple[int, bool, bool]]:
    """name -> (layers, is_decoder, has a chat template) of each model to serve (a directory or
    a built-in)."""
    from p2pinfer.models import Tokenizer, load_model_info
    from p2pinfer.models.errors import ModelError
    from p2pinfer.zk.builtins import builtin_model_path

    out = {}
    for name in names:
        try:
            path = Path(name) if Path(name).exists() else builtin_model_path(name)
            info = load_model_info(path)
        except ModelError as e:
            raise UsageError(f"--model {name}: {e}") from None
        chat = info.is_decoder and Tokenizer.load(path).chat_template is not None
        out[name] = (info.num_layers, info.is_decoder, chat)
    return out


def client_commands(boot: str, network_id: str, models: dict[str, tuple[int, bool, bool]],
                    redundancy: int) -> list[str]:
    """The commands that ask this testnet, each ready to paste (the local devnet's bootstrap
    is every client's default, so they name it only when this testnet is elsewhere)."""
    common = "" if boot == devnet_bootstrap_addr() else f" --bootstrap {boot}"
    if network_id != DEFAULT_NETWORK_ID:
        common += f" --network-id {network_id}"
    lines = []
    for name, (_, decoder, chat) in models.items():
        if decoder:
            extra = f" --mode general --redundancy {redundancy}" if redundancy > 1 else ""
            ask = '--chat "What is the capital of France?"' if chat else '--prompt "hello"'
            lines.append(f"p2pinfer infer{common} --model {name}{extra} {ask}")
            if chat:
                lines.append(f"p2pinfer chat{common} --model {name}{extra}")
        else:
            lines.append(f'p2pinfer embed{common} --model {name} --text "a cat" '
                         '--text "a kitten"')
    return lines


async def _run_testnet(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    base = Path(args.base_dir) if args.base_dir else None
    models = _model_layers(args.model or [])
    plan: list[tuple[str, tuple[int, int]]] = []
    if models:
        inf = InferenceSection()
        try:
            plan = serving_plan({m: n for m, (n, _, _) in models.items()}, args.peers,
                                args.redundancy, k_head=inf.k_head, k_tail=inf.k_tail)
        except TestnetError as e:
            raise UsageError(str(e)) from None

    def config_for(i: int) -> dict[str, dict[str, object]]:
        sections: dict[str, dict[str, object]] = {}
        if i == 0 and args.port:  # the bootstrap: the devnet's public key at a fixed address
            sections["node"] = {"devnet_key": True}
            sections["net"] = {"listen": [f"/ip4/127.0.0.1/tcp/{args.port}"]}
        if plan:
            model, (a, b) = plan[i]
            sections["serve"] = {"model": model, "layers": [a, b]}
        return sections

    async with Testnet(args.peers, base_dir=base, network_id=args.network_id,
                       config_for=config_for, progress=say, debug=args.debug,
                       start_timeout=args.start_timeout) as net:
        started = time.monotonic() - t0
        if not args.check:
            for p in net.peers:
                serves = f"  serves {plan[p.index][0]} [{plan[p.index][1][0]}, " \
                         f"{plan[p.index][1][1]})" if plan else ""
                print(f"peer {p.index}: {p.addrs[0] if p.addrs else '?'}{serves}")
            if plan:
                print("ask it with:")
                for line in client_commands(net.peers[0].addrs[0], args.network_id, models,
                                            args.redundancy):
                    print(f"  {line}")
            print("testnet running; Ctrl-C stops every peer", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    async def watch() -> None:
                        while net.alive():
                            await trio.sleep(0.5)
                        say("every peer has exited")
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watch)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()
            say("stopping peers")
            return 0
        converge_s = await net.wait_converged(args.timeout)
        summary = {
            "converged": True,
            "peers": args.peers,
            "network_id": args.network_id,
            "startup_s": round(started, 3),
            "convergence_s": round(converge_s, 3),
            "total_s": round(time.monotonic() - t0, 3),
            "nodes": [{"index": p.index, "peer_id": p.peer_id, "addrs": p.addrs} for p in net.peers],
        }
        print(json.dumps(summary, indent=2), flush=True)
        return 0


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the peer's own listener does: a previous run's closed connections do not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(
                f"127.0.0.1:{port} is in use (another devnet running?): stop it, or pass "
                "--port 0 for a testnet at a free port with a key of its own") from None


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.peers <= 64:
        raise UsageError("--peers must be between 1 and 64")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a TCP port")
    if args.port:
        _check_port_free(args.port)
    return trio.run(_run_testnet, args)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("testnet", parents=[common],
                       help="start N peers on loopback joined through a bootstrap")
    p.add_argument("--peers", type=int, default=4, help="how many peer processes (1-64)")
    p.add_argument("--check", action="store_true",
                   help="exit 0 once every peer holds every other's advert; print a JSON summary")
    p.add_argument("--timeout", type=float, default=120.0, help="--check gives up after this")
    p.add_argument("--model", action="append",
                   help="serve this model's middle layers (directory or built-in name; "
                        "repeatable); peers are shared out over the models")
    p.add_argument("--redundancy", type=int, default=1,
                   help="replicas per stage of each served model (default 1)")
    p.add_argument("--network-id", default=DEFAULT_NETWORK_ID,
                   help=f"the testnet's network id (default {DEFAULT_NETWORK_ID})")
    p.add_argument("--port", type=int, default=DEVNET_PORT,
                   help=f"the bootstrap peer's port on 127.0.0.1, with the devnet's public key "
                        f"so that clients find it without --bootstrap (default {DEVNET_PORT}); "
                        "0: any free port and a key of its own")
    p.add_argument("--start-timeout", type=float, default=240.0,
                   help="give up when the peers have not all started after this many seconds "
                        "(they load their layers first; default 240)")
    p.add_argument("--base-dir", help="keep peers' keys, configs and logs here (default: temp)")
    p.set_defaults(func=run)
