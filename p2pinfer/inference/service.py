"""The node's inference service: serves a span if configured, and answers requests.

One handler owns `/p2pinfer/stage/1.0.0`: an `open` naming a stage of the route goes to the
`StageServer`; an `open` for the hop after the last stage of a task this node signed is its
result hop and goes to the waiting `InferenceClient` session.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
import trio

from p2pinfer.config import RequestSettings
from p2pinfer.errors import ConfigError, P2PInferError
from p2pinfer.inference.client import (
    Backoff,
    InferenceClient,
    InferenceError,
    RequestOutcome,
    RouteConversation,
    RouteSession,
    RouteTrust,
    check_settings,
    settings_with,
)
from p2pinfer.inference.critical import CriticalClient, ProvenConversation, critical_runner
from p2pinfer.inference.hop import HopCodec, PlainHop
from p2pinfer.inference.placement import choose_span, should_move
from p2pinfer.inference.redundancy import ConsensusRunner, ConsensusService
from p2pinfer.inference.stage import (
    STAGE_PROTOCOL,
    FloatRunner,
    StageServer,
    StageSettings,
    StepRunner,
)
from p2pinfer.inference.task import Task, TaskError
from p2pinfer.inference.testing import WEIGHT_FAULTS, FaultyRunner, alter_weights
from p2pinfer.models import LayerSpan, Tokenizer, load_model_info, weights_digest
from p2pinfer.models.byte_vocab import ByteVocabulary
from p2pinfer.models.errors import ModelError
from p2pinfer.models.sampling import Sampler, SamplingParams
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.net.streams import FramedStream
from p2pinfer.zk.checkpoint import is_provable

log = logging.getLogger(__name__)

#: an auto peer checks its placement every few seconds for this long after it (re)places itself
SETTLE_FAST_S = 60.0


async def _cancellable(fn: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run `fn()` under a cancel scope handed back through `nursery.start`."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await fn()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(name_or_path: str) -> Path:
    """A model directory, or the name of a built-in default model (created on first use)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    from p2pinfer.models import default_models
    from p2pinfer.zk.builtins import builtin_model_path

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
    def __init__(self, node: PeerNetwork, *, hop: HopCodec | None = None,
                 trust: RouteTrust | None = None) -> None:
        self.node = node
        self.config = node.config
        self.hop: HopCodec = hop or PlainHop()
        #: tokenizers by model path (`tokenizer()`)
        self._tokenizers: dict[str, Tokenizer | ByteVocabulary] = {}
        #: verified TEE levels and rejected peers (attestation), when the node runs it
        self.trust = trust
        self.stage: StageServer | None = None
        #: requester clients, one per model and settings (shared by concurrent requests)
        self.clients: dict[str, InferenceClient] = {}
        #: the requester's open route sessions by task id (their result hops land here)
        self.sessions: dict[bytes, RouteSession] = {}
        defaults = self.config.inference
        #: peers that failed a request of this node, backed off for all its requests
        self.backoff = Backoff(defaults.ban_base_s, defaults.ban_max_s)
        #: route sessions this node's requests have open, per peer (the planner spreads load)
        self.placed: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None
        #: the served stage's own cancel scope (an auto peer that moves stops the old one)
        self._stage_scope: trio.CancelScope | None = None
        #: votes, fetches, audits, CDV and reputation (redundant general-mode tasks)
        self.consensus = ConsensusService(node, hop=self.hop, served_span=self._served_span)

    def _served_span(self) -> LayerSpan | None:
        return self.stage.span if self.stage is not None else None

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
            start, end = choose_span(self._others_spans(info), *self._auto_range(info),
                                     serve.span_layers)
        else:
            start, end = serve.layers
            if end > info.num_layers:
                raise ConfigError(f"{where}: key 'serve.layers': [{start}, {end}) exceeds the "
                                  f"{info.num_layers} layers of {info.model_id}")
        if serve.threads:
            torch.set_num_threads(serve.threads)
        await self._serve_span(nursery, path, start, end)
        nursery.start_soon(self._report_load)
        if serve.layers == "auto":
            nursery.start_soon(self._settle, nursery, path, info)

    def _auto_range(self, info: Any) -> tuple[int, int]:
        """The layers requesters ask the network for by default: [k_head, layers - k_tail)."""
        inf = self.config.inference
        lo, hi = inf.k_head, info.num_layers - inf.k_tail
        return (lo, hi) if lo < hi else (0, info.num_layers)

    def _others_spans(self, info: Any) -> list[tuple[int, int]]:
        return [tuple(s) for _, s in self._others_placed(info)]

    def _others_placed(self, info: Any) -> list[tuple[str, tuple[int, int]]]:
        return [(p.peer_id, (int(s[0]), int(s[1]))) for p in self.node.peers()
                if p.model == info.model_id and p.peer_id != self.node.peer_id for s in p.spans]

    async def _settle(self, nursery: trio.Nursery, path: Path, info: Any) -> None:
        """An auto peer moves while some layer is uncovered and its own layers are served by
        others too (`placement.should_move`); never while it has sessions open. Checks every
        few seconds at first (peers started together settle within seconds), then every
        advert interval."""
        lo, hi = self._auto_range(info)
        interval = max(0.5, min(3.0, self.config.gossip.advert_interval_s))
        started = trio.current_time()
        while True:
            fast = trio.current_time() - started < SETTLE_FAST_S
            await trio.sleep(interval if fast else self.config.gossip.advert_interval_s)
            stage = self.stage
            if stage is None or stage.sessions:
                continue
            mine = (stage.span.start, stage.span.end)
            others = self._others_placed(info)
            if not should_move(mine, self.node.peer_id, others, lo, hi):
                continue
            start, end = choose_span([sp for _, sp in others], lo, hi,
                                     self.config.serve.span_layers)
            if (start, end) == mine:
                continue
            log.info("moving from layers [%d, %d) to [%d, %d): nobody serves layers there",
                     mine[0], mine[1], start, end)
            await self._serve_span(nursery, path, start, end)
            started = trio.current_time()  # look closely again while the others settle

    async def _serve_span(self, nursery: trio.Nursery, path: Path, start: int, end: int) -> None:
        """Load layers [start, end), serve them, advertise them; a span served before is
        stopped once the new one is up (its sessions, if any, end with it)."""
        serve = self.config.serve
        info = load_model_info(path)
        span = await trio.to_thread.run_sync(LayerSpan.load, path, start, end, DTYPES[serve.dtype])
        if serve.fault_injection in WEIGHT_FAULTS:  # TEST-ONLY (refused in production)
            alter_weights(span, serve.fault_injection)
        tput = await trio.to_thread.run_sync(measure_throughput, span)
        runners = {"general": self._general_runner(serve.fault_injection)}
        critical = await trio.to_thread.run_sync(critical_runner, self.node, span, path)
        if critical is not None:
            runners["critical"] = critical
        stage = StageServer(self.node, span, hop=self.hop, settings=StageSettings(
            session_ttl_s=serve.session_ttl_s, max_sessions=serve.max_sessions),
            runners=runners, consensus=self.consensus)
        scope = await nursery.start(_cancellable, stage.run)
        old, self._stage_scope = self._stage_scope, scope
        self.stage = stage
        if old is not None:
            old.cancel()
        # what the file holds, not what is in memory: requesters route only to peers whose
        # stored weights for the span equal their own copy's
        digest = await trio.to_thread.run_sync(weights_digest, path, start, end)
        # and critical requesters only to peers proving against their own copy of the manifest
        manifest = critical.manifest_tag if critical is not None else ""
        self.node.update_advert(model=info.model_id, spans=((start, end),), throughput=tput,
                                precision=serve.dtype, weights=(digest,), manifest=manifest)
        log.info("serving %s layers [%d, %d) at %.1f tokens/s", info.model_id, start, end, tput)

    def _general_runner(self, fault: str) -> StepRunner:
        """General mode runs the float layers through the consensus runner (claims, votes on
        the input); a TEST-ONLY fault kind wraps them in a runner that cheats that way."""
        inner: StepRunner = FloatRunner()
        if fault and fault not in WEIGHT_FAULTS:
            log.warning("TEST-ONLY fault injection %r: this peer cheats on purpose", fault)
            inner = FaultyRunner(inner, fault, self.consensus)
        return ConsensusRunner(inner, self.consensus)

    async def _report_load(self) -> None:
        last = -1.0
        while True:
            await trio.sleep(2.0)
            if self.stage is not None and abs(self.stage.load - last) >= 0.1:
                last = self.stage.load
                self.node.update_advert(load=last)

    def status(self) -> dict[str, Any]:
        """Open sessions on both sides and live hop keys (zero when nothing is in flight: no
        leaked caches or channel keys), and the stage's counters."""
        out: dict[str, Any] = {
            "requester_sessions": len(self.sessions),
            "stage_sessions": len(self.stage.sessions) if self.stage is not None else 0,
            "hop_keys": self.hop.live_hops,
        }
        if self.stage is not None:
            out["stage"] = {"layers": [self.stage.span.start, self.stage.span.end],
                            "cache_bytes": self.stage.cache_bytes(),
                            "counters": dict(self.stage.counters)}
        return out

    # -- the stage protocol --------------------------------------------------------------------
    async def handle(self, up: FramedStream, upstream: str) -> None:
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
        session = self.sessions.get(task.task_id)
        if session is None:
            raise InferenceError("no session on this requester matches the task")
        return session.client

    # -- requester side ------------------------------------------------------------------------
    def _collaborators(self) -> dict[str, Any]:
        if self._nursery is None:
            raise P2PInferError("the inference service is not running")
        return {"hop": self.hop, "consensus": self.consensus, "trust": self.trust,
                "sessions": self.sessions, "backoff": self.backoff, "placed": self.placed,
                "spawn": self._nursery.start_soon}

    async def tokenizer(self, path: str) -> Tokenizer | ByteVocabulary:
        """The tokenizer of the model at `path`, loaded once per service (a GGUF tokenizer is
        converted on first use, seconds: off the event loop). A provable feature model has
        none: it gets the byte vocabulary its critical client embeds tokens with."""
        if path not in self._tokenizers:
            if is_provable(path):
                info = load_model_info(path)
                self._tokenizers[path] = ByteVocabulary(info.model_id, info.hidden_size)
            else:
                self._tokenizers[path] = await trio.to_thread.run_sync(Tokenizer.load, path)
        return self._tokenizers[path]

    def request_client(self, model: str, settings: RequestSettings) -> InferenceClient:
        """The client a request with `settings` runs on: critical mode gets the model's
        critical client (proven steps), any other mode the plain client."""
        if settings.mode == "critical":
            return self.critical_client(model, _client_key(settings))
        return self.client(model, _client_key(settings))

    def client(self, model: str, settings: RequestSettings | None = None) -> InferenceClient:
        """An inference client for `model` (a directory or built-in name) with `settings` as
        its defaults, cached per model and settings."""
        collaborators = self._collaborators()
        path = str(resolve_model(model))
        settings = check_settings(settings or self.default_settings())
        key = f"{path}|{settings!r}"
        if key not in self.clients:
            self.clients[key] = InferenceClient(self.node, path, settings, **collaborators)
        return self.clients[key]

    def critical_client(self, model: str, settings: RequestSettings | None = None, *,
                        manifest: bytes | None = None) -> InferenceClient:
        """A critical-mode client for a provable `model`, cached per model, settings and
        manifest."""
        collaborators = self._collaborators()
        path = str(resolve_model(model))
        settings = check_settings(settings or self.default_settings())
        key = f"critical|{path}|{settings!r}|{manifest.hex() if manifest else ''}"
        if key not in self.clients:
            self.clients[key] = CriticalClient(self.node, path, settings, manifest=manifest,
                                               **collaborators)
        return self.clients[key]

    async def wait_for_route(self, model: str, timeout: float,
                             settings: RequestSettings | None = None) -> list[Any]:
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

    def default_settings(self) -> RequestSettings:
        """The node's `[inference]` section: every request's defaults."""
        return self.config.inference


