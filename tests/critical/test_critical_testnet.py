"""Critical-mode inference over an in-process testnet: proofs per stage, cheats caught."""

from __future__ import annotations

import numpy as np
import pytest

from p2pinfer.errors import P2PInferError
from p2pinfer.inference import ClientSettings
from p2pinfer.inference.critical import CriticalResult, critical_client, infer_critical
from p2pinfer.inference.planner import NoRouteError
from p2pinfer.zk import ModelManifest
from p2pinfer.zk.checkpoint import MANIFEST_FILE

from ..inference.conftest import network
from .cheats import (
    PerturbedOutputRunner,
    ReplayingRunner,
    WrongQueryWeightsRunner,
    WrongWeightsRunner,
    install,
)

SPANS = [[1, 3], [3, 5]]


def features(seed: int = 0, tokens: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(tokens, 32))


def settings(**kw) -> ClientSettings:
    return ClientSettings(k_head=1, k_tail=1, **kw)


async def test_every_stage_proof_is_verified_and_the_output_is_bit_exact(tmp_path, mlp_dir):
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, stages):
        result = await infer_critical(client.inference, features(), model=str(mlp_dir),
                                      settings=settings())
        local = critical_client(client.inference, str(mlp_dir), settings()).local_forward(
            features())
    assert isinstance(result, CriticalResult)
    assert np.array_equal(result.output_fixed, local)
    assert [p.stage for p in result.proofs] == [0, 1]
    assert [p.peer for p in result.proofs] == [s.peer_id for s in stages]
    assert [p.layers for p in result.proofs] == [(1, 3), (3, 5)]
    assert all(p.proof_bytes > 0 and p.verify_ms > 0 and p.prove_ms > 0 for p in result.proofs)
    assert result.proofs[0].hop_verified_by == stages[1].peer_id
    assert stages[1].inference.stage.runners["critical"].counters["verified"] == 1


async def test_the_node_api_runs_critical_inference(tmp_path, mlp_dir):
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, _):
        result = await client.infer_critical(features(1), model=str(mlp_dir),
                                             settings=settings())
    assert len(result.proofs) == 2 and result.output.shape == (3, 32)


async def test_a_stage_with_other_weights_is_caught_by_the_next_stage(tmp_path, mlp_dir):
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, stages):
        cheat = install(stages[0], WrongWeightsRunner)
        c = critical_client(client.inference, str(mlp_dir), settings(max_replans=0))
        with pytest.raises(P2PInferError, match="proof"):
            await c.infer(features())
        assert c.backoff.failures == {stages[0].peer_id: 1}
        assert stages[1].inference.stage.runners["critical"].counters["rejected"] == 1
        assert cheat.counters["proved"] == 1


async def test_a_perturbed_output_of_the_last_stage_is_caught_by_the_requester(tmp_path,
                                                                                mlp_dir):
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, stages):
        install(stages[1], PerturbedOutputRunner)
        c = critical_client(client.inference, str(mlp_dir), settings(max_replans=0))
        with pytest.raises(P2PInferError, match="binding"):
            await c.infer(features())
        assert c.backoff.failures == {stages[1].peer_id: 1}


async def test_a_proof_replayed_from_another_task_is_caught(tmp_path, mlp_dir):
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, stages):
        install(stages[0], ReplayingRunner)
        c = critical_client(client.inference, str(mlp_dir), settings(max_replans=0))
        await c.infer(features())  # honest first task: the proof it will replay
        with pytest.raises(P2PInferError, match="binding"):
            await c.infer(features())
        assert c.backoff.failures == {stages[0].peer_id: 1}


async def test_the_requester_replans_around_a_cheat_to_an_honest_peer(tmp_path, mlp_dir):
    async with network(tmp_path, str(mlp_dir), [[1, 3], [3, 5], [3, 5]]) as (client, stages):
        install(stages[1], PerturbedOutputRunner)
        c = critical_client(client.inference, str(mlp_dir), settings())
        c.settings.deny = [stages[2].peer_id]  # first route through the cheat
        with pytest.raises(P2PInferError):
            await c.infer(features())
        c.settings.deny = []
        result = await c.infer(features())
    assert [p.peer for p in result.proofs] == [stages[0].peer_id, stages[2].peer_id]
    assert stages[1].peer_id in c.backoff.excluded()


