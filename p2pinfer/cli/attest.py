"""`p2pinfer attest verify|show`: check TEE evidence offline, or show this node's own."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from p2pinfer.cli.options import node_config


def run_verify(args: argparse.Namespace) -> int:
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


def run_show(args: argparse.Namespace) -> int:
    from p2pinfer.channel import ChannelKeyPair
    from p2pinfer.identity import NodeIdentity
    from p2pinfer.services.attest import load_trust_policy, make_attester, peer_id_bytes
    from p2pinfer.trust import AttestationError, ChannelAttestation, TeeUnavailable, describe_local
    from p2pinfer.trust import report_data as binding

    cfg = node_config(args)
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


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("attest", parents=[common],
                       help="verify attestation evidence, or show this node's own")
    attest = p.add_subparsers(dest="attest_command", metavar="ACTION", required=True)
    q = attest.add_parser("verify", parents=[common],
                          help="verify evidence offline; print claims as JSON (exit 0) or the "
                               "failed check (exit 1)")
    q.add_argument("evidence", help="evidence bundle, or raw SNP report / TDX quote / "
                   "simulated evidence / NVIDIA SPDM evidence (binary or hex)")
    q.add_argument("--type", choices=["amd-sev-snp", "intel-tdx", "nvidia-cc", "simulated"],
                   help="what the evidence is (default: recognised from its bytes)")
    q.add_argument("--certs", nargs="+", metavar="FILE",
                   help="certificates (PEM/DER): SNP VCEK [ASK ARK]; NVIDIA device chain")
    q.add_argument("--collateral", metavar="FILE", help="TDX collateral (dcap-qvl JSON)")
    q.add_argument("--policy", default="strict",
                   help="strict, relaxed, testnet, or a policy TOML file (default strict)")
    q.add_argument("--now", help="verify as of this time (POSIX seconds or ISO 8601)")
    q.set_defaults(func=run_verify)
    q = attest.add_parser("show", parents=[common],
                          help="this node's own evidence and the claims it verifies to")
    q.add_argument("--config", help="node config TOML (its [trust] section)")
    q.set_defaults(func=run_show)