# -- the calls a user makes (through Node or the CLI) ----------------------------------------------
@dataclass
class TokenEvent:
    """One generated token and the text it adds (may be "" while a word is incomplete)."""

    token_id: int
    text: str


@dataclass
class Generation:
    """One generation: its text and tokens, the route, what was verified, timings, privacy."""

    prompt: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    route: list[dict[str, Any]]
    #: re-plans of this request
    replans: int
    seconds: float
    privacy: dict[str, float] | None = None
    random_weights: bool = False
    #: what was verified: stages, replicas, votes, dissenters, audits, CDV flags, bans
    verification: dict[str, Any] | None = None
    mode: str = "general"
    #: seconds in all, to the first token, per network step
    timings: dict[str, Any] = field(default_factory=dict)
    #: the model's own layers run on this machine: [0, k_head) and [end, layers)
    local_layers: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    #: token positions sent through the route (a chat turn: its new tokens only)
    tokens_sent: int = 0
    #: a chat turn: positions of earlier turns the route's caches already held
    tokens_reused: int = 0
    #: what the user may want to know that is no failure (e.g. a fresh route session)
    notes: list[str] = field(default_factory=list)
    #: critical mode: every stage's verified proof of every step (`StageProof` as a dict,
    #: with the step's token position)
    proofs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Embeddings:
    """One embedding request: a vector per text, and per text its route and verification."""

    vectors: torch.Tensor
    routes: list[list[dict[str, Any]]]
    verification: list[dict[str, Any] | None]
    replans: int
    seconds: float
    privacy: dict[str, float] | None = None


