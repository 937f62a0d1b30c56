"""The `p2pinfer` command line.

User errors (bad config, bad arguments, a node that cannot be reached) print one line and exit
with code 2; other failures print one line and exit 1; `--debug` adds the traceback and debug logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pinfer.config import NodeConfig, load_config
from p2pinfer.errors import ConfigError, P2PInferError

EXIT_USER = 2


class UsageError(P2PInferError):
    """A command was used wrongly; printed as one line, exit code 2."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _config(args: argparse.Namespace) -> NodeConfig:
    if getattr(args, "config", None):
        return load_config(args.config)
    return NodeConfig()


# -- node ----------------------------------------------------------------------------------------
def _write_ready(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def _run_node(cfg: NodeConfig, ready_file: str | None) -> None:
    import signal

    import trio

    from p2pinfer.node import Node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Node(cfg) as node:
            print(f"p2pinfer node {node.peer_id} on network {cfg.node.network_id}", flush=True)
            for addr in node.addrs:
                print(f"  listening {addr}", flush=True)
            if ready_file:
                _write_ready(Path(ready_file), {
                    "peer_id": node.peer_id, "addrs": node.addrs, "pid": os.getpid(),
                    "control": str(cfg.control_path) if cfg.control.enabled else "",
                })
            async for _ in signals:
                print("stopping", flush=True)
                break


def cmd_node(args: argparse.Namespace) -> int:
    import trio

    cfg = _config(args)
    trio.run(_run_node, cfg, args.ready_file)
    return 0


# -- keygen --------------------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    from p2pinfer.identity import NodeIdentity

    path = Path(args.out) if args.out else _config(args).key_path
    if path.exists():
        ident = NodeIdentity.load(path)
        print(f"{ident.peer_id}  (existing key {path})")
        return 0
    ident, _ = NodeIdentity.load_or_create(path)
    print(f"{ident.peer_id}  (new key {path}, mode 0600)")
    return 0


# -- peers ---------------------------------------------------------------------------------------
def _format_peer_table(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no peers known yet"
    rows = [("PEER", "ROLES", "MODEL/SPANS", "RTT ms", "LOAD", "TEE", "SEEN s ago")]
    now = time.time()
    for p in peers:
        spans = ",".join(f"{a}-{b}" for a, b in p.get("spans", []) or [])
        model = p.get("model_id") or ""
        rtt = p.get("rtt_ms")
        tee = p.get("tee_level") or ("-" if not p.get("tee_error") else f"rejected: {p['tee_error']}")
        rows.append((
            p["peer_id"][:16] + "..." + p["peer_id"][-6:],
            ",".join(p.get("roles", [])),
            f"{model} {spans}".strip() or "-",
            "-" if rtt is None else f"{rtt:.1f}",
            "-" if p.get("load") is None else f"{p['load']:.2f}",
            tee,
            "-" if not p.get("last_seen") else f"{max(0.0, now - p['last_seen']):.0f}",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_peers(args: argparse.Namespace) -> int:
    import trio

    from p2pinfer.control import query_control

    path = args.socket or str(_config(args).control_path)
    if not Path(path).exists():
        raise UsageError(f"no running node's control socket at {path} (start `p2pinfer node` "
                         "with this config, or pass --socket)")
    reply = trio.run(query_control, path, "peers")
    peers = reply.get("peers", [])
    if args.json:
        print(json.dumps(reply, indent=2, default=str))
    else:
        print(_format_peer_table(peers))
    return 0


# -- testnet -------------------------------------------------------------------------------------
async def _run_testnet(args: argparse.Namespace) -> int:
    import signal

    import trio

    from p2pinfer.testnet import Testnet

    t0 = time.monotonic()
    base = Path(args.base_dir) if args.base_dir else None
    async with Testnet(args.peers, base_dir=base, network_id=args.network_id,
                       progress=_say, debug=args.debug) as net:
        started = time.monotonic() - t0
        if not args.check:
            for p in net.peers:
                print(f"peer {p.index}: {p.addrs[0] if p.addrs else '?'}  control {p.control_path}")
            print("testnet running; Ctrl-C stops every peer", flush=True)
            with (trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
                  trio.CancelScope() as scope):
                async def watch() -> None:
                    while net.alive():
                        await trio.sleep(0.5)
                    _say("every peer has exited")
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()
            _say("stopping peers")
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


def cmd_testnet(args: argparse.Namespace) -> int:
    import trio

    if not 1 <= args.peers <= 64:
        raise UsageError("--peers must be between 1 and 64")
    return trio.run(_run_testnet, args)


# -- infer / embed -------------------------------------------------------------------------------
def _client_config(args: argparse.Namespace) -> NodeConfig:
    """The config of the short-lived client node `infer` and `embed` start."""
    import tempfile

    from p2pinfer.config import with_overrides

    cfg = _config(args)
    overrides: dict[str, dict[str, Any]] = {}
    if not getattr(args, "config", None):
        overrides["node"] = {"data_dir": tempfile.mkdtemp(prefix="p2pinfer-client-"),
                             "roles": ["client"]}
        overrides["control"] = {"enabled": False}
        overrides["net"] = {"dht": False}
    if args.network_id:
        overrides.setdefault("node", {})["network_id"] = args.network_id
    if args.bootstrap:
        overrides.setdefault("net", {})["bootstrap"] = list(args.bootstrap)
    inf: dict[str, Any] = {}
    for key in ("k_head", "k_tail", "redundancy", "mode", "noise_sigma", "noise_clip",
                "step_timeout_s"):
        value = getattr(args, key, None)
        if value is not None:
            inf[key] = value
    if inf:
        overrides["inference"] = inf
    cfg = with_overrides(cfg, **overrides) if overrides else cfg
    if not cfg.net.bootstrap:
        raise UsageError("no peers to ask: pass --bootstrap /ip4/.../p2p/<id> or a --config "
                         "with net.bootstrap")
    return cfg


async def _wait_for_route(node: Any, model: str, timeout: float) -> None:
    from p2pinfer.inference import NoRouteError

    _say(f"waiting for peers serving {model} ...")
    try:
        await node.wait_for_route(model, timeout=timeout)
    except NoRouteError as e:
        raise UsageError(f"{e} after waiting {timeout:.0f}s; are peers serving it reachable?"
                         ) from None


async def _run_infer(args: argparse.Namespace, cfg: NodeConfig) -> int:
    from p2pinfer.node import Node

    async with Node(cfg) as node:
        await _wait_for_route(node, args.model, args.wait)
        t0 = time.perf_counter()
        text_parts: list[str] = []
        stream = node.generate_stream(
            args.prompt, model=args.model, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        )
        async for ev in stream:
            text_parts.append(ev.text)
            if not args.json:
                print(ev.text, end="", flush=True)
        dt = time.perf_counter() - t0
        gen = stream.result
        ids = gen.token_ids
        route = gen.route
        random_weights = gen.random_weights
        summary = {"prompt": args.prompt, "text": "".join(text_parts), "token_ids": ids,
                   "seconds": round(dt, 3), "tokens_per_s": round(len(ids) / dt, 2) if dt else None,
                   "route": route, "replans": gen.replans, "privacy": gen.privacy,
                   "random_weights": random_weights, "verification": gen.verification,
                   "timings": gen.timings}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print()
            hops = " -> ".join(f"[{r['layers'][0]},{r['layers'][1]})@{r['peers'][0][-6:]}"
                               for r in route)
            (_, head_end), (tail_start, layers) = gen.local_layers
            _say(f"{len(ids)} tokens in {dt:.2f}s; route: local[0,{head_end}) -> {hops} "
                 f"-> local[{tail_start},{layers})")
            if random_weights:
                _say(f"note: {args.model} has RANDOM weights: the text is meaningless by design")
        return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import trio

    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    return trio.run(_run_infer, args, _client_config(args))


async def _run_embed(args: argparse.Namespace, cfg: NodeConfig) -> int:
    from p2pinfer.node import Node

    async with Node(cfg) as node:
        await _wait_for_route(node, args.model, args.wait)
        vecs = await node.embed(args.text, model=args.model)
        out: dict[str, Any] = {"model": args.model, "dim": int(vecs.shape[1]),
                               "embeddings": [[round(float(x), 6) for x in v] for v in vecs]}
        if len(args.text) > 1:
            sims = vecs @ vecs.T
            out["cosine"] = [[round(float(x), 4) for x in row] for row in sims]
        print(json.dumps(out))
        return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import trio

    return trio.run(_run_embed, args, _client_config(args))


def cmd_prove_run(args: argparse.Namespace) -> int:
    import trio

    from p2pinfer.prove_run import run

    return trio.run(run, args, _client_config(args), _wait_for_route, _say)


def _add_client_args(p: argparse.ArgumentParser, default_model: str) -> None:
    p.add_argument("--model", default=default_model, help="model directory or built-in name")
    p.add_argument("--config", help="client node config TOML")
    p.add_argument("--bootstrap", action="append", help="a peer to join through (repeatable)")
    p.add_argument("--network-id", help="network to join (default from config)")
    p.add_argument("--k-head", type=int, help="layers run locally before the network")
    p.add_argument("--k-tail", type=int, help="layers run locally after the network")
    p.add_argument("--redundancy", type=int, help="peers per stage")
    p.add_argument("--mode", choices=["general", "critical"])
    p.add_argument("--noise-sigma", type=float, help="Gaussian noise on the outgoing activation")
    p.add_argument("--noise-clip", type=float, help="per-token L2 clip norm for the noise")
    p.add_argument("--step-timeout-s", type=float, help="re-plan when a step takes longer")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for serving peers")


# -- demo ----------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from p2pinfer.demo import run_demo

    return run_demo(peers=args.peers, progress=_say, debug=args.debug)


# -- attest --------------------------------------------------------------------------------------
def cmd_attest_verify(args: argparse.Namespace) -> int:
    from p2pinfer.trust import AttestationError, verify_file

    try:
        claims = verify_file(args.evidence, kind=args.type, certs=args.certs or (),
                             collateral=args.collateral, policy=args.policy, now=args.now)
    except AttestationError as e:
        print(json.dumps({"verified": False, "check": e.check, "message": str(e)}, indent=2))
        print(f"p2pinfer: attestation failed: check {e.check!r}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"verified": True, **claims}, indent=2))
    return 0


def cmd_attest_show(args: argparse.Namespace) -> int:
    from p2pinfer.channel import ChannelKeyPair
    from p2pinfer.identity import NodeIdentity
    from p2pinfer.services.attest import load_trust_policy, make_attester, peer_id_bytes
    from p2pinfer.trust import AttestationError, ChannelAttestation, TeeUnavailable, describe_local
    from p2pinfer.trust import report_data as binding

    cfg = _config(args)
    if cfg.key_path.exists():
        ident, note = NodeIdentity.load(cfg.key_path), f"node key {cfg.key_path}"
    else:
        ident, note = NodeIdentity.generate(), "no node key yet: a throwaway key signs this"
    attester = make_attester(cfg.trust, ident)
    policy = load_trust_policy(cfg.trust)
    out: dict[str, Any] = describe_local(attester, try_attest=False)
    out.update(peer_id=ident.peer_id, identity=note, network_id=cfg.node.network_id,
               policy=policy.to_dict(), channels_required=cfg.trust.channels_required)
    if attester is None:
        print(json.dumps(out, indent=2))
        return 0
    keys = ChannelKeyPair.generate()
    peer = peer_id_bytes(ident.peer_id)
    rd = binding(cfg.node.network_id, peer, keys.public, bytes(32))
    try:
        bundle = attester.attest(rd)
    except TeeUnavailable as e:
        out["evidence"] = {"ok": False, "error": str(e)}
        print(json.dumps(out, indent=2))
        return 1
    out["evidence"] = {"ok": True, "kind": bundle.kind, "bytes": len(bundle.evidence),
                       "certs": len(bundle.certs), "gpus": len(bundle.gpus),
                       "digest": bundle.digest().hex(), "channel_key": keys.public.hex(),
                       "nonce": bytes(32).hex()}
    status = 0
    try:
        claims = ChannelAttestation(attester, policy).verify(bundle.encode(), rd, peer)
        out["claims"] = claims.to_dict()
    except AttestationError as e:
        out["claims"] = {"verified": False, "check": e.check, "message": str(e)}
        status = 1
    print(json.dumps(out, indent=2))
    return status


# -- main ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pinfer", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("node", help="run a peer until Ctrl-C")
    p.add_argument("--config", help="node config TOML (see node_configs/)")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("keygen", help="create (or show) the node's Ed25519 identity key")
    p.add_argument("--config", help="node config TOML; the key goes to its node.key_file")
    p.add_argument("--out", help="key file path (overrides --config)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("peers", help="show the peer table of a running node")
    p.add_argument("--config", help="the running node's config TOML")
    p.add_argument("--socket", help="the node's control socket (default from --config)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_peers)

    p = sub.add_parser("testnet", help="start N peers on loopback joined through a bootstrap")
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--check", action="store_true",
                   help="exit 0 once every peer holds every other's advert; print a JSON summary")
    p.add_argument("--timeout", type=float, default=120.0, help="--check gives up after this")
    p.add_argument("--network-id", default="p2pinfer-localnet")
    p.add_argument("--base-dir", help="keep peers' keys, configs and logs here (default: temp)")
    p.set_defaults(func=cmd_testnet)

    p = sub.add_parser("infer", help="generate text through the network")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON summary")
    _add_client_args(p, "p2pinfer-tiny-llama")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("embed", help="sentence embeddings through the network")
    p.add_argument("--text", action="append", required=True, help="text to embed (repeatable)")
    _add_client_args(p, "all-minilm-l6-v2")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("prove-run", help="critical mode: a provable model (MLP or Llama blocks: "
                       "p2pinfer-zk-llama) through the network, every stage proven in zero "
                       "knowledge")
    from p2pinfer.prove_run import add_arguments

    add_arguments(p)
    _add_client_args(p, "p2pinfer-zk-mlp")
    p.set_defaults(func=cmd_prove_run)

    p = sub.add_parser("attest", help="verify attestation evidence, or show this node's own")
    attest = p.add_subparsers(dest="attest_command", metavar="ACTION", required=True)
    q = attest.add_parser("verify", help="verify evidence offline; print claims as JSON "
                          "(exit 0) or the failed check (exit 1)")
    q.add_argument("evidence", help="evidence bundle, or raw SNP report / TDX quote / "
                   "simulated evidence / NVIDIA SPDM evidence (binary or hex)")
    q.add_argument("--type", choices=["amd-sev-snp", "intel-tdx", "nvidia-cc", "simulated"])
    q.add_argument("--certs", nargs="+", metavar="FILE",
                   help="certificates (PEM/DER): SNP VCEK [ASK ARK]; NVIDIA device chain")
    q.add_argument("--collateral", metavar="FILE", help="TDX collateral (dcap-qvl JSON)")
    q.add_argument("--policy", default="strict",
                   help="strict, relaxed, testnet, or a policy TOML file (default strict)")
    q.add_argument("--now", help="verify as of this time (POSIX seconds or ISO 8601)")
    q.set_defaults(func=cmd_attest_verify)
    q = attest.add_parser("show", help="this node's own evidence and the claims it verifies to")
    q.add_argument("--config", help="node config TOML (its [trust] section)")
    q.set_defaults(func=cmd_attest_show)

    p = sub.add_parser("demo", help="a local multi-peer testnet doing real work, no download")
    p.add_argument("--peers", type=int, default=4)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed one usage line
        return EXIT_USER if e.code not in (0, None) else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, UsageError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"p2pinfer: error: {e}", file=sys.stderr)
        return EXIT_USER
    except P2PInferError as e:
        if args.debug:
            traceback.print_exc()
        print(f"p2pinfer: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the last line of defence for a CLI
        if args.debug:
            traceback.print_exc()
        print(f"p2pinfer: error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        return 1
