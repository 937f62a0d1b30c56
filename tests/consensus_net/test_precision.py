"""Adverts state each replica's compute precision, and the requester signs the matching vote
tolerance into the task: the float32 one on an all-float32 route, the bfloat16 one as soon as
one replica computes in bfloat16 (or states nothing). Real stage nodes on loopback."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from p2pinfer.consensus import TOLERANCE_BFLOAT16, TOLERANCE_FLOAT32
from p2pinfer.inference.planner import NoRouteError
from p2pinfer.inference.redundancy import task_tolerance
from p2pinfer.inference.task import Task
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler

from ..inference.conftest import network, save_checkpoint

PROMPT = [3, 17, 42, 8, 64, 5]
SPANS = [[1, 3], [3, 5]]


def _signed_tolerance(c) -> float:
    route = c.plan()
    task = Task.create(c.node.identity, network_id=c.node.network_id, model_id=c.info.model_id,
                       requester_addrs=c.node.addrs, route=route, mode="general",
                       max_length=8, options=c.strategy(c.settings).task_options(route))
    return task_tolerance(Task.from_wire(task.to_wire()))


async def test_an_all_float32_route_votes_at_the_float32_tolerance(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint("llama", tmp_path / "llama", seed=3)
    async with network(tmp_path, str(ckpt), SPANS,
                       serve=[{"dtype": "float32"}, {"dtype": "float32"}]) as (client, stages):
        assert {client.peer(s.peer_id).advert.precision for s in stages} == {"float32"}
        c = client.inference.client(str(ckpt))
        assert c.route_tolerance(c.plan()) == TOLERANCE_FLOAT32
        assert _signed_tolerance(c) == TOLERANCE_FLOAT32
        got = [t async for t in c.generate(PROMPT, 4, Sampler())]
        assert got == LocalModel.load(ckpt).generate(PROMPT, 4)


async def test_one_bfloat16_stage_loosens_the_route_to_the_bfloat16_tolerance(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint("llama", tmp_path / "llama", seed=3)
    async with network(tmp_path, str(ckpt), SPANS,
                       serve=[{"dtype": "float32"}, {"dtype": "bfloat16"}]) as (client, stages):
        assert client.peer(stages[1].peer_id).advert.precision == "bfloat16"
        c = client.inference.client(str(ckpt))
        assert c.route_tolerance(c.plan()) == TOLERANCE_BFLOAT16
        assert _signed_tolerance(c) == TOLERANCE_BFLOAT16
        # a request may still pin its own tolerance
        pinned = client.inference.client(str(ckpt), replace(c.settings, tolerance=0.02))
        assert _signed_tolerance(pinned) == 0.02
        # the bfloat16 stage really serves: its tokens are those of a bfloat16 span
        run = c.generate(PROMPT, 4, Sampler())
        got = [t async for t in run]
        assert len(got) == 4 and all(0 <= t < 97 for t in got)
        assert run.outcome.verification()["dissenters"] == []


async def test_redundant_routes_need_a_float32_majority_per_stage_unless_the_request_allows(
        tmp_path):
    """Two bfloat16 replicas and one float32 one of a span: no m = 3 route by default (a
    bfloat16 majority cannot tell int8 weights from rounding); a request that allows bfloat16
    majorities gets one, and m = 1 routes are not constrained."""
    ckpt = save_checkpoint("llama", tmp_path / "llama", seed=3)
    async with network(tmp_path, str(ckpt), [[1, 5]] * 3,
                       serve=[{"dtype": "bfloat16"}, {"dtype": "float32"},
                              {"dtype": "bfloat16"}]) as (client, stages):
        c = client.inference.client(str(ckpt))
        m3 = replace(c.settings, redundancy=3)
        with pytest.raises(NoRouteError, match="2 of the eligible peers compute in bfloat16"):
            client.inference.client(str(ckpt), m3).plan()
        allowed = client.inference.client(str(ckpt), replace(m3, bfloat16_majority=True))
        [stage] = allowed.plan()
        assert set(stage.replicas) == {s.peer_id for s in stages}
        assert len(c.plan()[0].replicas) == 1
