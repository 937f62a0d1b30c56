"""`p2pinfer demo`: a local multi-process testnet that finds itself and moves real tensors.

Starts N peer processes on loopback (one bootstrap), waits until every peer holds every other's
signed advert, then joins as a client node and sends a tensor through each peer, checking that
every byte comes back unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.testnet import Testnet


async def _demo(peers: int, progress: Callable[[str], None], debug: bool) -> int:
    from p2pinfer.node import Node

    progress(f"starting a {peers}-peer testnet on loopback")
    async with Testnet(peers, progress=progress, debug=debug) as net:
        converge_s = await net.wait_converged(timeout=90)
        progress(f"every peer holds every other's advert after {converge_s:.2f}s")
        cfg = config_from_dict({
            "node": {"name": "demo-client", "data_dir": str(net.base_dir / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
        })
        async with Node(cfg) as client:
            await client.wait_for_peers(peers, timeout=60)
            g = torch.Generator().manual_seed(7)
            x = torch.randn(1, 128, 1024, generator=g)  # an activation: 128 tokens x 1024 dims
            print(f"client {client.peer_id} sends a {tuple(x.shape)} float32 tensor "
                  f"({x.numel() * 4 / 2**20:.1f} MiB) through each peer:")
            ok = True
            for p in net.peers:
                t0 = time.perf_counter()
                back = await client.send_tensor(p.peer_id, x)
                dt = time.perf_counter() - t0
                same = torch.equal(back, x)
                ok &= same
                print(f"  peer {p.index} {p.peer_id[-8:]}: round trip {dt * 1000:.1f} ms, "
                      f"{'bit-exact' if same else 'MISMATCH'}")
        print("demo ok" if ok else "demo FAILED: a tensor came back changed")
        return 0 if ok else 1


def run_demo(peers: int = 4, progress: Callable[[str], None] = print, debug: bool = False) -> int:
    return trio.run(_demo, peers, progress, debug)
