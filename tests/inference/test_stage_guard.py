"""A stage refuses what it should refuse, answers bad input with a typed fault, and keeps
serving; sessions expire and their caches are erased."""

import pytest
import torch
import trio

from p2pinfer.errors import RemoteError
from p2pinfer.inference.client import RequestOutcome, RouteSession
from p2pinfer.inference.task import StagePlan, Task
from p2pinfer.models.sampling import Sampler
from p2pinfer.wire import tensor_to_wire

from .conftest import network

PROMPT = [3, 17, 42, 8]


def make_task(client, stage_peer, start=1, end=5, **kw):
    return Task.create(client.identity, network_id=client.network_id,
                       model_id=kw.pop("model_id", None) or client.inference.client(kw.pop("path")).info.model_id,
                       requester_addrs=client.addrs, route=[StagePlan(start, end, (stage_peer,))],
                       max_length=32, **kw)


async def open_hop(client, stage, task, index=0):
    s = await client.open_stream(stage.peer_id, "stage")
    await s.send("open", {"task": task.to_wire(), "stage": index})
    return s


async def test_task_not_naming_the_stage_is_refused(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, (stage,)):
        task = make_task(client, "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB", path=path)
        async with await open_hop(client, stage, task) as s:
            with pytest.raises(RemoteError) as info:
                await s.recv(expect={"ready"})
        assert info.value.code == "bad-task"
        assert stage.inference.stage.counters["refused"] == 1


async def test_layers_outside_the_served_span_are_refused(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 3]]) as (client, (stage,)):
        task = make_task(client, stage.peer_id, 1, 5, path=path)
        async with await open_hop(client, stage, task) as s:
            with pytest.raises(RemoteError) as info:
                await s.recv(expect={"ready"})
        assert info.value.code == "not-in-route"


async def test_wrong_shape_tensor_gets_a_typed_fault_and_the_stage_keeps_serving(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, (stage,)):
        c = client.inference.client(path)
        bad = []
        good = [t async for t in c.generate(PROMPT, 3, Sampler())]
        for bad_hidden in (torch.zeros(1, 2, 7), torch.zeros(1, 2, 32, dtype=torch.float64),
                           torch.full((1, 2, 32), float("nan"))):
            task = make_task(client, stage.peer_id, path=path)
            session = RouteSession(c, task, c.settings, c.strategy(c.settings),
                                   RequestOutcome("general"))
            c.sessions[task.task_id] = session
            async with await open_hop(client, stage, task) as s:
                assert (await s.recv(expect={"ready", "fault"})).t == "ready"
                await s.send("step", {"seq": 0, "pos": 0, "hidden": tensor_to_wire(bad_hidden)})
                fault = await s.recv(expect={"fault"})
                bad.append(fault.get("code", str))
            del c.sessions[task.task_id]
        assert all(code for code in bad)
        again = [t async for t in c.generate(PROMPT, 3, Sampler())]
        assert again == good
        assert stage.inference.stage.counters["faults"] >= 3


async def test_idle_sessions_expire_and_their_cache_is_erased(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, (stage,)):
        server = stage.inference.stage
        c = client.inference.client(path)
        seen = {}

        async def watch():
            while not server.sessions:
                await trio.sleep(0.01)
            (session,) = server.sessions.values()
            seen["session"] = session

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            gen = c.generate(PROMPT, 4, Sampler())
            await gen.__anext__()
            session = seen["session"]
            assert session.cache.nbytes > 0
            assert server.reap(now=session.last_used + server.settings.session_ttl_s + 1) == 1
            assert server.sessions == {} and session.erased and session.cache.nbytes == 0
            await gen.aclose()


async def test_closing_a_session_erases_the_stage_cache(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, (stage,)):
        server = stage.inference.stage
        sessions = []
        orig = server.sessions.__class__.__setitem__

        class Recording(dict):
            def __setitem__(self, k, v):
                sessions.append(v)
                orig(self, k, v)

        server.sessions = Recording()
        c = client.inference.client(path)
        out = [t async for t in c.generate(PROMPT, 4, Sampler())]
        assert len(out) == 4
        with trio.fail_after(5):
            while server.sessions:
                await trio.sleep(0.01)
        assert sessions and all(s.erased and s.cache.nbytes == 0 for s in sessions)
