"""Receipts (protocols/receipt.md): the spec's vector, and every check failing on its own."""

import copy
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pinfer.api.receipt import (
    ReceiptFormatError,
    ReceiptModelMismatch,
    ReceiptSignatureError,
    RequestDigestMismatch,
    ResponseDigestMismatch,
    canonical_json,
    receipt_of,
    response_outputs,
    sha256_hex,
    sign_receipt,
    signing_bytes,
    verify_receipt,
)
from p2pinfer.identity import NodeIdentity

from ..spec_vectors import PROTOCOLS, vectors

SPEC = (PROTOCOLS / "receipt.md").read_text()


def _json_blocks() -> list:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", SPEC, re.DOTALL)]


def test_the_spec_vector_verifies_and_its_signed_bytes_match():
    request, response, receipt = _json_blocks()
    verify_receipt(receipt, request=request, response=response)
    assert signing_bytes(receipt) == vectors("receipt.md")["receipt-signing-bytes"]
    ident = NodeIdentity.from_seed(bytes(range(32)))
    assert receipt["requester"] == ident.peer_id
    # Ed25519 is deterministic: signing the same body again gives the same receipt
    assert sign_receipt(ident, receipt) == receipt


def _signed():
    return _json_blocks()


def test_a_changed_route_or_signature_fails_the_signature_check():
    request, response, receipt = _signed()
    moved = copy.deepcopy(receipt)
    moved["route"][0]["peers"][0] = "12D3KooWPeerC"
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(moved, request=request, response=response)
    for i in range(0, 128, 17):
        bad = copy.deepcopy(receipt)
        sig = bytearray(bytes.fromhex(bad["signature"]))
        sig[i // 2] ^= 0x01
        bad["signature"] = sig.hex()
        with pytest.raises(ReceiptSignatureError):
            verify_receipt(bad)


@given(st.integers(min_value=0, max_value=7), st.integers(min_value=1, max_value=127))
def test_any_changed_byte_of_the_text_fails_the_response_digest(pos, delta):
    request, response, receipt = _signed()
    text = bytearray(response["choices"][0]["message"]["content"].encode())
    text[pos] ^= delta  # stays ASCII, always differs
    changed = copy.deepcopy(response)
    changed["choices"][0]["message"]["content"] = text.decode()
    with pytest.raises(ResponseDigestMismatch):
        verify_receipt(receipt, request=request, response=changed)


def test_a_changed_request_or_model_fails_its_own_check():
    request, response, receipt = _signed()
    with pytest.raises(RequestDigestMismatch):
        verify_receipt(receipt, request={**request, "max_tokens": 5}, response=response)
    with pytest.raises(ReceiptModelMismatch):
        verify_receipt(receipt, request=request, response={**response, "model": "other"})


@pytest.mark.parametrize("change", [
    lambda r: r.pop("route"),
    lambda r: r.update(v=2),
    lambda r: r.update(kind="image"),
    lambda r: r.update(request_sha256="AB" * 32),
    lambda r: r.update(timings={"total_ms": "fast"}),
    lambda r: r.update(issued_at_ms=True),
])
def test_malformed_receipts_fail_the_format_check(change):
    _, _, receipt = _signed()
    change(receipt)
    with pytest.raises(ReceiptFormatError):
        verify_receipt(receipt)
    with pytest.raises(ReceiptFormatError):
        verify_receipt(["not", "a", "receipt"])


def test_a_stream_has_the_same_outputs_as_the_whole_response():
    _, response, receipt = _signed()
    events = [
        {"object": "chat.completion.chunk", "model": response["model"],
         "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        {"object": "chat.completion.chunk", "model": response["model"],
         "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        {"object": "chat.completion.chunk", "model": response["model"],
         "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": None}]},
        {"object": "chat.completion.chunk", "model": response["model"],
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"object": "chat.completion.chunk", "model": response["model"], "choices": [],
         "p2pinfer": {"receipt": receipt}},
    ]
    assert response_outputs(events) == response_outputs(response)
    assert receipt_of(events) == receipt
    verify_receipt(receipt_of(events), response=events)


def test_base64_and_float_embeddings_have_one_normal_form():
    import base64
    import struct

    vec = [0.5, -1.25, 3.0]
    as_floats = {"object": "list", "model": "m", "data": [{"index": 0, "embedding": vec}]}
    as_b64 = {"object": "list", "model": "m", "data": [
        {"index": 0, "embedding": base64.b64encode(struct.pack("<3f", *vec)).decode()}]}
    assert sha256_hex(response_outputs(as_floats)) == sha256_hex(response_outputs(as_b64))
    with pytest.raises(ReceiptFormatError):
        response_outputs({"object": "list", "model": "m", "data": [{"embedding": "!!"}]})


def test_canonical_json_sorts_keys_and_refuses_nan():
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ReceiptFormatError):
        canonical_json({"x": float("nan")})
