"""A requester's conversation over in-process stages (small random llama): turns reuse the
stages' caches, a rewritten history starts a fresh route session, a too-long conversation is
refused before any peer is asked, and the answers equal one-shot local generation."""

import pytest

from p2pinfer.inference import InferenceError
from p2pinfer.inference.client import PromptTooLong
from p2pinfer.models import LocalModel
from p2pinfer.models.sampling import Sampler, SamplingParams
from tests.inference.conftest import network, save_checkpoint


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(save_checkpoint("llama", tmp_path_factory.mktemp("chat-ckpt") / "llama"))


async def _turn(conv, ids, n=6):
    stream = conv.turn(ids, n, Sampler(SamplingParams()))
    return [t async for t in stream], stream.outcome


async def test_turns_send_only_new_tokens_and_equal_local_generation(tmp_path, llama):
    path = llama
    local = LocalModel.load(path)
    async with network(tmp_path, path, [[1, 3], [3, 5]]) as (client, stages):
        c = client.inference.client(path)
        async with c.conversation() as conv:
            first = [5, 9, 13, 2]
            a1, o1 = await _turn(conv, first)
            assert a1 == local.generate(first, 6)
            assert (o1.tokens_sent, o1.tokens_reused) == (len(first) + 5, 0)

            second = [*first, *a1, 7, 11]  # the whole conversation; the caches hold most
            a2, o2 = await _turn(conv, second)
            assert a2 == local.generate(second, 6)
            assert o2.tokens_reused == len(first) + 5
            assert o2.tokens_sent == len(second) - o2.tokens_reused + 5 == 8
            assert not o2.notes and len(o2.route) == 2
            assert all(st.inference.stage.counters["opened"] == 1 for st in stages)

            # a history that differs from what is cached: a fresh route session, said so
            third = [5, 9, 14, 2, 3]
            a3, o3 = await _turn(conv, third)
            assert a3 == local.generate(third, 6)
            assert o3.tokens_sent == len(third) + 5 and o3.tokens_reused == 0
            assert o3.notes and "fresh route session" in o3.notes[0]
            assert all(st.inference.stage.counters["opened"] == 2 for st in stages)

            # longer than the context: refused before any peer is asked
            with pytest.raises(PromptTooLong, match="context of 64"):
                await _turn(conv, list(range(1, 60)), 10)
            with pytest.raises(InferenceError, match="empty"):
                await _turn(conv, [])
            sent = o1.tokens_sent + o2.tokens_sent + o3.tokens_sent
            assert all(st.inference.stage.counters["tokens"] == sent for st in stages)
            assert all(st.inference.stage.counters["opened"] == 2 for st in stages)
        assert client.inference.status()["requester_sessions"] == 0
