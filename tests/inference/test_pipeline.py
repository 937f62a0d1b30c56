"""Distributed inference equals the full model from `transformers` on the same checkpoint."""

import pytest
import torch
import transformers as tf

from p2pinfer.inference import NoRouteError
from p2pinfer.inference.client import InferenceError, PromptTooLong
from p2pinfer.models.sampling import Sampler, SamplingParams

from .conftest import network

PROMPT = [3, 17, 42, 8, 64, 5]


def hf_greedy(path, prompt, n):
    """Greedy decoding with the `transformers` model, full forward each step (no cache, no
    generation-config defaults such as end-of-sequence suppression)."""
    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
async def test_greedy_generation_over_two_stages_equals_transformers(tmp_path, checkpoints, family):
    path = str(checkpoints[family])
    async with network(tmp_path, path, [[1, 3], [3, 5]]) as (client, stages):
        c = client.inference.client(path)
        run = c.generate(PROMPT, 12, Sampler(SamplingParams()))
        got = [t async for t in run]
        assert [(s.start, s.end) for s in run.outcome.route] == [(1, 3), (3, 5)]
        assert all(st.inference.stage.counters["steps"] == 12 for st in stages)
    want = hf_greedy(path, PROMPT, 12)
    assert got == want
    assert len(set(want)) > 2  # the checkpoint's output varies, so equality means something


async def test_encoder_embedding_over_the_network_equals_transformers(tmp_path, checkpoints):
    path = str(checkpoints["bert"])
    ids = [2, 11, 23, 5, 7, 9]
    async with network(tmp_path, path, [[1, 4], [4, 5]]) as (client, _):
        vec = (await client.inference.client(path).embed(ids)).vector
    model = tf.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state
    ref = hidden.mean(dim=1)  # mean pooling: the default without a sentence-transformers config
    torch.testing.assert_close(vec.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)


async def test_sampled_generation_is_reproducible_with_a_seed(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, _):
        c = client.inference.client(path)
        runs = []
        for _ in range(2):
            s = Sampler(SamplingParams(temperature=0.9, top_p=0.9, seed=11))
            runs.append([t async for t in c.generate(PROMPT, 8, s)])
    assert runs[0] == runs[1]


async def test_prompt_longer_than_the_context_is_a_clear_error(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, _):
        c = client.inference.client(path)
        with pytest.raises(PromptTooLong, match="context of 64"):
            async for _ in c.generate(list(range(60)), 10, Sampler()):
                pass


async def test_no_peer_serving_the_middle_layers_is_a_clear_error(tmp_path, checkpoints):
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 3]]) as (client, _):
        c = client.inference.client(path)
        with pytest.raises(NoRouteError, match=r"\[1, 5\)"):
            async for _ in c.generate(PROMPT, 2, Sampler()):
                pass


async def test_auto_serving_takes_the_least_covered_span_and_completes_the_route(tmp_path, checkpoints):
    import trio

    from p2pinfer.node import Node

    from .conftest import node_config

    path = str(checkpoints["llama"])
    async with Node(node_config(tmp_path, "fixed", serve={"model": path, "layers": [1, 3]})) as a:
        boot = [a.addrs[0]]
        with trio.fail_after(20):
            while not a.advert.spans:
                await trio.sleep(0.05)
        auto = node_config(tmp_path, "auto", boot=boot,
                           serve={"model": path, "layers": "auto", "span_layers": 2})
        async with Node(auto) as b, Node(node_config(tmp_path, "client", boot=boot)) as client:
            with trio.fail_after(30):
                while not b.advert.spans:
                    await trio.sleep(0.05)
            assert b.advert.spans == ((3, 5),)  # layers 3 and 4 were served by nobody
            await client.wait_for_route(path, timeout=30)
            c = client.inference.client(path)
            got = [t async for t in c.generate(PROMPT, 4, Sampler())]
            assert got == hf_greedy(path, PROMPT, 4)