def _is_random(model: str) -> bool:
    from p2pinfer.models import default_models

    return any(m.name == model and m.random_weights for m in default_models())


async def token_events(tok: Tokenizer | ByteVocabulary, tokens: AsyncIterator[int], out: list[int]
                       ) -> AsyncIterator[TokenEvent]:
    """Each new token of `tokens` (appended to `out`) with the text it adds: the decoded text
    grows as words complete, so a piece may be empty."""
    shown = ""
    async for t in tokens:
        out.append(t)
        text = tok.decode(out)
        piece, shown = text.removeprefix(shown), text
        yield TokenEvent(t, piece)


def generation_of(prompt: str, model: str, client: InferenceClient, text: str,
                  token_ids: list[int], prompt_tokens: int, o: RequestOutcome) -> Generation:
    """The `Generation` a finished (or stopped) request describes, from its own outcome."""
    start, end = client.middle
    return Generation(
        prompt=prompt, text=text, token_ids=token_ids, prompt_tokens=prompt_tokens,
        route=o.route_dicts(), replans=o.replans, seconds=o.seconds, privacy=o.privacy,
        random_weights=_is_random(model), verification=o.verification(), mode=o.mode,
        timings=o.timings(), local_layers=((0, start), (end, client.info.num_layers)),
        tokens_sent=o.tokens_sent, tokens_reused=o.tokens_reused, notes=list(o.notes),
        proofs=[asdict(p) for p in o.proofs])


