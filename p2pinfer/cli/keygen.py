"""`p2pinfer keygen`: create the node's Ed25519 identity key, or show the existing one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pinfer.cli.options import UsageError, node_config
from p2pinfer.identity import NodeIdentity, devnet_identity


def run(args: argparse.Namespace) -> int:
    if not args.out and node_config(args).node.devnet_key:
        print(f"{devnet_identity().peer_id}  (the devnet bootstrap's public key: node.devnet_key "
              "= true)")
        return 0
    path = Path(args.out) if args.out else node_config(args).key_path
    if path.exists():
        ident = NodeIdentity.load(path)
        print(f"{ident.peer_id}  (existing key {path})")
        return 0
    if args.show:
        raise UsageError(f"no key at {path}: run `p2pinfer keygen` without --show to create it")
    ident, _ = NodeIdentity.load_or_create(path)
    print(f"{ident.peer_id}  (new key {path}, mode 0600)")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keygen", parents=[common],
                       help="create (or show) the node's Ed25519 identity key")
    p.add_argument("--config", help="node config TOML; the key goes to its node.key_file")
    p.add_argument("--out", help="key file path (overrides --config)")
    p.add_argument("--show", action="store_true",
                   help="only print the existing key's peer id; never create one")
    p.set_defaults(func=run)
