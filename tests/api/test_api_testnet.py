"""The HTTP API through the official `openai` client, over a multi-process testnet.

One testnet for the module (three stage processes: a GPT-2-style decoder split in two spans and a
BERT encoder); each test starts its own requester node with the API in this process.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pinfer.api.app import check_listen, serve_api
from p2pinfer.api.chat import ChatMessage, render_chat
from p2pinfer.api.receipt import verify_receipt
from p2pinfer.api.requests import Requester
from p2pinfer.cli import main as cli_main
from p2pinfer.config import ApiSection
from p2pinfer.errors import ConfigError
from p2pinfer.node import Node
from p2pinfer.services.control import query_control
from p2pinfer.testnet import Testnet

from ..inference.conftest import node_config, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
NETWORK = "inference-test"


def _word_tokenizer(model_dir: Path, tmp_path: Path) -> Path:
    """A word-level tokenizer.json beside the checkpoint: `wN` is id N (1..96), anything else
    (the chat template's markers) is [UNK], id 0."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 97)}}
    tok = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(model_dir / "tokenizer.json"))
    return model_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apinet")
    gpt = _word_tokenizer(save_checkpoint("gpt2", tmp / "gpt2", seed=5), tmp)
    bert = _word_tokenizer(save_checkpoint("bert", tmp / "bert", seed=6), tmp)
    llama = _word_tokenizer(save_checkpoint("llama", tmp / "llama", seed=7), tmp)  # unserved
    serve = [(gpt, [1, 3]), (gpt, [3, 5]), (bert, [1, 5])]
    net = Testnet(3, base_dir=tmp / "net", network_id=NETWORK, config_for=lambda i: {
        "serve": {"model": str(serve[i][0]), "layers": serve[i][1]},
        "gossip": {"advert_interval_s": 1.0}})
    try:
        trio.run(net.start)
        trio.run(net.wait_converged, 90)
        yield SimpleNamespace(net=net, tmp=tmp, gpt=str(gpt), bert=str(bert), llama=str(llama))
    finally:
        net.stop()


@asynccontextmanager
async def api_node(env, name: str, **api):
    """A requester node in this process with the API on; yields (node, base URL)."""
    settings = {"listen": "127.0.0.1:0", "models": [env.gpt, env.bert], **api}
    cfg = node_config(env.tmp, name, boot=[env.net.peers[0].addrs[0]], api=settings)
    failure = None
    try:
        async with Node(cfg) as node, trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_api, node, cfg.api))
            await node.wait_for_route(env.gpt, timeout=60)
            await node.wait_for_route(env.bert, timeout=60)
            try:
                yield node, url
            except Exception as e:  # noqa: BLE001 - re-raised below, unwrapped
                failure = e
            nursery.cancel_scope.cancel()
    except BaseException:
        if failure is None:
            raise
    if failure is not None:
        raise failure


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