class GenerationStream:
    """The token events of one generation as they come; once the iteration ended, `result`
    is the request's `Generation` (route, verification, timings)."""

    def __init__(self, service: InferenceService, prompt: str, model: str, *,
                 max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                 settings: RequestSettings) -> None:
        self._service, self._prompt, self._model = service, prompt, model
        self._max_new_tokens, self._settings = max_new_tokens, settings
        self._sampling = (temperature, top_p, seed)
        self._events = self._run()
        self.result: Generation | None = None

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TokenEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def _run(self) -> AsyncIterator[TokenEvent]:
        if self._max_new_tokens < 1:
            raise InferenceError("max_new_tokens must be at least 1")
        client = self._service.request_client(self._model, self._settings)
        tok = await self._service.tokenizer(client.head_path)
        ids = tok.encode(self._prompt)
        temperature, top_p, seed = self._sampling
        sampler = Sampler(SamplingParams(temperature=temperature, top_p=top_p, seed=seed))
        stream = client.generate(ids, self._max_new_tokens, sampler, stop_ids=tok.eos_ids,
                                 settings=self._settings)
        out: list[int] = []
        try:
            async for event in token_events(tok, stream, out):
                yield event
            await settle_report(stream.outcome, TALLY_SETTLE_S)
        finally:
            # also when the caller stopped early (a stop sequence, a client gone): the route
            # sessions close now, and `result` describes what was produced
            with trio.move_on_after(10) as scope:
                scope.shield = True
                await stream.aclose()
            self.result = generation_of(self._prompt, self._model, client, tok.decode(out),
                                        out, len(ids), stream.outcome)


