"""The one place the HTTP API meets the node's requester: runs a request through the embedding
API (`Node.generate_stream`, `Node.embed`, `Node.wait_for_route`) and describes the finished
request as a `RequestResult` (tokens, route, mode, verification report).

Route, verification and privacy come from each request's own result value (the node's
`Generation` or `Embeddings`), so concurrent requests never describe each other. Every other
module of `p2pinfer.api` depends only on the types declared here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from p2pinfer.api.chat import ChatMessage, render_chat
from p2pinfer.api.errors import (
    BadRequest,
    ContextLengthExceeded,
    GenerationFailed,
    ModelNotFound,
    NoRouteAvailable,
)
from p2pinfer.api.schema import P2PInferOptions
from p2pinfer.errors import P2PInferError
from p2pinfer.inference.client import ClientSettings, InferenceClient, PromptTooLong
from p2pinfer.inference.planner import NoRouteError
from p2pinfer.inference.service import GenerationStream
from p2pinfer.models import Tokenizer
from p2pinfer.models.errors import ModelError
from p2pinfer.node import Node


@dataclass(frozen=True)
class RouteHop:
    """One stage of a route: the layers [start, end) and the replicas that computed them."""

    layers: tuple[int, int]
    peers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "peers": list(self.peers)}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_id: str
    kind: str  # "generation" or "embedding"
    num_layers: int
    max_positions: int
    #: layers the requester runs itself: [0, k_head) and [num_layers - k_tail, num_layers)
    local_head: int
    local_tail: int


@dataclass
class RequestResult:
    """What one finished request produced and how."""

    model_id: str
    mode: str
    route: list[RouteHop]
    verification: dict[str, Any] | None
    prompt_tokens: int
    token_ids: list[int] = dataclasses.field(default_factory=list)
    privacy: dict[str, float] | None = None


@dataclass(frozen=True)
class TokenPiece:
    token_id: int
    text: str


def json_safe(value: Any) -> Any:
    """A verification report as plain JSON values (bytes as hex, sets sorted)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(json_safe(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    return str(value)


class Requester:
    """Runs API requests through one node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    # -- models ----------------------------------------------------------------------------
    def _settings(self, options: P2PInferOptions) -> ClientSettings:
        base = self.node.inference.default_settings()
        changes = {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
        return dataclasses.replace(base, **changes) if changes else base

    def _client(self, model: str, options: P2PInferOptions) -> InferenceClient:
        try:
            return self.node.inference.client(model, self._settings(options))
        except ModelError as e:
            raise ModelNotFound(f"model {model!r} is not available here ({e})") from None
        except P2PInferError as e:  # e.g. k_head + k_tail larger than the model
            raise BadRequest(str(e)) from None

    def model_info(self, model: str) -> ModelInfo:
        client = self._client(model, P2PInferOptions())
        info = client.info
        return ModelInfo(name=model, model_id=info.model_id,
                         kind="generation" if info.is_decoder else "embedding",
                         num_layers=info.num_layers, max_positions=info.max_positions,
                         local_head=client.settings.k_head, local_tail=client.settings.k_tail)

    async def route(self, model: str, options: P2PInferOptions | None = None, *,
                    timeout: float = 0.0) -> list[RouteHop]:
        """The route a request would take now; `NoRouteAvailable` naming what is missing."""
        options = options or P2PInferOptions()
        self._client(model, options)
        try:
            if options == P2PInferOptions():
                plan = await self.node.wait_for_route(model, timeout=timeout)
            else:
                plan = self._client(model, options).plan()
        except NoRouteError as e:
            raise NoRouteAvailable(str(e)) from None
        return [RouteHop((s.start, s.end), tuple(s.replicas)) for s in plan]

    async def tokenizer(self, model: str) -> Tokenizer:
        path = self._client(model, P2PInferOptions()).head_path
        return await self.node.inference.tokenizer(path)

    async def chat_prompt(self, model: str, messages: Sequence[ChatMessage]) -> str:
        """The text `messages` become for `model`: its own chat template, else the fallback
        of `p2pinfer.api.chat`."""
        tok = await self.tokenizer(model)
        if tok.chat_template is None:
            return render_chat(list(messages))
        try:
            return tok.render_chat([{"role": m.role, "content": m.content} for m in messages])
        except ModelError as e:  # a role or sequence the template refuses
            raise BadRequest(str(e), param="messages") from None

    async def count_tokens(self, model: str, text: str) -> int:
        return len((await self.tokenizer(model)).encode(text))

    def open_sessions(self) -> int:
        """Route sessions the requester holds open now (all models)."""
        return sum(len(c.sessions) for c in self.node.inference.clients.values())

    def _result(self, client: InferenceClient, prompt_tokens: int, token_ids: list[int],
                route: list[dict[str, Any]], verification: dict[str, Any] | None,
                privacy: dict[str, float] | None) -> RequestResult:
        return RequestResult(
            model_id=client.info.model_id, mode=client.settings.mode,
            route=[RouteHop((int(r["layers"][0]), int(r["layers"][1])), tuple(r["peers"]))
                   for r in route],
            verification=json_safe(verification) if verification is not None else None,
            prompt_tokens=prompt_tokens, token_ids=list(token_ids), privacy=privacy)

    # -- requests --------------------------------------------------------------------------
    def generation(self, model: str, prompt: str, *, max_tokens: int, temperature: float,
                   top_p: float, seed: int | None, options: P2PInferOptions) -> Generation:
        return Generation(self, model, prompt, max_tokens=max_tokens, temperature=temperature,
                          top_p=top_p, seed=seed, options=options)

    async def embed(self, model: str, texts: list[str],
                    options: P2PInferOptions) -> tuple[list[list[float]], RequestResult]:
        client = self._client(model, options)
        if client.info.is_decoder:
            raise BadRequest(f"model {model!r} generates text; use /v1/chat/completions",
                             param="model")
        try:
            done = await self.node.embeddings(texts, model=model, settings=client.settings)
        except PromptTooLong as e:
            raise ContextLengthExceeded(str(e)) from None
        except NoRouteError as e:
            raise NoRouteAvailable(str(e)) from None
        except P2PInferError as e:
            raise GenerationFailed(str(e)) from None
        tok = await self.tokenizer(model)
        used = sum(len(tok.encode(t)) for t in texts)
        rows = [[float(x) for x in row] for row in done.vectors.tolist()]
        # one route per text: the receipt names every hop that computed any of them, and each
        # text's verification under "texts"
        hops: list[dict[str, Any]] = []
        for route in done.routes:
            hops.extend(h for h in route if h not in hops)
        verification = {"texts": done.verification} if any(done.verification) else None
        return rows, self._result(client, used, [], hops, verification, done.privacy)


class Generation:
    """One generation: iterate `pieces()` once, then read `result()`. Leaving the iteration
    early (a client gone, a stop sequence) closes the node's stream, which ends the request's
    route sessions."""

    def __init__(self, requester: Requester, model: str, prompt: str, *, max_tokens: int,
                 temperature: float, top_p: float, seed: int | None,
                 options: P2PInferOptions) -> None:
        self.requester = requester
        self.model = model
        self.prompt = prompt
        self.kw = {"max_new_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                       "seed": seed}
        self.options = options
        self.client = requester._client(model, options)
        if not self.client.info.is_decoder:
            raise BadRequest(f"model {model!r} is an embedding model; use /v1/embeddings",
                             param="model")
        self.token_ids: list[int] = []
        self.prompt_tokens = 0
        self._stream: GenerationStream | None = None

    async def pieces(self) -> AsyncIterator[TokenPiece]:
        node = self.requester.node
        self.prompt_tokens = await self.requester.count_tokens(self.model, self.prompt)
        stream = node.generate_stream(self.prompt, model=self.model,
                                      settings=self.client.settings, **self.kw)
        self._stream = stream
        try:
            async for ev in stream:
                self.token_ids.append(ev.token_id)
                yield TokenPiece(ev.token_id, ev.text)
        except PromptTooLong as e:
            raise ContextLengthExceeded(str(e)) from None
        except NoRouteError as e:
            raise NoRouteAvailable(str(e)) from None
        except P2PInferError as e:
            raise GenerationFailed(str(e)) from None
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await stream.aclose()

    def result(self) -> RequestResult:
        """How this request was made: its own route and verification (a generation left early
        has no final result; its route is then unknown and reported empty)."""
        done = self._stream.result if self._stream is not None else None
        if done is None:
            return self.requester._result(self.client, self.prompt_tokens, self.token_ids, [],
                                          None, None)
        return self.requester._result(self.client, self.prompt_tokens, self.token_ids,
                                      done.route, done.verification, done.privacy)


def peer_standing(node: Node, peer_id: str) -> dict[str, Any]:
    """What the requester knows of a peer beyond its advert: verified TEE level, reputation,
    whether it is banned."""
    consensus = node.inference.consensus if node.inference is not None else None
    tee = node.attestation.tee_level(peer_id) if node.attestation is not None else "none"
    if consensus is None:
        return {"tee": tee, "reputation": None, "banned": False}
    return {"tee": tee, "reputation": round(float(consensus.book.score(peer_id)), 3),
            "banned": peer_id in consensus.banned()}