async def metric_values(url: str) -> dict[tuple[str, tuple], float]:
    async with httpx.AsyncClient() as h:
        text = (await h.get(f"{url}/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(values, name: str, **labels) -> float:
    return sum(v for (n, lab), v in values.items()
               if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))


async def test_openai_client_models_chat_stream_completion_embeddings_receipts_and_page(
        env, tmp_path):
    async with api_node(env, "api-a") as (node, url):
        c = client(url)
        models = await trio.to_thread.run_sync(c.models.list)
        by_id = {m.id: m for m in models.data}
        assert set(by_id) == {env.gpt, env.bert}
        route = by_id[env.gpt].model_extra["p2pinfer"]["route"]
        assert [h["layers"] for h in route] == [[1, 3], [3, 5]]

        # non-streamed chat: the text is what the node generates for the rendered prompt
        messages = [{"role": "system", "content": "w3 w4"}, {"role": "user", "content": "w5 w9"}]
        prompt = render_chat([ChatMessage(**m) for m in messages])
        want = await node.generate(prompt, model=env.gpt, max_new_tokens=8, temperature=0.0)
        request = {"model": env.gpt, "messages": messages, "max_tokens": 8, "temperature": 0}
        raw = await trio.to_thread.run_sync(
            lambda: c.chat.completions.with_raw_response.create(**request))
        chat = raw.parse()
        assert chat.choices[0].message.content == want.text
        assert chat.usage.completion_tokens == len(want.token_ids)
        body = json.loads(raw.http_response.text)
        receipt = body["p2pinfer"]["receipt"]
        assert receipt["route"] == route and receipt["requester"] == node.peer_id
        verify_receipt(receipt, request=request, response=body)

        # streamed chat: same text, the receipt in the last event
        stream_req = {**request, "stream": True}
        chunks = await trio.to_thread.run_sync(
            lambda: list(c.chat.completions.create(**stream_req)))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
            want.text
        events = [ch.model_dump() for ch in chunks]
        verify_receipt(chunks[-1].model_extra["p2pinfer"]["receipt"], request=stream_req,
                       response=events)

        # a completion cut at a stop sequence
        full = await node.generate("w5 w9 w13 w2", model=env.gpt, max_new_tokens=8,
                                   temperature=0.0)
        stop = full.text.split()[2]
        done = await trio.to_thread.run_sync(lambda: c.completions.create(
            model=env.gpt, prompt="w5 w9 w13 w2", max_tokens=8, temperature=0, stop=[stop]))
        assert done.choices[0].text == full.text[:full.text.index(stop)]
        assert done.choices[0].finish_reason == "stop"

        # embeddings (the client asks for base64 and decodes it)
        texts = ["w5 w9 w13", "w2 w7"]
        raw_emb = await trio.to_thread.run_sync(
            lambda: c.embeddings.with_raw_response.create(model=env.bert, input=texts))
        got = torch.tensor([d.embedding for d in raw_emb.parse().data])
        torch.testing.assert_close(got, await node.embed(texts, model=env.bert),
                                   atol=1e-5, rtol=1e-5)
        emb_body = json.loads(raw_emb.http_response.text)
        sent = json.loads(raw_emb.http_response.request.content)
        assert sent["encoding_format"] == "base64"  # what the official client asks for
        verify_receipt(emb_body["p2pinfer"]["receipt"], request=sent, response=emb_body)

        await _receipt_cli_checks(tmp_path, request, body, node.peer_id)
        await _status_page_check(env, url, receipt)


async def _receipt_cli_checks(tmp_path: Path, request: dict, body: dict, peer_id: str):
    req, resp = tmp_path / "req.json", tmp_path / "resp.json"
    req.write_text(json.dumps(request))
    resp.write_text(json.dumps(body))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    ok = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "p2pinfer", "receipt", "verify", str(resp), "--request", str(req),
         "--response", str(resp)], check=False, capture_output=True, text=True, timeout=120, env=env))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert peer_id in ok.stdout

    def verify(receipt_doc, response_doc) -> tuple[int, str]:
        """The same command, run in this process for speed."""
        (tmp_path / "r.json").write_text(json.dumps(receipt_doc))
        (tmp_path / "s.json").write_text(json.dumps(response_doc))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli_main(["receipt", "verify", str(tmp_path / "r.json"), "--request", str(req),
                           "--response", str(tmp_path / "s.json")])
        return rc, buf.getvalue()

    receipt = body["p2pinfer"]["receipt"]
    text = body["choices"][0]["message"]["content"]
    for i in range(len(text.encode())):
        changed = json.loads(json.dumps(body))
        raw = bytearray(text.encode())
        raw[i] ^= 0x01
        changed["choices"][0]["message"]["content"] = raw.decode("utf-8", "replace")
        rc, out = verify(receipt, changed)
        assert rc == 1 and "response digest" in out, (i, out)
    moved = json.loads(json.dumps(receipt))
    moved["route"][0]["layers"][1] += 1
    rc, out = verify(moved, body)
    assert rc == 1 and "signature" in out
    forged = json.loads(json.dumps(receipt))
    forged["signature"] = ("0" if forged["signature"][0] != "0" else "1") + forged["signature"][1:]
    rc, out = verify(forged, body)
    assert rc == 1 and "signature" in out
    (tmp_path / "garbage.json").write_text("{not json")
    assert cli_main(["receipt", "verify", str(tmp_path / "garbage.json")]) == 2


async def _status_page_check(env, url: str, receipt: dict):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium) for the status "
                    "page test")
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=8000", "--dump-dom", f"{url}/"],
        check=False, capture_output=True, text=True, timeout=180))
    dom = out.stdout
    assert "<tbody id=\"peers\">" in dom, out.stderr[-2000:]
    for peer in env.net.peers:
        assert f'data-peer="{peer.peer_id}"' in dom
    assert receipt["signature"] in dom  # the completed request's receipt is shown


