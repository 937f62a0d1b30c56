"""`p2pinfer demo`: real inference through a local multi-process testnet, no download.

Four peer processes start on loopback (the first is the bootstrap) and find each other. Two
serve the middle layers of MiniLM-L6 (real weights) and two the middle layers of a small
Llama-style decoder (random weights, seeded: the same on every machine). A client node in this
process then
1. ranks documents against a query by semantic similarity, embedding each text through the
   network while keeping the first and last layers local (split learning), and
2. generates text greedily through the network,
and prints each result beside the same computation done locally in one process, with whether
they match.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import trio

from p2pinfer.cli.options import say, wait_for_route
from p2pinfer.config import config_from_dict
from p2pinfer.testnet import Testnet

EMBED_MODEL = "all-minilm-l6-v2"
GEN_MODEL = "p2pinfer-tiny-llama"
#: (model, layers) per peer: MiniLM has 6 layers, the tiny decoder 8; the client keeps one
#: layer at each end, so peers cover [1, 5) and [1, 7)
SPANS = [(EMBED_MODEL, [1, 3]), (EMBED_MODEL, [3, 5]), (GEN_MODEL, [1, 4]), (GEN_MODEL, [4, 7])]
DOCS = [
    "The invoice for your order #4411 is attached; payment is due in 30 days.",
    "CONGRATULATIONS!!! You have WON a free cruise, click here to claim your prize now",
    "Our team meeting moves to Thursday at 10am in the small conference room.",
    "Limited offer: cheap meds online, no prescription needed, buy now!!!",
    "The quarterly report shows revenue grew 12% while costs stayed flat.",
]
QUERIES = [
    "you won a prize, buy now",
    "when is the next team meeting?",
    "how much money did the company make",
]
PROMPT = "the network of peers"
#: embeddings through the network vs. locally: float32, same kernels, differently batched
EMBED_ATOL = 1e-4


def _peer_config(i: int) -> dict[str, dict[str, object]]:
    model, layers = SPANS[i % len(SPANS)]
    return {"serve": {"model": model, "layers": layers}, "gossip": {"advert_interval_s": 2.0}}


async def _demo(peers: int, progress: Callable[[str], None], debug: bool) -> int:
    from p2pinfer.models import LocalModel, Tokenizer, default_model_path
    from p2pinfer.node import Node

    if peers < 4:
        progress("the demo needs 4 peers (2 per model); using 4")
        peers = 4
    progress("preparing the built-in models (the random decoder is written once, on first use)")
    gen_path = await trio.to_thread.run_sync(default_model_path, GEN_MODEL)
    emb_path = await trio.to_thread.run_sync(default_model_path, EMBED_MODEL)
    progress(f"starting a {peers}-peer testnet on loopback")
    async with Testnet(peers, config_for=_peer_config, progress=progress, debug=debug) as net:
        converge_s = await net.wait_converged(timeout=120)
        progress(f"every peer holds every other's signed advert after {converge_s:.2f}s")
        cfg = config_from_dict({
            "node": {"name": "demo-client", "data_dir": str(net.base_dir / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"k_head": 1, "k_tail": 1},
        })
        async with Node(cfg) as client:
            for model in (EMBED_MODEL, GEN_MODEL):
                await wait_for_route(client, model, 120)
            print(f"\nclient {client.peer_id} joined {net.network_id} with {peers} peers")
            for p in net.peers:
                model, layers = SPANS[p.index % len(SPANS)]
                print(f"  peer {p.index} {p.peer_id[-8:]} serves {model} layers {layers}")

            # 1. semantic search with real MiniLM weights
            print(f"\n[1] semantic search over {len(DOCS)} documents ({EMBED_MODEL}, real weights)")
            texts = DOCS + QUERIES
            t0 = time.perf_counter()
            vecs = await client.embed(texts, model=EMBED_MODEL)
            dist_s = time.perf_counter() - t0
            local = LocalModel.load(emb_path)
            tok = Tokenizer.load(emb_path)
            ref = torch.stack([local.forward(tok.encode(t)).reshape(-1) for t in texts])
            docs, ref_docs = vecs[:len(DOCS)], ref[:len(DOCS)]
            same_ranking = True
            for qi, query in enumerate(QUERIES):
                scores = docs @ vecs[len(DOCS) + qi]
                ref_scores = ref_docs @ ref[len(DOCS) + qi]
                best = int(torch.argmax(scores))
                same_ranking &= torch.equal(torch.argsort(scores, descending=True),
                                            torch.argsort(ref_scores, descending=True))
                print(f"  {query!r}\n     -> {float(scores[best]):.3f}  {DOCS[best]}")
            emb_diff = float((vecs - ref).abs().max())
            emb_ok = same_ranking and emb_diff <= EMBED_ATOL
            print(f"  {len(texts)} texts embedded through the network in {dist_s:.2f}s; rankings "
                  f"{'match' if same_ranking else 'DIFFER from'} the local single-process run; "
                  f"max |diff| {emb_diff:.1e} (tolerance {EMBED_ATOL:.0e})")

            # 2. generation with the random-weights decoder
            print(f"\n[2] generation ({GEN_MODEL}, RANDOM weights: the text is noise by design)")
            gen = await client.generate(PROMPT, model=GEN_MODEL, max_new_tokens=16)
            gtok = Tokenizer.load(gen_path)
            ref_ids = LocalModel.load(gen_path).generate(gtok.encode(PROMPT), 16,
                                                         stop_ids=gtok.eos_ids)
            gen_ok = gen.token_ids == ref_ids
            hops = " -> ".join(f"{r['layers']}@{r['peers'][0][-6:]}" for r in gen.route)
            print(f"  prompt: {PROMPT!r}")
            print(f"  distributed: {gen.text!r}  ({len(gen.token_ids)} tokens, {gen.seconds:.2f}s)")
            print(f"  local:       {gtok.decode(ref_ids)!r}")
            print(f"  route: client[0,1) -> {hops} -> client[7,8); tokens "
                  f"{'identical' if gen_ok else 'DIFFER'}")
        ok = emb_ok and gen_ok
        print("\ndemo ok: distributed results match the single-process results" if ok
              else "\ndemo FAILED: distributed and local results differ")
        return 0 if ok else 1


def run_demo(peers: int = 4, progress: Callable[[str], None] = print, debug: bool = False) -> int:
    return trio.run(_demo, peers, progress, debug)


def run(args: argparse.Namespace) -> int:
    return run_demo(peers=args.peers, progress=say, debug=args.debug)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common],
                       help="a local multi-peer testnet doing real work, no download")
    p.add_argument("--peers", type=int, default=4, help="peer processes to start (at least 4)")
    p.set_defaults(func=run)
