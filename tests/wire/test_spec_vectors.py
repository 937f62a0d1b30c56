import torch

from p2pinfer.wire import decode_message, tensor_from_wire
from tests.spec_vectors import vectors


def test_wire_spec_vectors_decode_to_what_the_spec_says():
    v = vectors("wire.md")
    msg = decode_message(v["envelope-tensor"])
    assert msg.t == "tensor" and msg.get("task", bytes) == b"\0" * 4
    t = tensor_from_wire(msg.get("x", dict), dtype="float32", shape=(2, 2))
    assert torch.equal(t, torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    assert int.from_bytes(v["frame-header"], "big") == len(v["envelope-tensor"])
    err = decode_message(v["error-reply"])
    assert err.t == "error" and err.get("code", str) == "too-large"
