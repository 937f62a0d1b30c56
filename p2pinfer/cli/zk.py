"""`p2pinfer zk import`: turn a Llama-family checkpoint (Hugging Face directory or GGUF file)
into the provable layout critical mode serves, with the owner's manifest
(p2pinfer.zk.importer)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from p2pinfer.cli.options import UsageError


def _run_import(args: argparse.Namespace) -> int:
    from p2pinfer.zk.checkpoint import MANIFEST_FILE
    from p2pinfer.zk.importer import import_checkpoint, read_blinding_key

    key = read_blinding_key(args.owner_key) if args.owner_key else None
    shifts = {}
    for item in args.mlp_shift or ():
        block, _, bits = item.partition("=")
        if not (block.isdigit() and bits.isdigit()):
            raise UsageError(f"--mlp-shift {item!r}: expected BLOCK=BITS, e.g. 11=2")
        shifts[int(block)] = int(bits)
    if args.blocks is not None and args.blocks < 1:
        raise UsageError("--blocks must be 1 or more")
    t0 = time.perf_counter()
    res = import_checkpoint(args.source, args.out, blocks=args.blocks, blinding_key=key,
                            model_id=args.name, frac_bits=args.frac_bits,
                            mlp_shifts=shifts,
                            **({} if args.table_range is None
                               else {"lookup_range_bits": args.table_range}))
    pad = res.padding
    print(f"{res.directory}: {res.blocks} blocks ({2 * res.blocks} provable layers), width "
          f"{pad.hidden} -> {pad.width}, {pad.heads}/{pad.kv_heads} heads -> "
          f"{pad.padded_heads}/{pad.padded_kv_heads}; manifest {MANIFEST_FILE} "
          f"({len(res.manifest)} bytes) in {time.perf_counter() - t0:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.zk_command == "import":
        return _run_import(args)
    raise UsageError("usage: p2pinfer zk import MODEL_DIR_OR_GGUF --out DIR")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from p2pinfer.models.mlp import TABLE_MAX_FRAC_BITS, TABLE_RANGE_BITS_MAX

    p = sub.add_parser("zk", parents=[common], help="zero-knowledge tools for critical mode")
    zsub = p.add_subparsers(dest="zk_command", metavar="ZK_COMMAND")
    imp = zsub.add_parser("import", parents=[common],
                          help="import a Llama-family checkpoint into the provable layout")
    imp.add_argument("source", help="Hugging Face model directory or GGUF file")
    imp.add_argument("--out", required=True, help="directory to write the provable model to")
    imp.add_argument("--blocks", type=int, help="import only the first N decoder blocks")
    imp.add_argument("--name", help="model id in the manifest (default: <source>-zk)")
    imp.add_argument("--owner-key",
                     help="the owner's 32-byte blinding key file: the same checkpoint and key "
                          "give the same manifest bytes (default: a fresh key, kept in OUT/zk)")
    imp.add_argument("--frac-bits", type=int, default=8,
                     help=f"fixed-point fractional bits, 1..{TABLE_MAX_FRAC_BITS} (default "
                          "%(default)s: real values up to 32768 in the 32-bit pre-activations)")
    imp.add_argument("--table-range", type=int, metavar="R",
                     help="SiLU tables cover real inputs in [-2**(R-1), 2**(R-1)), R in 6.."
                          f"{TABLE_RANGE_BITS_MAX} (default 8: [-128, 128))")
    imp.add_argument("--mlp-shift", action="append", metavar="BLOCK=BITS",
                     help="divide a block's MLP up projection and multiply its down projection "
                          "by 2**BITS (the same function) so its gated product fits fixed point "
                          "(SmolLM2-135M at --frac-bits 10: 11=2 and 28=2); repeatable")
    p.set_defaults(func=run, zk_command=None)