async def test_sixteen_concurrent_streams_a_cancelled_stream_and_metrics(env):
    async with api_node(env, "api-b") as (node, url):
        prompts = ["w5 w9 w13", "w2 w7", "w11 w3 w8 w1", "w40"]
        want = {}
        for p in prompts:
            want[p] = (await node.generate(p, model=env.gpt, max_new_tokens=6,
                                           temperature=0.0)).text
        before = await metric_values(url)
        c = client(url)
        got: dict[int, str] = {}

        def one(i: int) -> None:
            stream = c.completions.create(model=env.gpt, prompt=prompts[i % 4], max_tokens=6,
                                          temperature=0, stream=True)
            got[i] = "".join(ch.choices[0].text for ch in stream if ch.choices)

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(partial(trio.to_thread.run_sync, one, i))
        assert {i: got[i] for i in range(16)} == {i: want[prompts[i % 4]] for i in range(16)}

        after = await metric_values(url)
        ok = {"endpoint": "completion", "model": env.gpt, "outcome": "ok"}
        assert total(after, "p2pinfer_api_requests_total", **ok) - total(
            before, "p2pinfer_api_requests_total", **ok) == 16
        tokens = 16 * 6
        assert total(after, "p2pinfer_api_tokens_out_total") - total(
            before, "p2pinfer_api_tokens_out_total") == tokens
        assert total(after, "p2pinfer_api_time_to_first_token_seconds_count") - total(
            before, "p2pinfer_api_time_to_first_token_seconds_count") == 16
        assert total(after, "p2pinfer_api_open_requests") == 0
        assert total(after, "p2pinfer_peer_rtt_ms") > 0  # peer series read from the node

        # a client that goes away mid-stream cancels its generation
        requester = Requester(node)
        async with httpx.AsyncClient(timeout=60) as h:
            async with h.stream("POST", f"{url}/v1/completions", json={
                    "model": env.gpt, "prompt": "w5 w9", "max_tokens": 50, "temperature": 0,
                    "stream": True}) as resp:
                seen = 0
                async for line in resp.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 2:
                        break
            with trio.fail_after(20):
                while True:
                    status = (await h.get(f"{url}/api/status")).json()
                    if not status["live"] and requester.open_sessions() == 0:
                        break
                    await trio.sleep(0.1)
        last = status["recent"][0]
        assert last["outcome"] == "cancelled" and last["tokens"] < 50
        # and the stage peers it ran through have closed its sessions and dropped their keys
        with trio.fail_after(30):
            while True:
                stages = [(await query_control(p.control_path, "status"))["inference"]
                          for p in env.net.peers]
                if all(s["stage_sessions"] == 0 and s["hop_keys"] == 0 for s in stages):
                    break
                await trio.sleep(0.2)
        assert sum(s["stage"]["counters"]["opened"] for s in stages) > 0
        values = await metric_values(url)
        assert total(values, "p2pinfer_api_requests_total", outcome="cancelled") == 1
        assert total(values, "p2pinfer_requester_open_sessions") == 0


async def test_errors_come_in_the_openai_shape_with_their_statuses(env):
    with pytest.raises(ConfigError, match="without a key"):
        check_listen(ApiSection(listen="0.0.0.0:8000"))
    async with api_node(env, "api-c", keys=["k-right"], max_concurrent=1, max_body_bytes=4096,
                        models=[env.gpt, env.bert, env.llama]) as (node, url):
        auth = {"Authorization": "Bearer k-right"}
        ok = {"model": env.gpt, "prompt": "w5 w9", "max_tokens": 2, "temperature": 0}
        async with httpx.AsyncClient(base_url=url, timeout=60) as h:
            async def post(body, headers=auth, path="/v1/completions", **kw):
                r = await h.post(path, json=body, headers=headers, **kw)
                return r.status_code, r.json()["error"] if r.status_code != 200 else r.json()

            assert (await post(ok, headers={}))[0] == 401
            status, err = await post(ok, headers={"Authorization": "Bearer k-wrong"})
            assert status == 401 and err["type"] == "authentication_error"
            assert (await h.get("/metrics")).status_code == 401
            assert (await post(ok))[0] == 200
            r = await h.post("/v1/completions", content=b"{oops", headers=auth)
            assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
            status, err = await post({**ok, "max_tokens": "2"})
            assert status == 400 and err["param"] == "max_tokens"
            status, err = await post({**ok, "n": 2})
            assert status == 400 and err["param"] == "n"
            status, err = await post({**ok, "prompt": " ".join(["w5"] * 70)})
            assert status == 400 and err["code"] == "context_length_exceeded"
            status, err = await post({**ok, "p2pinfer": {"mode": "fast"}})
            assert status == 400 and err["param"] == "p2pinfer.mode"
            status, err = await post({**ok, "model": "gpt-4"})
            assert status == 404 and err["code"] == "model_not_found"
            status, err = await post({**ok, "model": env.llama})
            assert status == 503 and "no route covers layers [1, 5)" in err["message"]
            status, err = await post({**ok, "prompt": "w5 " * 2000})
            assert status == 413
            status, err = await post({"model": env.gpt, "input": "w5"}, path="/v1/embeddings")
            assert status == 400 and "/v1/chat/completions" in err["message"]

            # one request at a time: a second one while a stream is open gets 429
            async with h.stream("POST", "/v1/completions", headers=auth, json={
                    **ok, "max_tokens": 60, "stream": True}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        break
                status, err = await post(ok)
                assert status == 429 and err["type"] == "rate_limit_error"
        with pytest.raises(openai.NotFoundError) as info:
            await trio.to_thread.run_sync(lambda: client(url, "k-right").completions.create(
                **{**ok, "model": "gpt-4"}))
        assert info.value.code == "model_not_found"
        with pytest.raises(openai.AuthenticationError):
            await trio.to_thread.run_sync(lambda: client(url, "k-wrong").models.list())

        # a serving peer's endpoint: metrics and status only
        async with trio.open_nursery() as nursery:
            only = await nursery.start(partial(serve_api, node, ApiSection(
                listen="127.0.0.1:0", metrics_only=True)))
            async with httpx.AsyncClient(base_url=only, timeout=60) as h:
                assert (await h.get("/v1/models")).status_code == 404
                assert "p2pinfer_peer_rtt_ms" in (await h.get("/metrics")).text
            nursery.cancel_scope.cancel()
