"""What the HTTP API costs: streamed generation through the OpenAI-compatible API vs.
`Node.generate_stream` directly, on the same testnet, model and prompt, in one run.

A testnet of 2 peer processes serves the middle layers of the built-in `p2pinfer-tiny-llama`
(random weights); the requester node runs in this process with the API on loopback. The API's
client is the official `openai` package in a separate process (so its parsing does not share
this process's interpreter with the server), one thread per concurrent stream. The two paths
alternate request by request, so both see the same machine. Prints time to first token and
per-token latency (median over the repeats) for both paths with the ratio
(target: the API adds <= 5% per token), then aggregate tokens/s at 1, 4 and 16 concurrent
streams for both.

    python tools/bench_api.py [--tokens 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "p2pinfer-tiny-llama"
SPANS = [[1, 4], [4, 7]]
PROMPT = "Peer to peer inference splits a model across many machines"
LEVELS = (1, 4, 16)


# -- the client process -----------------------------------------------------------------------
def _client_main(url: str, tokens: int) -> None:
    """Reads commands on stdin (`one`, or `aggregate N`), answers one JSON line each."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=300)

    def one() -> tuple[float, list[float], int]:
        t0 = time.perf_counter()
        stamps = []
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=tokens,
                                           temperature=0, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                stamps.append(time.perf_counter())
        return stamps[0] - t0, [b - a for a, b in itertools.pairwise(stamps)], len(stamps)

    def aggregate(n: int) -> float:
        counts = [0] * n

        def run(i: int) -> None:
            counts[i] = one()[2]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)

    for line in sys.stdin:
        cmd, *arg = line.split()
        result = one() if cmd == "one" else aggregate(int(arg[0]))
        print(json.dumps(result), flush=True)


class ApiClientProcess:
    """The client process, driven one command at a time."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buf = b""

    async def ask(self, command: str):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        await self.proc.stdin.send_all(command.encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise RuntimeError("the API client process ended")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


# -- the direct path and the table ------------------------------------------------------------
async def _direct_one(node, tokens: int) -> tuple[float, list[float], int]:
    t0 = time.perf_counter()
    stamps = []
    async for _ in node.generate_stream(PROMPT, model=MODEL, max_new_tokens=tokens,
                                        temperature=0.0):
        stamps.append(time.perf_counter())
    return stamps[0] - t0, [b - a for a, b in itertools.pairwise(stamps)], len(stamps)


async def _direct_aggregate(node, tokens: int, n: int) -> float:
    counts = [0] * n

    async def run(i: int) -> None:
        counts[i] = (await _direct_one(node, tokens))[2]

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(run, i)
    return sum(counts) / (time.perf_counter() - t0)


async def _bench(tokens: int, repeats: int) -> None:
    from p2pinfer.api.app import serve_api
    from p2pinfer.config import config_from_dict
    from p2pinfer.node import Node
    from p2pinfer.testnet import Testnet

    print(f"testnet: {len(SPANS)} peer processes serving {MODEL} layers {SPANS}; "
          f"{tokens} new tokens, {repeats} repeats", file=sys.stderr)
    config_for = lambda i: {"serve": {"model": MODEL, "layers": SPANS[i]}}
    async with Testnet(len(SPANS), config_for=config_for) as net:
        await net.wait_converged(timeout=120)
        cfg = config_from_dict({
            "node": {"name": "bench-api", "data_dir": str(net.base_dir / "requester"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": [net.peers[0].addrs[0]],
                    "dht": False},
            "control": {"enabled": False},
            "api": {"listen": "127.0.0.1:0", "models": [MODEL], "max_concurrent": 32},
        })
        async with Node(cfg) as node, trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_api, node, cfg.api))
            await node.wait_for_route(MODEL, timeout=120)
            cmd = [sys.executable, __file__, "--client-url", url, "--tokens", str(tokens)]
            proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE)
            try:
                client = ApiClientProcess(proc)
                for _ in range(3):  # warm caches, connections and both paths
                    await _direct_one(node, tokens)
                    await client.ask("one")
                direct, api_runs = [], []
                for _ in range(repeats):  # interleaved: both paths see the same conditions
                    direct.append(await _direct_one(node, tokens))
                    api_runs.append(await client.ask("one"))
                direct_agg, api_agg = {}, {}
                for n in LEVELS:
                    direct_agg[n] = await _direct_aggregate(node, tokens, n)
                    api_agg[n] = await client.ask(f"aggregate {n}")
                await proc.stdin.aclose()
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()  # the client process this tool started
            nursery.cancel_scope.cancel()

    d_ttft = statistics.median(x[0] for x in direct) * 1000
    d_tok = statistics.median(statistics.mean(x[1]) for x in direct if x[1]) * 1000
    a_ttft = statistics.median(x[0] for x in api_runs) * 1000
    a_tok = statistics.median(statistics.mean(x[1]) for x in api_runs if x[1]) * 1000
    rows = [("time to first token (ms)", d_ttft, a_ttft),
            ("per-token latency (ms)", d_tok, a_tok)]
    rows += [(f"aggregate tokens/s, {n} stream(s)", direct_agg[n], api_agg[n])
             for n in LEVELS]
    print(f"{'':34} {'direct':>10} {'API':>10} {'API/direct':>11}")
    for name, d, a in rows:
        print(f"{name:34} {d:10.2f} {a:10.2f} {a / d:11.3f}")
    print(f"API per-token overhead: {100 * (a_tok / d_tok - 1):+.1f}% (target <= +5%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--repeats", type=int, default=5, help="sequential requests per path")
    ap.add_argument("--client-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_url:
        _client_main(args.client_url, args.tokens)
        return
    trio.run(_bench, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
