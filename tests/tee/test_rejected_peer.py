"""A peer whose evidence fails verification shows the failed check and is never routed to."""

from __future__ import annotations

import json

import pytest
import torch

from p2pinfer.identity import NodeIdentity
from p2pinfer.inference.hop import HopContext
from p2pinfer.inference.secure_hop import HopRefused
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler, SamplingParams
from p2pinfer.services import attest as attestation
from p2pinfer.services.control import answer
from p2pinfer.trust import Attester, EvidenceBundle

from .conftest import tee_network


class ForgingAttester(Attester):
    """Simulated evidence with one signature byte flipped: a forgery."""

    def __init__(self, inner: Attester) -> None:
        self.inner = inner
        self.kind = inner.kind

    def attest(self, report_data: bytes) -> EvidenceBundle:
        bundle = self.inner.attest(report_data)
        ev = bytearray(bundle.evidence)
        ev[-1] ^= 1
        return EvidenceBundle(kind=bundle.kind, evidence=bytes(ev))


@pytest.fixture
def forger(tmp_path, monkeypatch) -> str:
    """The peer id of the node (data dir `stage2`) whose attester forges its evidence."""
    ident, _ = NodeIdentity.load_or_create(tmp_path / "stage2" / "identity.key")
    real = attestation.make_attester

    def make(trust, identity):
        att = real(trust, identity)
        return ForgingAttester(att) if identity.peer_id == ident.peer_id else att

    monkeypatch.setattr(attestation, "make_attester", make)
    return ident.peer_id


async def test_a_peer_with_forged_evidence_is_never_routed_to(tmp_path, llama, forger):
    prompt = [5, 17, 42, 3]
    reference = LocalModel.load(llama).generate(prompt, 4)
    # the forger serves the whole middle, the honest peers split it: unverified, the forger
    # would be the cheaper route
    async with tee_network(tmp_path, str(llama), [[0, 3], [3, 6], [0, 6]]) as (client, stages):
        assert stages[2].peer_id == forger
        row = client.peer(forger)
        assert row.extra.get("tee_error") == "signature" and "tee_level" not in row.extra
        assert client.attestation.rejected(forger) == "signature"
        assert not client.attestation.routable(forger)
        c = client.inference.client(str(llama))
        assert forger not in {cand.peer_id for cand in c.candidates()}
        for _ in range(2):
            run = c.generate(prompt, 4, Sampler(SamplingParams(temperature=0)))
            got = [t async for t in run]
            assert got == reference
            assert forger not in {p for s in run.outcome.route for p in s.replicas}
        # `p2pinfer peers` shows the check through the control endpoint
        reply = answer(client, json.dumps({"cmd": "peers"}).encode())
        rows = {p["peer_id"]: p for p in reply["peers"]}
        assert rows[forger]["tee_error"] == "signature"
        assert {rows[s.peer_id]["tee_level"] for s in stages[:2]} == {"simulated"}


async def test_a_hop_to_a_rejected_peer_fails_with_a_typed_error_naming_it(
        tmp_path, llama, forger):
    async with tee_network(tmp_path, str(llama), [[0, 3], [3, 6], [0, 6]]) as (client, stages):
        hop = client.inference.hop

        ctx = HopContext(b"t" * 16, 0, 0, forger)
        with pytest.raises(HopRefused) as e:
            await hop.pack(torch.zeros(1, 2, 32), ctx)
        assert e.value.peer_id == forger and "signature" in str(e.value)
        # the forger cannot open a channel to an honest peer either
        with pytest.raises(attestation.PeerNotAttested):
            await stages[2].attestation.channel_to(stages[0].peer_id)
        assert stages[0].attestation.rejected(forger) == "signature"