class ChatStream:
    """The token events of one chat turn as they come; once the iteration ended, `result` is
    the turn's `Generation` (its `prompt` is the user's message). The answer, whole or cut
    short, joins the conversation's messages when the stream ends."""

    def __init__(self, chat: Conversation, text: str, max_new_tokens: int) -> None:
        self._chat, self._text, self._max_new_tokens = chat, text, max_new_tokens
        self._events = self._run()
        self.result: Generation | None = None

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> TokenEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def _run(self) -> AsyncIterator[TokenEvent]:
        chat = self._chat
        tok, client = chat.tokenizer, chat.client
        if tok is None:
            raise InferenceError("the conversation is not open (use `async with`)")
        messages = [*chat.messages, {"role": "user", "content": self._text}]
        ids = tok.apply_chat_template(messages)
        stream = chat.conversation.turn(ids, self._max_new_tokens, chat.sampler,
                                        stop_ids=tok.stop_ids)
        before, chat.messages = chat.messages, messages
        out: list[int] = []
        try:
            async for event in token_events(tok, stream, out):
                yield event
        except BaseException:
            if not out:  # nothing was answered: the message is not part of the conversation
                chat.messages = before
                raise
            chat.messages.append({"role": "assistant", "content": tok.decode(out).strip()})
            raise
        chat.messages.append({"role": "assistant", "content": tok.decode(out).strip()})
        self.result = generation_of(self._text, chat.model, client, tok.decode(out), out,
                                    len(ids), stream.outcome)


