"""Verification receipts: what was asked, what came back, who computed it, how it was checked.

A receipt is a JSON object signed with the requester node's Ed25519 identity key. It binds the
SHA-256 digest of the request body and of the response's outputs to the route (peers and layer
spans), the task mode, the verification report (votes, dissenters, audits, proofs, TEE claims)
and timings. Anyone holding the request, the response and the receipt can check it offline.
Byte layout, the outputs' normal form and a test vector: protocols/receipt.md.

Nothing here touches the network or the node: `sign_receipt` takes an identity, `verify_receipt`
takes only JSON values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

from p2pinfer.errors import P2PInferError
from p2pinfer.identity import IdentityError, NodeIdentity, verify_peer_signature

RECEIPT_VERSION = 1
#: domain separation: a receipt signature can never be read as another signed message
SIGNING_TAG = b"p2pinfer/receipt/1\x00"
#: a receipt file or field larger than this is refused before it is parsed
MAX_RECEIPT_BYTES = 4 * 1024 * 1024
KINDS = ("chat", "completion", "embedding")
_REQUIRED = {
    "v": int, "kind": str, "network_id": str, "requester": str, "issued_at_ms": int,
    "request_id": str, "model": str, "request_sha256": str, "response_sha256": str,
    "mode": str, "route": list, "timings": dict, "signature": str,
}


class ReceiptError(P2PInferError):
    """A receipt does not check out; `check` names the check that failed."""

    check = "receipt"


class ReceiptFormatError(ReceiptError):
    check = "format"


class ReceiptSignatureError(ReceiptError):
    check = "signature"


class RequestDigestMismatch(ReceiptError):
    check = "request digest"


class ResponseDigestMismatch(ReceiptError):
    check = "response digest"


class ReceiptModelMismatch(ReceiptError):
    check = "model"


# -- canonical encoding --------------------------------------------------------------------------
def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys, no spaces, no NaN/Infinity (protocols/receipt.md)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ReceiptFormatError(f"value is not canonical JSON: {e}") from None


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _float32_list(b64: str) -> list[float]:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, TypeError):
        raise ReceiptFormatError("an embedding is neither a list of numbers nor base64") from None
    if len(raw) % 4:
        raise ReceiptFormatError("a base64 embedding is not a whole number of float32 values")
    return [float(x) for x in struct.unpack(f"<{len(raw) // 4}f", raw)]


def response_outputs(response: Any) -> dict[str, Any]:
    """The normal form of a response's outputs that the receipt's `response_sha256` covers.

    Accepts a non-streamed body (`chat.completion`, `text_completion`, an embeddings `list`)
    or a streamed one saved as the JSON array of its events' data objects.
    """
    if isinstance(response, list):
        return _stream_outputs(response)
    if not isinstance(response, dict):
        raise ReceiptFormatError("a response is a JSON object or an array of stream events")
    obj = response.get("object")
    model = response.get("model")
    if obj == "list":
        data = response.get("data")
        if not isinstance(data, list):
            raise ReceiptFormatError("an embeddings response needs a 'data' list")
        rows = []
        for item in sorted(data, key=_index):
            emb = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(emb, str):
                emb = _float32_list(emb)
            if not isinstance(emb, list) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in emb):
                raise ReceiptFormatError("an embedding is not a list of numbers")
            rows.append([float(x) for x in emb])
        return {"kind": "embedding", "model": model, "outputs": rows, "finish_reasons": []}
    if obj not in ("chat.completion", "text_completion"):
        raise ReceiptFormatError(f"unknown response object {obj!r}")
    choices = response.get("choices")
    if not isinstance(choices, list):
        raise ReceiptFormatError("a completion response needs a 'choices' list")
    texts, reasons = [], []
    for c in sorted(choices, key=_index):
        if obj == "chat.completion":
            msg = c.get("message") if isinstance(c, dict) else None
            text = msg.get("content") if isinstance(msg, dict) else None
        else:
            text = c.get("text") if isinstance(c, dict) else None
        if not isinstance(text, str):
            raise ReceiptFormatError("a choice has no text")
        texts.append(text)
        reasons.append(c.get("finish_reason"))
    kind = "chat" if obj == "chat.completion" else "completion"
    return {"kind": kind, "model": model, "outputs": texts, "finish_reasons": reasons}


def _index(item: Any) -> int:
    i = item.get("index", 0) if isinstance(item, dict) else 0
    if not isinstance(i, int) or isinstance(i, bool) or i < 0:
        raise ReceiptFormatError("a choice's index is not a non-negative integer")
    return i


def _stream_outputs(events: list[Any]) -> dict[str, Any]:
    texts: dict[int, str] = {}
    reasons: dict[int, Any] = {}
    kind = model = None
    for ev in events:
        if not isinstance(ev, dict) or not isinstance(ev.get("choices", []), list):
            raise ReceiptFormatError("a stream event is not a completion chunk")
        obj = ev.get("object")
        this = {"chat.completion.chunk": "chat", "text_completion": "completion"}.get(obj)
        if this is None:
            raise ReceiptFormatError(f"unknown stream event object {obj!r}")
        if kind not in (None, this):
            raise ReceiptFormatError("a stream mixes chat and completion events")
        kind, model = this, ev.get("model", model)
        for c in ev.get("choices", []):
            i = _index(c)
            if kind == "chat":
                delta = c.get("delta") or {}
                piece = delta.get("content") if isinstance(delta, dict) else None
            else:
                piece = c.get("text")
            if piece is not None and not isinstance(piece, str):
                raise ReceiptFormatError("a stream event's text is not a string")
            texts[i] = texts.get(i, "") + (piece or "")
            if c.get("finish_reason") is not None:
                reasons[i] = c["finish_reason"]
    if kind is None:
        raise ReceiptFormatError("the stream has no events")
    order = sorted(texts)
    return {"kind": kind, "model": model, "outputs": [texts[i] for i in order],
            "finish_reasons": [reasons.get(i) for i in order]}


# -- signing and checking ------------------------------------------------------------------------
def signing_bytes(receipt: dict[str, Any]) -> bytes:
    """What the signature covers: the tag, then the canonical JSON of every field but
    `signature`."""
    return SIGNING_TAG + canonical_json({k: v for k, v in receipt.items() if k != "signature"})


def sign_receipt(identity: NodeIdentity, body: dict[str, Any]) -> dict[str, Any]:
    """`body` plus `v`, `requester` and the Ed25519 `signature` (hex) of the requester."""
    receipt = {k: v for k, v in body.items() if k != "signature"}
    receipt["v"] = RECEIPT_VERSION
    receipt["requester"] = identity.peer_id
    receipt["signature"] = identity.sign(signing_bytes(receipt)).hex()
    return receipt


def _check_format(receipt: Any) -> None:
    if not isinstance(receipt, dict):
        raise ReceiptFormatError("a receipt is a JSON object")
    for key, tp in _REQUIRED.items():
        value = receipt.get(key)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ReceiptFormatError(f"field {key!r} is missing or not a {tp.__name__}")
    if receipt["v"] != RECEIPT_VERSION:
        raise ReceiptFormatError(f"unsupported receipt version {receipt['v']}")
    if receipt["kind"] not in KINDS:
        raise ReceiptFormatError(f"unknown receipt kind {receipt['kind']!r}")
    for key in ("request_sha256", "response_sha256"):
        value = receipt[key]
        if len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
            raise ReceiptFormatError(f"field {key!r} is not 64 lowercase hex digits")
    for hop in receipt["route"]:
        if not (isinstance(hop, dict) and isinstance(hop.get("layers"), list)
                and isinstance(hop.get("peers"), list)):
            raise ReceiptFormatError("a route hop needs 'layers' and 'peers' lists")
    for value in receipt["timings"].values():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
                value):
            raise ReceiptFormatError("timings are finite numbers")


def verify_receipt(receipt: Any, *, request: Any = None, response: Any = None) -> None:
    """Check a receipt's form and signature and, when given, that `request` (the request body
    as sent) and `response` (the body received, or a stream's events) are the ones it covers.
    Raises the `ReceiptError` subclass that names the failed check."""
    _check_format(receipt)
    try:
        signature = bytes.fromhex(receipt["signature"])
    except ValueError:
        raise ReceiptSignatureError("the signature is not hex") from None
    if len(signature) != 64:
        raise ReceiptSignatureError("an Ed25519 signature has 64 bytes")
    try:
        verify_peer_signature(receipt["requester"], signing_bytes(receipt), signature)
    except IdentityError as e:
        raise ReceiptSignatureError(f"the requester's signature does not verify ({e})") from None
    if request is not None and sha256_hex(request) != receipt["request_sha256"]:
        raise RequestDigestMismatch("the request's SHA-256 differs from the receipt's")
    if response is not None:
        outputs = response_outputs(response)
        if outputs["kind"] != receipt["kind"]:
            raise ResponseDigestMismatch(
                f"the response is a {outputs['kind']} response, the receipt covers a "
                f"{receipt['kind']} response")
        if outputs["model"] != receipt["model"]:
            raise ReceiptModelMismatch(
                f"the response names model {outputs['model']!r}, the receipt {receipt['model']!r}")
        if sha256_hex(outputs) != receipt["response_sha256"]:
            raise ResponseDigestMismatch("the response's outputs differ from the ones the "
                                         "receipt covers")


def receipt_of(document: Any) -> Any:
    """The receipt in a saved document: a bare receipt, a response body carrying one under
    `p2pinfer.receipt`, or a stream's events (the last event that carries one)."""
    if isinstance(document, list):
        for ev in reversed(document):
            found = receipt_of(ev) if isinstance(ev, dict) else None
            if found is not None:
                return found
        return None
    if isinstance(document, dict):
        extra = document.get("p2pinfer")
        if isinstance(extra, dict) and "receipt" in extra:
            return extra["receipt"]
        if "signature" in document and "request_sha256" in document:
            return document
    return None
