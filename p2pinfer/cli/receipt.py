"""`p2pinfer receipt verify`: check an API answer's signed receipt offline
(protocols/receipt.md). Exit 0 when every check passes; 1 with one line naming the failed
check; 2 when a file cannot be read or holds no receipt."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from p2pinfer.api.receipt import MAX_RECEIPT_BYTES, ReceiptError, receipt_of, verify_receipt
from p2pinfer.cli.options import UsageError


def load_document(path: str, what: str) -> Any:
    """A JSON file, or a saved event stream (`data: {...}` lines) as the list of its events."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_RECEIPT_BYTES:
            raise UsageError(f"{path}: {what} file is over {MAX_RECEIPT_BYTES} bytes")
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the {what} file ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        events = []
        for line in text.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data == "[DONE]":
                    continue
                try:
                    events.append(json.loads(data))
                except json.JSONDecodeError:
                    break
            elif line.strip():
                events = []
                break
        if events:
            return events
        raise UsageError(f"{path}: the {what} file is neither JSON nor an event stream "
                         f"({e})") from None


def run(args: argparse.Namespace) -> int:
    receipt = receipt_of(load_document(args.receipt, "receipt"))
    if receipt is None:
        raise UsageError(f"{args.receipt}: no receipt in this file (a receipt, or a response "
                         "carrying one under p2pinfer.receipt)")
    request = load_document(args.request, "request") if args.request else None
    response = load_document(args.response, "response") if args.response else None
    try:
        verify_receipt(receipt, request=request, response=response)
    except ReceiptError as e:
        print(f"receipt check failed: {e.check}: {e}")
        return 1
    checked = ["format", "signature"] + (["request digest"] if request is not None else []) + (
        ["response digest", "model"] if response is not None else [])
    route = " -> ".join(f"[{h['layers'][0]},{h['layers'][1]})@{len(h['peers'])} peer(s)"
                        for h in receipt["route"]) or "local"
    print(f"receipt OK ({', '.join(checked)}): {receipt['kind']} by {receipt['requester']} "
          f"on {receipt['network_id']}, mode {receipt['mode']}, route {route}")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("receipt", parents=[common], help="check an API answer's receipt")
    actions = p.add_subparsers(dest="receipt_command", metavar="ACTION", required=True)
    v = actions.add_parser("verify", parents=[common],
                           help="check a receipt's signature and digests offline")
    v.add_argument("receipt", metavar="RECEIPT",
                   help="the receipt, or the saved response carrying it (JSON or event stream)")
    v.add_argument("--request", help="the request body as sent (JSON)")
    v.add_argument("--response", help="the response as received (JSON body or saved stream)")
    v.set_defaults(func=run)
