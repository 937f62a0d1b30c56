"""Tensor transfer over the node's stream protocol vs. a bare libp2p yamux stream vs. plain TCP.

All three on loopback in one process, same run, round trip (send N bytes, get N bytes back):

- ours:  `Node.send_tensor` over `/p2pinfer/tensor/1.0.0` (framing + msgpack + tensor codec)
- yamux: raw bytes on a libp2p TCP/Noise/yamux stream with our own read loop, no codec
- tcp:   raw bytes on a plain trio TCP socket (no encryption, no muxer)

Prints MB/s (both directions counted, 1 MB = 1e6 bytes) and the ratios. Usage:
    python tools/bench_transport.py [--sizes 1,8,64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.config import NodeConfig, with_overrides
from p2pinfer.node import Node

RAW_PROTOCOL = "/p2pinfer-bench/raw/1.0.0"
CHUNK = 1 << 20


async def _read_exact(read, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        chunk = await read(min(CHUNK, n - got))
        if not chunk:
            raise EOFError(f"stream ended after {got} of {n} bytes")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return buf


async def _write_all(write, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(data), 4 * CHUNK):
        await write(bytes(view[start : start + 4 * CHUNK]))


async def _raw_echo(stream) -> None:
    try:
        while True:
            header = await stream.read(8)
            if not header:
                return
            n = int.from_bytes(header, "big")
            data = await _read_exact(stream.read, n)
            await _write_all(stream.write, bytes(data))
    except Exception as e:  # noqa: BLE001 - the benchmark's peer hung up: the echo loop ends
        logging.getLogger(__name__).debug("echo stream ended: %s", e)
    finally:
        await stream.close()


async def _tcp_echo(stream: trio.SocketStream) -> None:
    async with stream:
        while True:
            header = await _read_exact_tcp(stream, 8)
            if header is None:
                return
            n = int.from_bytes(header, "big")
            data = await _read_exact_tcp(stream, n)
            await stream.send_all(bytes(data))


async def _read_exact_tcp(stream: trio.SocketStream, n: int) -> bytearray | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(CHUNK, n - len(buf)))
        if not chunk:
            return None
        buf += chunk
    return buf


async def bench(sizes: list[int], repeat: int) -> list[tuple[int, float, float, float]]:
    tmp = tempfile.mkdtemp()

    def cfg(i: int, boot: list[str]) -> NodeConfig:
        return with_overrides(
            NodeConfig(),
            node={"data_dir": f"{tmp}/n{i}"},
            net={"bootstrap": boot, "dht": False},
            control={"enabled": False},
        )

    rows = []
    async with Node(cfg(0, [])) as a, Node(cfg(1, a.addrs)) as b, trio.open_nursery() as nursery:
        await b.wait_for_peers(1, 30)
        a.host.set_stream_handler(RAW_PROTOCOL, _raw_echo)
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, _tcp_echo, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        raw = await b.host.new_stream(a.peer_id, RAW_PROTOCOL, timeout_s=10)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)

        async def ours(t: torch.Tensor) -> None:
            back = await b.send_tensor(a.peer_id, t, timeout=600)
            assert back.shape == t.shape

        async def yamux(data: bytes) -> None:
            await raw.write(len(data).to_bytes(8, "big"))
            await _write_all(raw.write, data)
            await _read_exact(raw.read, len(data))

        async def plain(data: bytes) -> None:
            async with trio.open_nursery() as n:
                n.start_soon(tcp.send_all, len(data).to_bytes(8, "big") + data)
                await _read_exact_tcp(tcp, len(data))

        for mib in sizes:
            nbytes = mib << 20
            tensor = torch.randn(nbytes // 4)
            data = tensor.numpy().tobytes()
            times: dict[str, list[float]] = {"ours": [], "yamux": [], "tcp": []}
            for _ in range(repeat):  # interleaved so load changes hit all three alike
                for name, fn, arg in (
                    ("ours", ours, tensor),
                    ("yamux", yamux, data),
                    ("tcp", plain, data),
                ):
                    t0 = time.perf_counter()
                    await fn(arg)
                    times[name].append(time.perf_counter() - t0)
            mbs = {k: 2 * nbytes / statistics.median(v) / 1e6 for k, v in times.items()}
            rows.append((mib, mbs["ours"], mbs["yamux"], mbs["tcp"]))
        await raw.close()
        await tcp.aclose()
        nursery.cancel_scope.cancel()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,64", help="MiB, comma separated")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = trio.run(bench, sizes, args.repeat)
    print(
        f"{'size':>7} | {'ours MB/s':>10} | {'yamux MB/s':>10} | {'tcp MB/s':>9} | "
        f"{'ours/yamux':>10} | {'yamux/tcp':>9}"
    )
    print("-" * 72)
    for mib, ours, yamux, tcp in rows:
        print(
            f"{mib:>4} MiB | {ours:>10.1f} | {yamux:>10.1f} | {tcp:>9.1f} | "
            f"{ours / yamux:>10.2f} | {yamux / tcp:>9.2f}"
        )
    print(
        f"(median of {args.repeat}, round trip, both directions counted; "
        "target: ours/yamux >= 0.90)"
    )


if __name__ == "__main__":
    main()