async def test_a_success_resets_a_peers_back_off(tmp_path, checkpoints):
    """A peer that failed once and then served a request completely starts from zero again:
    its next failure backs it off for the base delay, not a doubled one."""
    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5]]) as (client, (stage,)):
        c = client.inference.client(path)
        c.backoff.fail(stage.peer_id)  # the only peer: the plan still tries it
        assert stage.peer_id in c.backoff.excluded()
        run = c.generate(PROMPT, 3, Sampler())
        assert [t async for t in run] == hf_greedy(path, PROMPT, 3)
        assert [s.replicas for s in run.outcome.route] == [(stage.peer_id,)]
        assert stage.peer_id not in c.backoff.failures
        assert stage.peer_id not in c.backoff.excluded()
        assert c.backoff.fail(stage.peer_id) == c.backoff.base_s


async def test_replans_are_counted_per_request(tmp_path, checkpoints):
    """A request that hits a refusing route counts its own re-plans; the next one, on a
    healthy route, reports none (the count is not the client's running total)."""
    from p2pinfer.config import RequestSettings

    path = str(checkpoints["llama"])
    async with network(tmp_path, path, [[1, 5], [1, 5]]) as (client, stages):
        c = client.inference.client(path)
        # the first request may only use stage 0, which refuses every open for now
        first = c.generate(PROMPT, 2, Sampler(),
                           settings=RequestSettings(k_head=1, k_tail=1, max_replans=2,
                                                    deny=[stages[1].peer_id]))
        stages[0].inference.stage.settings.max_sessions = 0  # refuses every open
        with pytest.raises(InferenceError, match="gave up after 2 re-plans"):
            _ = [t async for t in first]
        assert first.outcome.replans == 2
        stages[0].inference.stage.settings.max_sessions = 32
        c.backoff.succeed(stages[0].peer_id)
        second = c.generate(PROMPT, 2, Sampler())
        assert [t async for t in second] == hf_greedy(path, PROMPT, 2)
        assert second.outcome.replans == 0


async def test_a_peer_serving_other_weights_under_the_same_model_id_is_never_routed_to(
        tmp_path, checkpoints):
    from p2pinfer.models import load_model_info, weights_digest

    from .conftest import save_checkpoint

    ours = str(checkpoints["llama"])
    theirs = str(save_checkpoint("llama", tmp_path / "other-seed", seed=9))
    # same architecture and tensor layout: the same model id, different stored weights
    assert load_model_info(ours).model_id == load_model_info(theirs).model_id
    assert weights_digest(ours, 1, 5) != weights_digest(theirs, 1, 5)
    async with network(tmp_path, theirs, [[1, 5]]) as (client, stages):
        advert = client.peer(stages[0].peer_id).advert
        assert advert.weights == (weights_digest(theirs, 1, 5),)
        c = client.inference.client(ours)
        with pytest.raises(NoRouteError):
            c.plan()
        # a requester holding the same weights as the peer is routed to it
        assert [s.replicas for s in client.inference.client(theirs).plan()] == [
            (stages[0].peer_id,)]


async def test_auto_peers_started_together_settle_and_cover_the_middle(tmp_path, checkpoints):
    """Three auto peers started at the same moment each see nothing served and pick the same
    window; they settle until the middle layers [1, 5) are covered, and a request runs."""
    import trio

    from p2pinfer.inference.placement import coverage
    from p2pinfer.node import Node

    from .conftest import node_config

    path = str(checkpoints["llama"])
    async with Node(node_config(tmp_path, "client")) as client:
        boot = [client.addrs[0]]
        peers: list[Node] = []
        done = trio.Event()

        async def auto_peer(i: int) -> None:
            cfg = node_config(tmp_path, f"auto{i}", boot=boot,
                              serve={"model": path, "layers": "auto", "span_layers": 2})
            async with Node(cfg) as node:
                peers.append(node)
                await done.wait()

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(auto_peer, i)
            with trio.fail_after(60):
                while len(peers) < 3 or 0 in coverage(
                        [s for p in client.peers() for s in p.spans], 1, 5):
                    await trio.sleep(0.1)
                await client.wait_for_route(path, timeout=30)
            c = client.inference.client(path)
            got = [t async for t in c.generate(PROMPT, 4, Sampler())]
            assert got == hf_greedy(path, PROMPT, 4)
            assert 0 not in coverage([n.advert.spans[0] for n in peers], 1, 5)
            done.set()
