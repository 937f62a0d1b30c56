"""The `p2pinfer` command line: one module per command, each with `add_parser(sub, common)`
and `run(args)`; `options` holds what they share.

User errors (bad config, bad arguments, a node that cannot be reached) print one line and exit
with code 2; other failures print one line and exit 1; `--debug`, accepted anywhere on the
command line, adds the traceback and debug logs. Commands that run a node import libp2p and
torch when they run, so `p2pinfer --help` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from p2pinfer.cli import (
    api,
    attest,
    chat,
    demo,
    embed,
    infer,
    keygen,
    node,
    peers,
    prove_run,
    receipt,
    status,
    testnet,
    zk,
)
from p2pinfer.cli.options import EXIT_USER, UsageError
from p2pinfer.errors import ConfigError, P2PInferError
from p2pinfer.models.errors import CacheError, ModelError, SpanInputError

#: loggers of libraries whose messages only --debug shows
LIBRARY_LOGGERS = ("multiaddr", "zeroconf", "async_service")

COMMANDS = (node, keygen, peers, status, testnet, infer, chat, embed, prove_run, attest, demo,
            api, receipt, zk)


def build_parser() -> argparse.ArgumentParser:
    # --debug before or after the command: the subcommands' copy must not reset the value
    # given before the command, hence SUPPRESS as their default
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    parser = argparse.ArgumentParser(
        prog="p2pinfer", description="peer-to-peer inference: run a peer, join a network, ask it")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, common)
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
    if not args.debug:
        # ordinary events of an open network, logged by libraries as warnings (libp2p's own
        # logger is routed by p2pinfer.net.host when a node starts): only with --debug
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except BaseException as e:  # noqa: BLE001 - the last line of defence for a CLI
        return _report(_single_cause(e), args.debug)


def _single_cause(e: BaseException) -> BaseException:
    """The one error inside nested exception groups of one member each (a trio nursery that
    failed for one reason), else `e` itself."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def _report(e: BaseException, debug: bool) -> int:
    """Print `e` as one line (and the trace with --debug); the exit code it deserves."""
    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else 1
    if debug:
        traceback.print_exception(e)
    bad_model = isinstance(e, ModelError) and not isinstance(e, (SpanInputError, CacheError))
    if isinstance(e, (ConfigError, UsageError)) or bad_model:
        print(f"p2pinfer: error: {e}", file=sys.stderr)
        return EXIT_USER
    if isinstance(e, P2PInferError):
        print(f"p2pinfer: error: {e}", file=sys.stderr)
        return 1
    print(f"p2pinfer: error: {type(e).__name__}: {e} (rerun with --debug for details)",
          file=sys.stderr)
    return 1
