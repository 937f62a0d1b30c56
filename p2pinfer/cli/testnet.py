"""`p2pinfer testnet`: N peer processes on loopback joined through the first one."""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import trio

from p2pinfer.cli.options import UsageError, say
from p2pinfer.testnet import Testnet


async def _run_testnet(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    base = Path(args.base_dir) if args.base_dir else None
    async with Testnet(args.peers, base_dir=base, network_id=args.network_id,
                       progress=say, debug=args.debug) as net:
        started = time.monotonic() - t0
        if not args.check:
            for p in net.peers:
                print(f"peer {p.index}: {p.addrs[0] if p.addrs else '?'}  control {p.control_path}")
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


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.peers <= 64:
        raise UsageError("--peers must be between 1 and 64")
    return trio.run(_run_testnet, args)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("testnet", parents=[common],
                       help="start N peers on loopback joined through a bootstrap")
    p.add_argument("--peers", type=int, default=4, help="how many peer processes (1-64)")
    p.add_argument("--check", action="store_true",
                   help="exit 0 once every peer holds every other's advert; print a JSON summary")
    p.add_argument("--timeout", type=float, default=120.0, help="--check gives up after this")
    p.add_argument("--network-id", default="p2pinfer-localnet", help="the testnet's network id")
    p.add_argument("--base-dir", help="keep peers' keys, configs and logs here (default: temp)")
    p.set_defaults(func=run)
