"""Scale check: N peer processes on loopback converge, serve generation and embeddings, and keep
every GossipSub mesh non-empty for the whole run.

Starts `--peers` `p2pinfer node` processes (half serve `p2pinfer-tiny-llama`, half
`all-minilm-l6-v2`, `--redundancy` replicas per stage), waits until every peer's table holds
every other peer, then once a minute for `--minutes`: sends a round of concurrent greedy
generations and embeddings from a requester node in this process (each checked against the
single-process reference), and reads every peer's advert-topic mesh size, connections, table
size, RSS, open fds and trio tasks. Prints a table row per minute and a verdict line; exits 1 on
any wrong output, 3 on any other failure (no convergence, an empty mesh, a minute without a
successful generation and embedding, a peer that died), 0 on a pass. Every process it starts is
stopped by PID on the way out.

    python tools/scale_testnet.py --peers 50 --minutes 10
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soaklib import (
    CROWDED_GOSSIP,
    GROWTH_HEADERS,
    Outcome,
    Verdict,
    compute_references,
    fmt_ms,
    growth_rows,
    median_int,
    minute_stats,
    peer_configs,
    read_peers,
    requester_config,
    run_request,
    table,
)

from p2pinfer.models import MINILM, TINY_LLAMA
from p2pinfer.node import Node
from p2pinfer.testnet import Testnet, TestnetError

#: more peers than this on one machine get CROWDED_GOSSIP
CROWDED_ABOVE = 24

HEADERS = ("min", "gen ok", "emb ok", "wrong", "p50 ms", "p95 ms", "mesh min/med",
           "empty meshes", "table min", "conn min", "RSS sum GiB", "RSS max MiB", "fds max",
           "tasks max")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    verdict = Verdict()
    refs = await trio.to_thread.run_sync(compute_references)
    say(f"references computed; starting {args.peers} peers")
    t_start = trio.current_time()
    gossip = CROWDED_GOSSIP if args.peers > CROWDED_ABOVE else None
    if gossip:
        say(f"more than {CROWDED_ABOVE} peers on this machine: gossip settings {gossip}")
    net = Testnet(args.peers, config_for=peer_configs(args.peers, args.redundancy, gossip=gossip),
                  start_timeout=60 + 6 * args.peers, progress=say)
    async with net:
        startup_s = trio.current_time() - t_start
        try:
            converge_s = await net.wait_converged(timeout=args.converge_timeout)
        except TestnetError as e:
            print(f"VERDICT: FAIL (scale, {args.peers} peers): {e}")
            return 3
        say(f"converged in {converge_s:.1f}s")
        async with Node(requester_config(net, step_timeout_s=60.0, gossip=gossip)) as node:
            try:
                await node.wait_for_route(TINY_LLAMA, timeout=300)
                await node.wait_for_route(MINILM, timeout=300)
            except Exception:
                st = node.status()
                say(f"requester: {st['known_peers']} peers known, {st['connected']} connected, "
                    f"reachability {st['counters']['reachability']}, gossip "
                    f"{st['counters'].get('gossip')}")
                raise
            print(f"{args.peers} peers started in {startup_s:.1f}s, every table complete "
                  f"{converge_s:.1f}s later; {args.gens} generations + {args.embeds} embeddings "
                  f"a minute, concurrently", flush=True)
            print(table(HEADERS, []), flush=True)
            t0 = trio.current_time()
            history = []
            all_outcomes: list[Outcome] = []
            for minute in range(args.minutes):
                outcomes: list[Outcome] = []

                async def one(kind: str, i: int, into: list[Outcome]) -> None:
                    into.append(await run_request(node, kind, i, refs, t0, args.timeout))

                async with trio.open_nursery() as nursery:
                    for i in range(args.gens):
                        nursery.start_soon(one, "generate", minute * args.gens + i, outcomes)
                    for i in range(args.embeds):
                        nursery.start_soon(one, "embed", minute * args.embeds + i, outcomes)
                # the readings are taken at the end of the minute, after the requests
                await trio.sleep_until(t0 + 60 * (minute + 1) - 5)
                readings = await read_peers(net)
                history.append(readings)
                all_outcomes.extend(outcomes)
                alive = [r for r in readings if r.alive]
                meshes = [r.mesh for r in alive]
                empty = [r.index for r in alive if r.mesh <= 0]
                gens = [o for o in outcomes if o.kind == "generate"]
                embs = [o for o in outcomes if o.kind == "embed"]
                st = minute_stats(outcomes)
                verdict.wrong += st.wrong
                verdict.require(not empty, f"minute {minute + 1}: empty mesh on peers {empty}")
                verdict.require(any(o.ok for o in gens),
                                f"minute {minute + 1}: no generation succeeded")
                verdict.require(any(o.ok for o in embs),
                                f"minute {minute + 1}: no embedding succeeded")
                dead = [r.index for r in readings if not r.alive]
                verdict.require(not dead, f"minute {minute + 1}: peers {dead} died")
                row = [minute + 1, f"{sum(o.ok for o in gens)}/{len(gens)}",
                       f"{sum(o.ok for o in embs)}/{len(embs)}", st.wrong, fmt_ms(st.p50_ms),
                       fmt_ms(st.p95_ms), f"{min(meshes, default=0)}/{median_int(meshes)}",
                       len(empty), min((r.known_peers for r in alive), default=0),
                       min((r.connected for r in alive), default=0),
                       f"{sum(r.rss_bytes for r in alive) / 2**30:.2f}",
                       f"{max((r.rss_bytes for r in alive), default=0) / 2**20:.0f}",
                       max((r.fds for r in alive), default=0),
                       max((r.tasks for r in alive), default=0)]
                print(table(HEADERS, [row]).splitlines()[-1], flush=True)
                for o in outcomes:
                    if not o.ok:
                        say(f"{o.kind} {'WRONG' if o.wrong else 'failed'}: {o.error}")
                await trio.sleep_until(t0 + 60 * (minute + 1))
    rows, grew = growth_rows(history)
    if args.growth_table:
        print()
        print(table(GROWTH_HEADERS, rows))
    total = minute_stats(all_outcomes)
    what = (f"scale, {args.peers} peers, {args.minutes} min: {total.ok}/{total.requests} "
            f"requests right, {total.wrong} wrong, "
            f"{'no process grew' if not grew else 'growth: ' + ', '.join(grew[:5])}")
    print(verdict.line(what), flush=True)
    return verdict.exit_code()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=50)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--redundancy", type=int, default=2)
    ap.add_argument("--gens", type=int, default=4, help="generations per minute (concurrent)")
    ap.add_argument("--embeds", type=int, default=2, help="embeddings per minute (concurrent)")
    ap.add_argument("--timeout", type=float, default=45.0, help="seconds per request")
    ap.add_argument("--converge-timeout", type=float, default=600.0)
    ap.add_argument("--growth-table", action="store_true",
                    help="print each process's RSS, fds and tasks first -> last")
    args = ap.parse_args()
    if not 4 <= args.peers <= 64:
        ap.error("--peers must be between 4 and 64")
    if args.minutes < 1:
        ap.error("--minutes must be at least 1")
    # bounded: start-up, convergence and the minutes, with margin; then every peer is stopped
    limit = 60 + 6 * args.peers + args.converge_timeout + 240 + 60 * args.minutes + 120
    async def bounded() -> int:
        with trio.move_on_after(limit):
            return await run(args)
        print(f"VERDICT: FAIL (scale): the run did not finish within {limit:.0f}s")
        return 3

    try:
        code = trio.run(bounded)
    except Exception as e:  # noqa: BLE001 - the exit status must not look like a wrong output
        traceback.print_exc()
        print(f"VERDICT: FAIL (scale): the run stopped on {type(e).__name__}: {e}"[:400])
        code = 3
    sys.exit(code)


if __name__ == "__main__":
    main()
