"""Soak: a steady mix of concurrent requests while peers are killed and restarted.

Starts `--peers` `p2pinfer node` processes (half serve `p2pinfer-tiny-llama`, half
`all-minilm-l6-v2`, two replicas per stage) and a requester node in this process. For
`--minutes`, `--concurrency` workers each send greedy generations and embeddings back to back
(two generations to one embedding), every answer checked against the single-process reference.
Every `--restart-every` seconds (the first after half a period) one peer other than the bootstrap peer is stopped (SIGKILL and
SIGINT in turn, round robin) and started again `--down` seconds later with its same key and
config. Once a minute it prints the minute's requests, success rate, wrong answers, latency
percentiles, restarts, each peer's RSS, and the largest fd and trio-task counts; at the end a
table of every process lifetime (RSS, fds, tasks first -> last, flat or growing) and a verdict
line. Exits 1 on any wrong output, 3 on any other failure (success rate under
`--min-success`, a process whose RSS, fds or tasks grew, a peer that did not restart), 0 on a
pass. Every process it starts is stopped by PID on the way out.

    python tools/soak.py --minutes 30 --peers 8 --restart-every 60
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soaklib import (
    GROWTH_HEADERS,
    Outcome,
    PeerReading,
    Verdict,
    by_minute,
    compute_references,
    fmt_ms,
    growth_rows,
    minute_stats,
    peer_configs,
    read_peers,
    read_self,
    requester_config,
    run_request,
    table,
)

from p2pinfer.config import FAULT_INJECTION_KINDS
from p2pinfer.models import MINILM, TINY_LLAMA
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet, TestnetError

HEADERS = ("min", "requests", "ok", "success", "wrong", "failed", "p50 ms", "p95 ms",
           "restarted", "RSS MiB per peer", "fds max", "tasks max", "requester RSS/fds/tasks")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    verdict = Verdict()
    refs = await trio.to_thread.run_sync(compute_references)
    say(f"references computed; starting {args.peers} peers")
    net = Testnet(args.peers, config_for=peer_configs(args.peers, 2, cheat=args.cheat),
                  start_timeout=60 + 6 * args.peers, progress=say)
    outcomes: list[Outcome] = []
    restarts: list[tuple[float, int, str]] = []  # (seconds since start, peer, how)
    history: list[list[PeerReading]] = []
    async with net:
        await net.wait_converged(timeout=300)
        async with Node(requester_config(net, step_timeout_s=args.step_timeout)) as node:
            await node.wait_for_route(TINY_LLAMA, timeout=120)
            await node.wait_for_route(MINILM, timeout=120)
            print(f"{args.peers} peers, {args.concurrency} concurrent workers (2 generations : "
                  f"1 embedding), a peer killed or stopped every {args.restart_every:.0f}s and "
                  f"restarted {args.down:.0f}s later", flush=True)
            print(table(HEADERS, []), flush=True)
            t0 = trio.current_time()
            end = t0 + 60 * args.minutes

            async def worker(w: int) -> None:
                n = 0
                while trio.current_time() < end:
                    kind = "embed" if n % 3 == 2 else "generate"
                    outcomes.append(await run_request(node, kind, w + n, refs, t0, args.timeout))
                    o = outcomes[-1]
                    if not o.ok:
                        say(f"{o.kind} {'WRONG' if o.wrong else 'failed'}: {o.error}")
                    n += 1
                    await trio.sleep(args.pause)

            async def restarter() -> None:
                k = 0
                while True:
                    # half a period off the minute marks, so readings never see the instant
                    # of a kill
                    await trio.sleep_until(t0 + args.restart_every * (k + 0.5))
                    if trio.current_time() > end - args.down - 5:
                        return
                    victim = net.peers[1 + k % (len(net.peers) - 1)]
                    hard = k % 2 == 0
                    await trio.to_thread.run_sync(partial(net.stop_peer, victim, hard=hard))
                    await trio.sleep(args.down)
                    how = "SIGKILL" if hard else "SIGINT"
                    try:
                        await net.restart_peer(victim)
                        restarts.append((trio.current_time() - t0, victim.index, how))
                        say(f"peer {victim.index} stopped ({how}) and restarted")
                    except TestnetError as e:
                        verdict.require(False, f"peer {victim.index} did not restart: {e}")
                    k += 1

            async def sampler() -> None:
                for m in range(args.minutes):
                    await trio.sleep_until(t0 + 60 * (m + 1))
                    readings = await read_peers(net)
                    me = read_self(node)
                    history.append([*readings, me])
                    st = minute_stats(by_minute(outcomes, m + 1)[m])
                    alive = [r for r in readings if r.alive]
                    rss = " ".join(f"{r.rss_bytes / 2**20:.0f}" if r.alive else "-"
                                   for r in readings)
                    row = [m + 1, st.requests, st.ok,
                           "-" if not st.requests else f"{100 * st.success:.0f}%", st.wrong,
                           st.failed, fmt_ms(st.p50_ms), fmt_ms(st.p95_ms),
                           sum(1 for t, _, _ in restarts if m * 60 <= t < (m + 1) * 60), rss,
                           max((r.fds for r in alive), default=0),
                           max((r.tasks for r in alive), default=0),
                           f"{me.rss_bytes / 2**20:.0f}/{me.fds}/{me.tasks}"]
                    print(table(HEADERS, [row]).splitlines()[-1], flush=True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(restarter)
                for w in range(args.concurrency):
                    nursery.start_soon(worker, w)
                await sampler()
                nursery.cancel_scope.cancel()  # requests still in flight are not counted
    rows, grew = growth_rows(history)
    print()
    print(table(GROWTH_HEADERS, rows))
    total = minute_stats([o for o in outcomes if o.finished_s < 60 * args.minutes])
    verdict.wrong = total.wrong
    verdict.require(total.requests > 0, "no request finished")
    verdict.require(total.success >= args.min_success,
                    f"success rate {100 * total.success:.1f}% < {100 * args.min_success:.0f}%")
    verdict.require(not grew, "growth: " + ", ".join(grew[:6]))
    what = (f"soak, {args.peers} peers, {args.minutes} min, {len(restarts)} restarts: "
            f"{total.ok}/{total.requests} requests right ({100 * total.success:.1f}%), "
            f"{total.wrong} wrong, p50 {fmt_ms(total.p50_ms)} ms, p95 {fmt_ms(total.p95_ms)} ms, "
            f"{'every process flat' if not grew else 'a process grew'}")
    print(verdict.line(what), flush=True)
    return verdict.exit_code()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--restart-every", type=float, default=60.0, help="seconds between restarts")
    ap.add_argument("--down", type=float, default=5.0, help="seconds a stopped peer stays down")
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between a worker's requests")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ap.add_argument("--step-timeout", type=float, default=10.0)
    ap.add_argument("--min-success", type=float, default=0.9)
    ap.add_argument("--cheat", choices=FAULT_INJECTION_KINDS, default="",
                    help="TEST-ONLY: peer 1 computes its layers dishonestly in this way, to "
                         "check that wrong answers are caught (exit status 1)")
    args = ap.parse_args()
    if not 5 <= args.peers <= 32:
        ap.error("--peers must be between 5 and 32 (two replicas per stage of two models)")
    if args.minutes < 1 or args.restart_every < 10 or args.down < 0:
        ap.error("--minutes >= 1, --restart-every >= 10 and --down >= 0 are required")
    limit = 60 + 6 * args.peers + 300 + 240 + 60 * args.minutes + args.timeout + 120

    async def bounded() -> int:
        with trio.move_on_after(limit):
            return await run(args)
        print(f"VERDICT: FAIL (soak): the run did not finish within {limit:.0f}s")
        return 3

    try:
        code = trio.run(bounded)
    except Exception as e:  # noqa: BLE001 - the exit status must not look like a wrong output
        traceback.print_exc()
        print(f"VERDICT: FAIL (soak): the run stopped on {type(e).__name__}: {e}"[:400])
        code = 3
    sys.exit(code)


if __name__ == "__main__":
    main()
