"""The node's inference service: serves a span if configured, and answers requests.

One handler owns `/p2pinfer/stage/1.0.0`: an `open` naming a stage of the route goes to the
`StageServer`; an `open` for the hop after the last stage of a task this node signed is its
result hop and goes to the waiting `InferenceClient` session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import trio

from p2pinfer.errors import ConfigError, P2PInferError
from p2pinfer.inference.client import ClientSettings, InferenceClient, InferenceError
from p2pinfer.inference.hop import HopCodec, PlainHop
from p2pinfer.inference.planner import least_covered_span
from p2pinfer.inference.stage import STAGE_PROTOCOL, StageServer, StageSettings
from p2pinfer.inference.task import Task, TaskError
from p2pinfer.models import LayerSpan, load_model_info
from p2pinfer.models.errors import ModelError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(name_or_path: str) -> Path:
    """A model directory, or the name of a built-in default model (created on first use)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    from p2pinfer.models import default_models
    from p2pinfer.zk.checkpoint import builtin_model_path

    names = {m.name for m in default_models()}
    if name_or_path in names:
        return builtin_model_path(name_or_path)
    raise ModelError(f"model {name_or_path!r} is neither a directory nor a built-in model "
                     f"({', '.join(sorted(names))})")


def measure_throughput(span: LayerSpan, tokens: int = 8, repeats: int = 3) -> float:
    """Tokens per second through the whole span, one decode-sized step at a time."""
    h = torch.zeros(1, 1, span.info.hidden_size, dtype=span.dtype)
    best = float("inf")
    for _ in range(repeats):
        cache = span.new_cache()
        t0 = time.perf_counter()
        for pos in range(tokens):
            span.forward(h, cache, pos if cache is not None else 0)
        best = min(best, (time.perf_counter() - t0) / tokens)
        if cache is not None:
            cache.erase()
    return 1.0 / best if best > 0 else 0.0