class Conversation:
    """A multi-turn chat with a model through the network, formatted with the model's chat
    template: the route session and its KV caches hold the earlier turns, so each turn sends
    only its own new tokens. Use as an async context manager; `send(text)` streams one answer,
    `reset()` starts over."""

    def __init__(self, service: InferenceService, model: str, *, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int | None, system: str | None,
                 settings: RequestSettings) -> None:
        if max_new_tokens < 1:
            raise InferenceError("max_new_tokens must be at least 1")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.system = system
        self._service = service
        self.client = service.request_client(model, settings)
        self.sampler = Sampler(SamplingParams(temperature=temperature, top_p=top_p, seed=seed))
        self.conversation: RouteConversation | ProvenConversation = self.client.conversation(
            settings)
        self.messages: list[dict[str, str]] = self._start()
        self.tokenizer: Tokenizer | ByteVocabulary | None = None

    def _start(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    async def __aenter__(self) -> Self:
        tok = await self._service.tokenizer(self.client.head_path)
        if tok.chat_template is None:
            raise InferenceError(f"{self.model} has no chat template; use generate() with a "
                                 "prompt")
        self.tokenizer = tok
        await self.conversation.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conversation.__aexit__(*exc)

    def send(self, text: str, *, max_new_tokens: int | None = None) -> ChatStream:
        """Stream the answer to one user message (`TokenEvent`s; `result` once it ended)."""
        if not text.strip():
            raise InferenceError("the message is empty")
        return ChatStream(self, text, max_new_tokens or self.max_new_tokens)

    async def ask(self, text: str, *, max_new_tokens: int | None = None) -> Generation:
        """The whole answer to one user message."""
        stream = self.send(text, max_new_tokens=max_new_tokens)
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    async def reset(self) -> None:
        """Forget every turn (the system message stays); the route session closes."""
        self.messages = self._start()
        await self.conversation.reset()


def conversation(
    service: InferenceService,
    *,
    model: str,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    system: str | None = None,
    settings: RequestSettings | None = None,
    redundancy: int | None = None,
    mode: str | None = None,
) -> Conversation:
    """A multi-turn chat with `model` (an async context manager)."""
    s = request_settings(service, settings, redundancy=redundancy, mode=mode)
    return Conversation(service, model, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, seed=seed, system=system, settings=s)


class OneShotChat:
    """`chat_stream`: one turn of a fresh conversation; `result` once the iteration ended."""

    def __init__(self, chat: Conversation, messages: list[dict[str, str]]) -> None:
        self._chat, self._messages = chat, messages
        self._events = self._run()
        self.result: Generation | None = None

    def __aiter__(self) -> OneShotChat:
        return self

    async def __anext__(self) -> TokenEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def _run(self) -> AsyncIterator[TokenEvent]:
        if not self._messages or self._messages[-1].get("role") != "user":
            raise InferenceError("chat messages must end with a user message")
        async with self._chat as chat:
            chat.messages = list(self._messages[:-1])
            stream = chat.send(self._messages[-1].get("content", ""))
            async for ev in stream:
                yield ev
            self.result = stream.result


def chat_stream(service: InferenceService, messages: list[dict[str, str]], *, model: str,
                **kw: Any) -> OneShotChat:
    """Stream the answer to `messages` ([{"role", "content"}, ... ending with the user's])."""
    return OneShotChat(conversation(service, model=model, **kw), list(messages))


async def chat(service: InferenceService, messages: list[dict[str, str]], *, model: str,
               **kw: Any) -> Generation:
    """The whole answer to `messages`, with its route, verification and timings."""
    stream = chat_stream(service, messages, model=model, **kw)
    async for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


#: how long a finished redundant request waits for the votes on its inner stages
TALLY_SETTLE_S = 3.0


async def settle_report(outcome: RequestOutcome, limit: float) -> None:
    """Wait (at most `limit` seconds) until every stage has votes in the request's report.
    Votes are tallied a grace period after their majority, so that late replicas still count:
    the requester's own tally of the last stage, and the next stage's replicas' tallies of each
    inner stage (by gossip), come a moment after the last token of a short request."""
    report = outcome.report
    if report is None or report.redundancy < 2:
        return
    with trio.move_on_after(limit):
        while any(st.votes == 0 for st in report.stages):
            await trio.sleep(0.05)


def _client_key(settings: RequestSettings) -> RequestSettings:
    """The settings a client is cached under: only what its local layers depend on varies."""
    return RequestSettings(k_head=settings.k_head, k_tail=settings.k_tail,
                           ban_base_s=settings.ban_base_s, ban_max_s=settings.ban_max_s)


def request_settings(service: InferenceService, settings: RequestSettings | None = None,
                     **overrides: Any) -> RequestSettings:
    """The node's defaults (or `settings`) with per-request overrides; None keeps a key."""
    return settings_with(settings or service.default_settings(), **overrides)


def generate_stream(
    service: InferenceService,
    prompt: str,
    *,
    model: str,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    settings: RequestSettings | None = None,
    redundancy: int | None = None,
    mode: str | None = None,
) -> GenerationStream:
    """Stream tokens of a distributed generation as they arrive; the stream's `result` is
    the whole `Generation` once it ended. `redundancy` and `mode` override the settings for
    this request (m replicas per stage; "general" or "critical")."""
    s = request_settings(service, settings, redundancy=redundancy, mode=mode)
    return GenerationStream(service, prompt, model, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, seed=seed, settings=s)


async def generate(service: InferenceService, prompt: str, *, model: str, **kw: Any) -> Generation:
    """Run a whole distributed generation and describe it."""
    stream = generate_stream(service, prompt, model=model, **kw)
    async for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


async def embed(
    service: InferenceService, texts: str | list[str], *, model: str,
    settings: RequestSettings | None = None, redundancy: int | None = None,
) -> Embeddings:
    """Sentence embeddings [n, H] of `texts`, each computed through the network."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise InferenceError("nothing to embed")
    s = request_settings(service, settings, redundancy=redundancy)
    client = service.client(model, _client_key(s))
    tok = await service.tokenizer(client.head_path)
    t0 = time.perf_counter()
    rows, routes, reports, replans, privacy = [], [], [], 0, None
    for text in items:
        done = await client.embed(tok.encode(text), settings=s)
        rows.append(done.vector.reshape(-1))
        routes.append(done.outcome.route_dicts())
        reports.append(done.outcome.verification())
        replans += done.outcome.replans
        privacy = done.outcome.privacy or privacy
    return Embeddings(torch.stack(rows), routes, reports, replans, time.perf_counter() - t0,
                      privacy)