async def test_peers_advertise_their_manifest_and_requesters_route_only_to_their_own(
        tmp_path, mlp_dir, other_mlp_dir):
    ours = ModelManifest.from_bytes((mlp_dir / MANIFEST_FILE).read_bytes()).digest()
    other = (other_mlp_dir / MANIFEST_FILE).read_bytes()
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, stages):
        for s in stages:
            assert client.peer(s.peer_id).advert.manifest == "sha256:" + ours.hex()
        # another owner's manifest for the same weights: no peer proves against it
        c = critical_client(client.inference, str(mlp_dir), settings(max_replans=0),
                            manifest=other)
        assert c.candidates() == []
        with pytest.raises(NoRouteError):
            await c.infer(features())
        assert stages[0].inference.stage.counters["refused"] == 0
        mine = critical_client(client.inference, str(mlp_dir), settings())
        assert {cand.peer_id for cand in mine.candidates()} == {s.peer_id for s in stages}


async def test_a_stage_refuses_a_task_pinned_to_another_manifest(tmp_path, mlp_dir,
                                                                 other_mlp_dir):
    """A requester that ignores adverts' manifest digests still meets the stage's own check."""
    other = (other_mlp_dir / MANIFEST_FILE).read_bytes()
    async with network(tmp_path, str(mlp_dir), SPANS) as (client, stages):
        c = critical_client(client.inference, str(mlp_dir), settings(max_replans=0),
                            manifest=other)
        c.servable_spans = lambda spans, advert: tuple((a, b) for a, b in spans)
        with pytest.raises(P2PInferError, match="manifest"):
            await c.infer(features())
        assert stages[0].inference.stage.counters["refused"] == 1


@pytest.mark.parametrize("act", ["gelu", "swiglu", "swiglu-mlp", "llama-mlp", "llama"])
async def test_a_lookup_mlp_is_proven_and_a_cheat_is_caught(tmp_path, act):
    """GELU layers (the lookup argument), SwiGLU layers (the gated product and the SiLU
    lookup), Llama MLP blocks (32 -> 64 -> 32 plus the block's input: a residual over two
    proven layers), the MLP half of a Llama block (RMSNorm first, the residual over three) and
    whole Llama blocks (attention halves with 4 heads, 2 kv heads and rotary positions, then
    MLP halves) are proven over the same testnet path, and a stage with other weights is
    caught."""
    from p2pinfer.models.mlp import zk_mlp_config
    from p2pinfer.zk.checkpoint import write_committed_mlp

    model = tmp_path / f"{act}-mlp"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config(f"zk-mlp-{act}", layers=6, hidden=32,
                                             activation=act, intermediate=64, kv_heads=2))
    x = features(3)
    async with network(tmp_path / "honest", str(model), SPANS) as (client, _):
        result = await infer_critical(client.inference, x, model=str(model),
                                      settings=settings())
        local = critical_client(client.inference, str(model), settings()).local_forward(x)
    assert np.array_equal(result.output_fixed, local)
    assert [p.stage for p in result.proofs] == [0, 1]
    async with network(tmp_path / "cheat", str(model), SPANS) as (client, stages):
        cheat = install(stages[0], WrongWeightsRunner)
        c = critical_client(client.inference, str(model), settings(max_replans=0))
        with pytest.raises(P2PInferError, match="proof"):
            await c.infer(x)
        assert c.backoff.failures == {stages[0].peer_id: 1}
        assert stages[1].inference.stage.runners["critical"].counters["rejected"] == 1
        assert cheat.counters["proved"] == 1


async def test_a_llama_stage_with_another_query_weight_is_caught(tmp_path):
    """Stage 0 serves an MLP half and an attention half; one of its W_q weights is changed."""
    from p2pinfer.models.mlp import zk_mlp_config
    from p2pinfer.zk.checkpoint import write_committed_mlp

    model = tmp_path / "llama"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-mlp-llama-q", layers=6, hidden=32,
                                             activation="llama", intermediate=64, kv_heads=2))
    async with network(tmp_path / "cheat", str(model), SPANS) as (client, stages):
        cheat = install(stages[0], WrongQueryWeightsRunner)
        c = critical_client(client.inference, str(model), settings(max_replans=0))
        with pytest.raises(P2PInferError, match="proof"):
            await c.infer(features(4, tokens=5))
        assert c.backoff.failures == {stages[0].peer_id: 1}
        assert stages[1].inference.stage.runners["critical"].counters["rejected"] == 1
        assert cheat.counters["proved"] == 1
