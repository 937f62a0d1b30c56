import time

import msgpack
import pytest

from p2pinfer.errors import WireError
from p2pinfer.identity import NodeIdentity
from p2pinfer.inference.task import StagePlan, Task, TaskError

NET = "testnet-a"


def make_task(ident, **kw):
    route = kw.pop("route", [StagePlan(1, 4, ("peerA",)), StagePlan(4, 7, ("peerB", "peerC"))])
    return Task.create(ident, network_id=NET, model_id="m", requester_addrs=["/ip4/127.0.0.1/tcp/1"],
                       route=route, **kw)


def roundtrip(task):
    return Task.from_wire(msgpack.unpackb(msgpack.packb(task.to_wire()), raw=False))


def test_signed_task_round_trips_and_verifies():
    ident = NodeIdentity.generate()
    task = roundtrip(make_task(ident))
    task.verify(network_id=NET)
    assert task.requester == ident.peer_id
    assert task.stage_of("peerC", 1).start == 4


def test_stage_not_named_in_route_is_refused():
    task = make_task(NodeIdentity.generate())
    with pytest.raises(TaskError, match="does not name"):
        task.stage_of("peerA", 1)
    with pytest.raises(TaskError, match="no stage"):
        task.stage_of("peerA", 5)


@pytest.mark.parametrize("field, value", [
    ("route", [[1, 4, ["peerX"]], [4, 7, ["peerB", "peerC"]]]),
    ("mode", "critical"),
    ("deadline", time.time() + 10_000),
    ("model_id", "other"),
    ("task_id", b"\x01" * 16),
])
def test_any_changed_field_breaks_the_signature(field, value):
    wire = make_task(NodeIdentity.generate()).to_wire()
    wire[field] = value
    with pytest.raises(TaskError, match="signature"):
        Task.from_wire(wire).verify(network_id=NET)


def test_task_for_another_network_is_refused():
    with pytest.raises(TaskError, match="network"):
        roundtrip(make_task(NodeIdentity.generate())).verify(network_id="mainnet")


def test_expired_task_is_refused():
    task = make_task(NodeIdentity.generate(), ttl_s=1)
    with pytest.raises(TaskError, match="deadline"):
        task.verify(network_id=NET, now=time.time() + 5)


def test_task_signed_by_someone_else_is_refused():
    task = make_task(NodeIdentity.generate())
    forged = Task(**{**task.__dict__, "requester": NodeIdentity.generate().peer_id})
    with pytest.raises(TaskError):
        forged.verify(network_id=NET)


@pytest.mark.parametrize("mutate", [
    lambda w: w.update(route=[]),
    lambda w: w.update(route=[[4, 1, ["a"]]]),
    lambda w: w.update(route=[[1, 4, ["a", "a"]]]),
    lambda w: w.update(route=[[1, 4, ["a"]], [5, 7, ["b"]]]),
    lambda w: w.update(mode="turbo"),
    lambda w: w.update(task_id=b"short"),
    lambda w: w.pop("signature"),
    lambda w: w.update(max_length=0),
    lambda w: w.update(route="x"),
])
def test_malformed_tasks_are_wire_errors(mutate):
    wire = make_task(NodeIdentity.generate()).to_wire()
    mutate(wire)
    with pytest.raises(WireError):
        Task.from_wire(wire)


def test_stage_spec_vector_decodes_and_verifies():
    from p2pinfer.wire import decode_message
    from tests.spec_vectors import vectors

    msg = decode_message(vectors("stage.md")["open"], expect={"open"})
    task = Task.from_wire(msg.get("task", dict))
    assert msg.get("stage", int) == 0
    assert task.requester == "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    task.verify(network_id="p2pinfer-testnet", now=1800000100)
    with pytest.raises(TaskError, match="deadline"):
        task.verify(network_id="p2pinfer-testnet", now=1800000601)