class InferenceService:
    def __init__(self, node: Any, *, hop: HopCodec | None = None) -> None:
        self.node = node
        self.config = node.config
        self.hop = hop or PlainHop()
        self.stage: StageServer | None = None
        self.clients: dict[str, InferenceClient] = {}
        self._nursery: trio.Nursery | None = None
        #: the client of the last generation (its route and verification report)
        self.last_client: InferenceClient | None = None
        from p2pinfer.inference.redundancy import ConsensusService

        #: votes, fetches, audits, CDV and reputation (redundant general-mode tasks)
        self.consensus = ConsensusService(node)

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.node.set_handler(STAGE_PROTOCOL, self.handle, streaming=True)
            await nursery.start(self.consensus.run)
            if self.config.serve.model:
                await self._start_serving(nursery)
            task_status.started()
            await trio.sleep_forever()

    async def _start_serving(self, nursery: trio.Nursery) -> None:
        serve = self.config.serve
        where = self.config.source or "<config>"
        if serve.dtype not in DTYPES:
            raise ConfigError(f"{where}: key 'serve.dtype': {serve.dtype!r} is not one of "
                              f"{', '.join(DTYPES)}")
        path = await trio.to_thread.run_sync(resolve_model, serve.model)
        info = load_model_info(path)
        if serve.layers == "auto":
            await trio.sleep(min(3.0, self.config.gossip.advert_interval_s))  # hear others first
            served = [s for p in self.node.peers() if p.model == info.model_id for s in p.spans]
            length = serve.span_layers or max(1, info.num_layers // 2)
            start, end = least_covered_span(served, info.num_layers, length)
        else:
            start, end = serve.layers
            if end > info.num_layers:
                raise ConfigError(f"{where}: key 'serve.layers': [{start}, {end}) exceeds the "
                                  f"{info.num_layers} layers of {info.model_id}")
        if serve.threads:
            torch.set_num_threads(serve.threads)
        span = await trio.to_thread.run_sync(LayerSpan.load, path, start, end, DTYPES[serve.dtype])
        if serve.fault_injection == "wrong-weights":  # TEST-ONLY (refused in production)
            from p2pinfer.inference.redundancy import corrupt_weights

            corrupt_weights(span)
        tput = await trio.to_thread.run_sync(measure_throughput, span)
        self.stage = StageServer(self.node, span, hop=self.hop, settings=StageSettings(
            session_ttl_s=serve.session_ttl_s, max_sessions=serve.max_sessions))
        self._install_consensus(self.stage, serve.fault_injection)
        from p2pinfer.inference.critical import install_critical

        await trio.to_thread.run_sync(install_critical, self.stage, path)
        nursery.start_soon(self.stage.run)
        self.node.update_advert(model=info.model_id, spans=((start, end),), throughput=tput,
                                precision=serve.dtype)
        nursery.start_soon(self._report_load)
        log.info("serving %s layers [%d, %d) at %.1f tokens/s", info.model_id, start, end, tput)

    def _install_consensus(self, stage: StageServer, fault: str) -> None:
        """General mode runs through the consensus runner (claims, votes on the input); a
        TEST-ONLY fault kind wraps the float layers in a runner that cheats that way."""
        from p2pinfer.inference.redundancy import ConsensusRunner, FaultyRunner

        inner = stage.runners["general"]
        if fault and fault != "wrong-weights":
            log.warning("TEST-ONLY fault injection %r: this peer cheats on purpose", fault)
            inner = FaultyRunner(inner, fault, self.consensus)
        stage.runners["general"] = ConsensusRunner(inner, self.consensus)
        stage.consensus = self.consensus

    async def _report_load(self) -> None:
        last = -1.0
        while True:
            await trio.sleep(2.0)
            if self.stage is not None and abs(self.stage.load - last) >= 0.1:
                last = self.stage.load
                self.node.update_advert(load=last)

    # -- the stage protocol --------------------------------------------------------------------
    async def handle(self, up: Any, upstream: str) -> None:
        msg = await up.recv(expect={"open"})
        task = Task.from_wire(msg.get("task", dict))
        stage = msg.get("stage", int)
        if stage == len(task.route) and task.requester == self.node.peer_id:
            client = self._client_for_task(task)
            await client.accept_result_hop(up, upstream, task)
            return
        if self.stage is None:
            raise TaskError("this peer serves no layers")
        await self.stage.handle(up, upstream, task, stage)

    def _client_for_task(self, task: Task) -> InferenceClient:
        for client in self.clients.values():
            if task.task_id in client.sessions:
                return client
        raise InferenceError("no session on this requester matches the task")

    # -- requester side ------------------------------------------------------------------------
    def client(self, model: str, settings: ClientSettings | None = None) -> InferenceClient:
        """An inference client for `model` (a directory or built-in name), cached per model."""
        if self._nursery is None:
            raise P2PInferError("the inference service is not running")
        path = str(resolve_model(model))
        key = f"{path}|{settings!r}"
        if key not in self.clients:
            c = InferenceClient(self.node, path, settings or self.default_settings(), hop=self.hop)
            c.spawn = self._nursery.start_soon
            self.clients[key] = c
        return self.clients[key]

    async def wait_for_route(self, model: str, timeout: float,
                             settings: ClientSettings | None = None) -> list[Any]:
        """Wait until peers serving `model` cover a route; `NoRouteError` after `timeout`."""
        from p2pinfer.inference.planner import NoRouteError

        client = self.client(model, settings)
        with trio.move_on_after(timeout):
            while True:
                try:
                    return client.plan()
                except NoRouteError:
                    await trio.sleep(0.25)
        return client.plan()  # raises the NoRouteError that says what is missing

    def default_settings(self) -> ClientSettings:
        inf = self.config.inference
        return ClientSettings(
            k_head=inf.k_head, k_tail=inf.k_tail, redundancy=inf.redundancy, mode=inf.mode,
            step_timeout_s=inf.step_timeout_s, max_replans=inf.max_replans,
            allow=list(inf.allow) or None, deny=list(inf.deny), min_tee=inf.min_tee,
            noise_sigma=inf.noise_sigma, noise_clip=inf.noise_clip,
        )


# -- the calls a user makes (through Node or the CLI) ----------------------------------------------
@dataclass
class TokenEvent:
    """One generated token and the text it adds (may be "" while a word is incomplete)."""

    token_id: int
    text: str


@dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    route: list[dict[str, Any]]
    replans: int
    seconds: float
    privacy: dict[str, float] | None = None
    random_weights: bool = False
    #: what was verified: stages, replicas, votes, dissenters, audits, CDV flags, bans
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _route_dict(client: InferenceClient) -> list[dict[str, Any]]:
    return [{"layers": [s.start, s.end], "peers": list(s.replicas)} for s in client.last_route]


async def generate_stream(
    service: InferenceService,
    prompt: str,
    *,
    model: str,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    settings: ClientSettings | None = None,
    redundancy: int | None = None,
    mode: str | None = None,
) -> AsyncIterator[TokenEvent]:
    """Stream tokens of a distributed generation as they arrive. `redundancy` and `mode`
    override the settings for this request (m replicas per stage; "general" or "critical")."""
    from dataclasses import replace

    from p2pinfer.models import Tokenizer
    from p2pinfer.models.sampling import Sampler, SamplingParams

    if max_new_tokens < 1:
        raise InferenceError("max_new_tokens must be at least 1")
    if redundancy is not None or mode is not None:
        if redundancy is not None and not 1 <= redundancy <= 9:
            raise InferenceError("redundancy must be between 1 and 9 peers per stage")
        base = settings or service.default_settings()
        settings = replace(base, redundancy=redundancy or base.redundancy, mode=mode or base.mode)
    client = service.client(model, settings)
    service.last_client = client
    tok = await trio.to_thread.run_sync(Tokenizer.load, client.head_path)
    ids = tok.encode(prompt)
    sampler = Sampler(SamplingParams(temperature=temperature, top_p=top_p, seed=seed))
    out: list[int] = []
    shown = ""
    async for t in client.generate(ids, max_new_tokens, sampler, stop_ids=tok.eos_ids):
        out.append(t)
        text = tok.decode(out)
        piece, shown = text[len(shown):] if text.startswith(shown) else text, text
        yield TokenEvent(t, piece)


async def generate(service: InferenceService, prompt: str, *, model: str, **kw: Any) -> Generation:
    """Run a whole distributed generation and describe it."""
    from p2pinfer.models import Tokenizer, default_models

    t0 = time.perf_counter()
    ids: list[int] = []
    async for ev in generate_stream(service, prompt, model=model, **kw):
        ids.append(ev.token_id)
    client = service.last_client or service.client(model, kw.get("settings"))
    tok = await trio.to_thread.run_sync(Tokenizer.load, client.head_path)
    random_weights = any(m.name == model and m.random_weights for m in default_models())
    return Generation(
        prompt=prompt, text=tok.decode(ids), token_ids=ids, prompt_tokens=len(tok.encode(prompt)),
        route=_route_dict(client), replans=client.replans, seconds=time.perf_counter() - t0,
        privacy=client.privacy, random_weights=random_weights,
        verification=client.last_report.to_dict() if client.last_report is not None else None,
    )


async def embed(
    service: InferenceService, texts: str | list[str], *, model: str,
    settings: ClientSettings | None = None,
) -> torch.Tensor:
    """Sentence embeddings [n, H] of `texts`, each computed through the network."""
    from p2pinfer.models import Tokenizer

    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise InferenceError("nothing to embed")
    client = service.client(model, settings)
    tok = await trio.to_thread.run_sync(Tokenizer.load, client.head_path)
    rows = []
    for text in items:
        rows.append((await client.embed(tok.encode(text))).reshape(-1))
    return torch.stack(rows)
