"""The integration pieces that need no network: the test-only fault knob, claim intake, the
votes-topic message type, task tolerances and the requester's distribution watch (CDV)."""

import tempfile

import pytest
import torch
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.config import config_from_dict
from p2pinfer.consensus import (
    TOLERANCE_BFLOAT16,
    FingerprintContext,
    InlinedPeerKeys,
    MalformedVoteMessage,
    NoMajorityError,
    SignatureInvalid,
    fingerprint,
    sign_claim,
)
from p2pinfer.consensus.claimbox import ClaimBox, wait_majority
from p2pinfer.consensus.report import VerificationReport
from p2pinfer.consensus.watch import DistributionWatch
from p2pinfer.errors import ConfigError
from p2pinfer.identity import NodeIdentity
from p2pinfer.inference.redundancy import _message_type, task_tolerance
from p2pinfer.inference.task import StagePlan, Task, TaskError
from p2pinfer.inference.testing import alter_weights
from p2pinfer.models import LayerSpan

from ..inference.conftest import save_checkpoint


def _config(serve, **sections):
    return config_from_dict({"node": {"data_dir": "/tmp/x"}, "serve": serve, **sections})


def test_fault_injection_accepts_only_named_kinds():
    assert _config({"fault_injection": "stall"}).serve.fault_injection == "stall"
    with pytest.raises(ConfigError, match="fault_injection"):
        _config({"fault_injection": "cheat-a-bit"})


def test_the_int8_weight_fault_requantises_every_weight_matrix_per_channel():
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ckpt = save_checkpoint("llama", tmp, seed=3)
        honest = LayerSpan.load(ckpt, 1, 3, torch.float32)
        cheat = LayerSpan.load(ckpt, 1, 3, torch.float32)
    assert _config({"fault_injection": "int8-weights"}).serve.fault_injection == "int8-weights"
    alter_weights(cheat, "int8-weights")
    pairs = list(zip(honest.blocks.buffers(), cheat.blocks.buffers(), strict=True))
    matrices = [(a, b) for a, b in pairs if a.dim() == 2]
    assert matrices
    for a, b in matrices:
        step = a.abs().amax(dim=1, keepdim=True) / 127
        assert not torch.equal(a, b)
        assert ((a - b).abs() <= step / 2 + 1e-7).all()
        assert len(torch.unique((b / step).round())) <= 255
    assert all(torch.equal(a, b) for a, b in pairs if a.dim() != 2)
    with pytest.raises(ValueError):
        alter_weights(cheat, "perturb")


def test_fault_injection_is_refused_on_a_production_network():
    with pytest.raises(ConfigError, match="production"):
        _config({"fault_injection": "perturb"}, trust={"production": True})


def _claim(ident, replica=None, stage=0):
    ctx = FingerprintContext("net", b"t" * 16, stage, 0)
    return sign_claim(ident, replica or ident.peer_id, ctx, 3, fingerprint(torch.ones(1, 2, 8),
                                                                          ctx))


def test_claim_box_holds_a_verified_claim_from_its_signer():
    ident = NodeIdentity.generate()
    box = ClaimBox(InlinedPeerKeys())
    box.add(_claim(ident), sender=ident.peer_id)
    assert len(box.claims((b"t" * 16, 0, 0), [ident.peer_id])) == 1


def test_claim_box_refuses_a_claim_relayed_by_another_peer():
    ident, other = NodeIdentity.generate(), NodeIdentity.generate()
    with pytest.raises(MalformedVoteMessage):
        ClaimBox(InlinedPeerKeys()).add(_claim(ident), sender=other.peer_id)


def test_claim_box_refuses_a_claim_signed_by_someone_else():
    ident, other = NodeIdentity.generate(), NodeIdentity.generate()
    forged = _claim(other, replica=ident.peer_id)
    with pytest.raises(SignatureInvalid):
        ClaimBox(InlinedPeerKeys()).add(forged, sender=ident.peer_id)


def test_claim_box_stays_bounded():
    ident = NodeIdentity.generate()
    box = ClaimBox(InlinedPeerKeys(), limit=4)
    for stage in range(10):
        box.add(_claim(ident, stage=stage))
    assert len(box._claims) == 4


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=64))
def test_votes_topic_garbage_raises_one_typed_error(data):
    try:
        _message_type(data)
    except MalformedVoteMessage:
        pass


def _task(options):
    ident = NodeIdentity.generate()
    return Task.create(ident, network_id="net", model_id="m", requester_addrs=[],
                       route=[StagePlan(0, 1, (ident.peer_id,))], options=options)


def test_task_tolerance_defaults_to_the_bfloat16_one_and_refuses_nonsense():
    assert task_tolerance(_task({})) == pytest.approx(TOLERANCE_BFLOAT16)
    assert task_tolerance(_task({"tolerance": 1e-3})) == pytest.approx(1e-3)
    for bad in (0.0, -1.0, 2.0, "x", True):
        with pytest.raises(TaskError):
            task_tolerance(_task({"tolerance": bad}))


def test_distribution_watch_flags_a_drifting_peer_and_not_an_honest_one():
    gen = torch.Generator().manual_seed(0)
    watch = DistributionWatch(observations=32, window=4)
    honest = lambda: torch.randn(1, 6, 64, generator=gen)
    for _ in range(32):
        watch.reference("m", 2, honest())
    assert watch.ready("m", 2)
    for _ in range(12):
        assert not watch.observe("m", 2, "honest", honest())
    flagged = False
    for _ in range(12):
        flagged |= watch.observe("m", 2, "drifter", 1.5 * honest() + 0.5)
    assert flagged
    assert watch.flagged() == ["drifter"]


def test_verification_report_lists_dissenters_once():
    report = VerificationReport("general", 3)
    assert report.to_dict()["dissenters"] == []


def test_majority_wait_returns_once_a_second_replica_agrees():
    idents = [NodeIdentity.generate() for _ in range(3)]
    replicas = [i.peer_id for i in idents]
    box = ClaimBox(InlinedPeerKeys())
    key = (b"t" * 16, 0, 0)
    box.add(_claim(idents[0]))
    got = []

    async def main():
        async with trio.open_nursery() as nursery:
            async def vote():
                got.append(await wait_majority(box, key, replicas, TOLERANCE_BFLOAT16))
            nursery.start_soon(vote)
            await trio.sleep(0.05)
            assert not got  # one claim of three is no majority
            box.add(_claim(idents[1]))

    trio.run(main)
    assert sorted(got[0].agreeing_replicas) == sorted(replicas[:2])


def test_majority_wait_names_the_largest_group_when_nothing_more_comes():
    idents = [NodeIdentity.generate() for _ in range(3)]
    box = ClaimBox(InlinedPeerKeys())
    box.add(_claim(idents[0]))

    async def nothing_more():
        return False

    async def main():
        with pytest.raises(NoMajorityError) as e:
            await wait_majority(box, (b"t" * 16, 0, 0), [i.peer_id for i in idents],
                                TOLERANCE_BFLOAT16, wake=nothing_more)
        assert (e.value.stage, e.value.step, e.value.largest, e.value.replicas) == (0, 0, 1, 3)
        with pytest.raises(NoMajorityError):
            await wait_majority(box, (b"t" * 16, 0, 0), [i.peer_id for i in idents],
                                TOLERANCE_BFLOAT16, timeout=0.05)

    trio.run(main)
