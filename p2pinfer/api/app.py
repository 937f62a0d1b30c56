"""The HTTP API: a Starlette app served by Hypercorn's trio worker inside the node's nursery.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
`POST /v1/embeddings` (OpenAI's shapes, errors included), `GET /metrics` (Prometheus),
`GET /` (the status page) and `GET /api/status` (the JSON it polls). Every answer carries a
receipt signed by this node (`"p2pinfer": {"receipt": ...}`; for streams in the last event
before `[DONE]`), see protocols/receipt.md.

A stream whose client goes away is cancelled: the generation's iterator is closed, which ends
the request's route sessions on every stage.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from p2pinfer.api.errors import (
    ApiError,
    BadRequest,
    BodyTooLarge,
    ModelNotFound,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from p2pinfer.api.metrics import CONTENT_TYPE, ApiMetrics
from p2pinfer.api.receipt import response_outputs, sha256_hex, sign_receipt
from p2pinfer.api.requests import Requester, RequestResult, json_safe, peer_standing
from p2pinfer.api.schema import (
    EmbeddingRequest,
    SamplingRequest,
    parse_chat,
    parse_completion,
    parse_embeddings,
)
from p2pinfer.config import ApiSection, NodeConfig, is_loopback_host
from p2pinfer.errors import ConfigError
from p2pinfer.node import Node, NodeService

log = logging.getLogger(__name__)

#: the default number of new tokens of a chat completion without max_tokens (bounded by the
#: model's context)
DEFAULT_MAX_TOKENS = 128


# -- stop sequences ------------------------------------------------------------------------------
class StopScanner:
    """Releases generated text as it becomes safe to send: text that could still be the start
    of a stop sequence is held back; at a stop sequence the text ends before it."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.stops:
            start = max(0, self.sent - self.hold)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                self.text = self.text[:end]
                self.stopped = True
                return self.flush()
        safe = len(self.text) - self.hold
        if safe <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


# -- per-app state -------------------------------------------------------------------------------
@dataclass
class LiveRequest:
    request_id: str
    kind: str
    model: str
    started: float
    tokens: int = 0


@dataclass
class ApiState:
    node: Node
    settings: ApiSection
    requester: Requester
    metrics: ApiMetrics
    recent: deque[dict[str, Any]]
    live: dict[str, LiveRequest] = field(default_factory=dict)
    keys: tuple[bytes, ...] = ()

    def check_key(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self.keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise Unauthorized("missing or wrong API key (send 'Authorization: Bearer KEY')")

    def admit(self) -> None:
        if len(self.live) >= self.settings.max_concurrent:
            self.metrics.rejected.labels("busy").inc()
            raise TooManyRequests(f"this node serves at most {self.settings.max_concurrent} "
                                  "requests at once; retry shortly")

    def offered(self, model: str) -> None:
        if model not in self.settings.models:
            raise ModelNotFound(f"model {model!r} is not offered here (offered: "
                                f"{', '.join(self.settings.models) or 'none'})", param="model")


def _state(request: Request) -> ApiState:
    return request.app.state.api


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refused before parsing when larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"request body over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"request body over the limit of {limit} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e})") from None


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
    """Answers an `ApiError` raised by `handler` in the OpenAI error shape."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            if isinstance(e, Unauthorized):
                _state(request).metrics.rejected.labels("unauthorized").inc()
            return _error_response(e)
        except Exception:  # a bug must not take the server down with it
            log.exception("internal error answering %s %s", request.method, request.url.path)
            return _error_response(ApiError("internal error; see the node's log"))

    return wrapped


# -- server-sent events --------------------------------------------------------------------------
class EventStream(StreamingResponse):
    """A text/event-stream response that cancels its producer when the client disconnects,
    always closes the producer's iterator, and then runs `cleanup` (shielded), even when the
    client was gone before the first event."""

    def __init__(self, events: AsyncIterator[bytes],
                 cleanup: Callable[[], Awaitable[None]]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"cache-control": "no-cache"})
        self.events = events
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with trio.open_nursery() as nursery:
                async def watch() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(watch)
                try:
                    await send({"type": "http.response.start", "status": self.status_code,
                                "headers": self.raw_headers})
                    async with aclosing(self.events) as events:
                        async for chunk in events:
                            await send({"type": "http.response.body", "body": chunk,
                                        "more_body": True})
                    await send({"type": "http.response.body", "body": b"",
                                "more_body": False})
                except OSError:
                    pass  # the client went away between events
                nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(5) as cleanup_scope:
                cleanup_scope.shield = True
                await self.cleanup()


def sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


# -- the endpoints -------------------------------------------------------------------------------
async def list_models(request: Request) -> Response:
    st = _state(request)
    st.check_key(request)
    data = []
    for name in st.settings.models:
        try:
            info = st.requester.model_info(name)
            route = await st.requester.route(name)
        except ApiError:
            continue  # not loadable here or no complete route now
        data.append({
            "id": name, "object": "model", "created": int(st.node.started_at),
            "owned_by": "p2pinfer",
            "p2pinfer": {"model_id": info.model_id, "kind": info.kind,
                         "num_layers": info.num_layers, "context": info.max_positions,
                         "local_layers": [[0, info.local_head],
                                          [info.num_layers - info.local_tail, info.num_layers]],
                         "route": [h.to_dict() for h in route], "modes": ["general"]},
        })
    return JSONResponse({"object": "list", "data": data})


def _receipt(st: ApiState, *, kind: str, request_id: str, model: str, raw_body: Any,
             outputs: dict[str, Any], result: RequestResult,
             timings: dict[str, float]) -> dict[str, Any]:
    body = {
        "kind": kind, "network_id": st.node.network_id, "issued_at_ms": int(time.time() * 1000),
        "request_id": request_id, "model": model, "model_id": result.model_id,
        "request_sha256": sha256_hex(raw_body), "response_sha256": sha256_hex(outputs),
        "mode": result.mode, "route": [h.to_dict() for h in result.route],
        "verification": result.verification, "privacy": json_safe(result.privacy),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    return sign_receipt(st.node.identity, body)


def _record(st: ApiState, live: LiveRequest, outcome: str, receipt: dict[str, Any] | None,
            timings: dict[str, float]) -> None:
    st.recent.appendleft({
        "id": live.request_id, "kind": live.kind, "model": live.model,
        "started": round(live.started, 3), "outcome": outcome, "tokens": live.tokens,
        "timings": {k: round(v, 3) for k, v in timings.items()}, "receipt": receipt,
    })


class Completion:
    """One chat or text completion request, from parsed body to answer."""

    def __init__(self, st: ApiState, req: SamplingRequest, raw_body: Any, kind: str) -> None:
        self.st, self.req, self.raw_body, self.kind = st, req, raw_body, kind
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.request_id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.live = LiveRequest(self.request_id, kind, req.model, time.time())
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.scanner = StopScanner(req.stop)
        self.outcome = "error"
        self.closed = False

    @property
    def mode(self) -> str:
        return self.req.options.mode or self.st.node.config.inference.mode

    async def start(self) -> Any:
        """Check the model and its context; returns the generation, not started yet."""
        st, req = self.st, self.req
        info = st.requester.model_info(req.model)
        if req.messages:  # a chat: the model's own template where it has one
            prompt = await st.requester.chat_prompt(req.model, req.messages)
            req = self.req = dataclasses.replace(req, prompt=prompt)
        max_tokens = req.max_tokens
        if max_tokens is None:
            used = await st.requester.count_tokens(req.model, req.prompt)
            max_tokens = max(1, min(DEFAULT_MAX_TOKENS, info.max_positions - used))
        self.max_tokens = max_tokens
        return st.requester.generation(
            req.model, req.prompt, max_tokens=max_tokens, temperature=req.temperature,
            top_p=req.top_p, seed=req.seed, options=req.options)

    def note_token(self) -> None:
        now = time.perf_counter()
        m = self.st.metrics
        if self.first is None:
            self.first = now
            m.ttft.labels(self.req.model).observe(now - self.t0)
        elif self.last is not None:
            m.token_latency.labels(self.req.model).observe(now - self.last)
        self.last = now
        self.live.tokens += 1

    def timings(self, result: RequestResult | None) -> dict[str, float]:
        end = time.perf_counter()
        n = len(result.token_ids) if result is not None else self.live.tokens
        t = {"total_ms": (end - self.t0) * 1000, "tokens_out": float(n)}
        if result is not None:
            t["tokens_in"] = float(result.prompt_tokens)
        if self.first is not None:
            t["ttft_ms"] = (self.first - self.t0) * 1000
            if n > 1 and self.last is not None:
                t["per_token_ms"] = (self.last - self.first) * 1000 / (n - 1)
        return t

    def finish_reason(self, result: RequestResult) -> str:
        if self.scanner.stopped or len(result.token_ids) < self.max_tokens:
            return "stop"
        return "length"

    def finished(self, result: RequestResult) -> None:
        m = self.st.metrics
        m.tokens_in.labels(self.req.model).inc(result.prompt_tokens)
        m.tokens_out.labels(self.req.model).inc(len(result.token_ids))
        m.count_verification(result.verification)
        self.outcome = "ok"

    def usage(self, result: RequestResult) -> dict[str, int]:
        n = len(result.token_ids)
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n,
                "total_tokens": result.prompt_tokens + n}

    def choice(self, text: str, reason: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            return {"index": 0, "message": {"role": "assistant", "content": text},
                    "finish_reason": reason, "logprobs": None}
        return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}

    def chunk(self, text: str | None, reason: str | None, *, first: bool = False,
              ) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            obj = "text_completion"
        return {"id": self.request_id, "object": obj, "created": self.created,
                "model": self.req.model, "choices": [choice]}

    def close(self, receipt: dict[str, Any] | None, result: RequestResult | None) -> None:
        if self.closed:
            return
        self.closed = True
        st = self.st
        st.live.pop(self.request_id, None)
        st.metrics.open_requests.set(len(st.live))
        st.metrics.requests.labels(self.kind, self.req.model, self.mode, self.outcome).inc()
        _record(st, self.live, self.outcome, receipt, self.timings(result))

    async def abandon(self, pieces: AsyncIterator[Any]) -> None:
        """After a stream, however it ended: the generation is closed (its route sessions
        end) and the request is recorded, also when no event was ever sent."""
        await pieces.aclose()  # type: ignore[attr-defined]
        if not self.closed:
            self.outcome = "cancelled"
            self.close(None, None)

    # -- answers ---------------------------------------------------------------------------
    async def answer(self, generation: Any) -> Response:
        text_parts = []
        async with aclosing(generation.pieces()) as pieces:
            async for piece in pieces:
                self.note_token()
                text_parts.append(self.scanner.feed(piece.text))
                if self.scanner.stopped:
                    break
        text_parts.append(self.scanner.flush())
        result = generation.result()
        self.finished(result)
        reason = self.finish_reason(result)
        body = {"id": self.request_id,
                "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.req.model,
                "choices": [self.choice("".join(text_parts), reason)],
                "usage": self.usage(result)}
        timings = self.timings(result)
        receipt = _receipt(self.st, kind=self.kind, request_id=self.request_id,
                           model=self.req.model, raw_body=self.raw_body,
                           outputs=response_outputs(body), result=result, timings=timings)
        body["p2pinfer"] = {"receipt": receipt}
        self.close(receipt, result)
        return JSONResponse(body)

    async def stream(self, generation: Any, pieces: AsyncIterator[Any],
                     first: Any) -> AsyncIterator[bytes]:
        """The events of a streamed answer; `first` is the already received first piece."""
        receipt = result = None
        text = []
        try:
            if self.kind == "chat":
                yield sse(self.chunk(None, None, first=True))
            async with aclosing(pieces):
                piece = first
                while piece is not None:
                    out = self.scanner.feed(piece.text)
                    if out:
                        text.append(out)
                        yield sse(self.chunk(out, None))
                    if self.scanner.stopped:
                        break
                    try:
                        piece = await pieces.__anext__()
                    except StopAsyncIteration:
                        piece = None
                    else:
                        self.note_token()
            tail = self.scanner.flush()
            if tail:
                text.append(tail)
                yield sse(self.chunk(tail, None))
            result = generation.result()
            self.finished(result)
            reason = self.finish_reason(result)
            yield sse(self.chunk(None if self.kind == "chat" else "", reason))
            outputs = {"kind": self.kind, "model": self.req.model, "outputs": ["".join(text)],
                       "finish_reasons": [reason]}
            receipt = _receipt(self.st, kind=self.kind, request_id=self.request_id,
                               model=self.req.model, raw_body=self.raw_body, outputs=outputs,
                               result=result, timings=self.timings(result))
            last = {"id": self.request_id, "object": self.chunk(None, None)["object"],
                    "created": self.created, "model": self.req.model, "choices": [],
                    "p2pinfer": {"receipt": receipt}}
            if self.req.include_usage:
                last["usage"] = self.usage(result)
            yield sse(last)
            yield sse("[DONE]")
        except ApiError as e:  # after the headers: the error travels as an event
            self.outcome = "error"
            yield sse(e.body())
        except trio.Cancelled:
            self.outcome = "cancelled"
            raise
        except GeneratorExit:
            self.outcome = "cancelled"
            raise
        finally:
            self.close(receipt, result)


async def _completion(request: Request, kind: str) -> Response:
    st = _state(request)
    st.check_key(request)
    raw = await read_json(request, st.settings.max_body_bytes)
    req = parse_chat(raw) if kind == "chat" else parse_completion(raw)
    st.offered(req.model)  # before any series is labelled with the name
    st.admit()
    c = Completion(st, req, raw, kind)
    st.live[c.request_id] = c.live
    st.metrics.open_requests.set(len(st.live))
    handed_over = False
    try:
        generation = await c.start()
        if not req.stream:
            response = await c.answer(generation)
            handed_over = True  # answer() closed the request
            return response
        pieces = generation.pieces()
        try:
            first = await pieces.__anext__()
            c.note_token()
        except StopAsyncIteration:
            first = None
        except BaseException:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await pieces.aclose()
            raise
        handed_over = True  # the stream closes the request when it ends
        return EventStream(c.stream(generation, pieces, first), partial(c.abandon, pieces))
    finally:
        if not handed_over:
            c.close(None, None)


@endpoint
async def chat_completions(request: Request) -> Response:
    return await _completion(request, "chat")


@endpoint
async def completions(request: Request) -> Response:
    return await _completion(request, "completion")


@endpoint
async def embeddings(request: Request) -> Response:
    st = _state(request)
    st.check_key(request)
    raw = await read_json(request, st.settings.max_body_bytes)
    req: EmbeddingRequest = parse_embeddings(raw)
    st.offered(req.model)
    st.admit()
    live = LiveRequest(f"emb-{secrets.token_hex(12)}", "embedding", req.model, time.time())
    st.live[live.request_id] = live
    st.metrics.open_requests.set(len(st.live))
    t0 = time.perf_counter()
    outcome, receipt, timings = "error", None, {}
    mode = req.options.mode or st.node.config.inference.mode
    try:
        vectors, result = await st.requester.embed(req.model, list(req.inputs), req.options)
        data = []
        for i, row in enumerate(vectors):
            emb: Any = row
            if req.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        body: dict[str, Any] = {
            "object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": result.prompt_tokens,
                      "total_tokens": result.prompt_tokens}}
        timings = {"total_ms": (time.perf_counter() - t0) * 1000,
                   "tokens_in": float(result.prompt_tokens)}
        st.metrics.tokens_in.labels(req.model).inc(result.prompt_tokens)
        st.metrics.count_verification(result.verification)
        receipt = _receipt(st, kind="embedding", request_id=live.request_id, model=req.model,
                           raw_body=raw, outputs=response_outputs(body), result=result,
                           timings=timings)
        body["p2pinfer"] = {"receipt": receipt}
        outcome = "ok"
        return JSONResponse(body)
    finally:
        st.live.pop(live.request_id, None)
        st.metrics.open_requests.set(len(st.live))
        st.metrics.requests.labels("embedding", req.model, mode, outcome).inc()
        _record(st, live, outcome, receipt, timings)


@endpoint
async def metrics(request: Request) -> Response:
    st = _state(request)
    st.check_key(request)
    return Response(st.metrics.render(), media_type=CONTENT_TYPE)


@endpoint
async def status_json(request: Request) -> Response:
    st = _state(request)
    st.check_key(request)
    node = st.node
    peers, coverage = [], {}
    for p in node.peers():
        standing = peer_standing(node, p.peer_id)
        peers.append({
            "peer_id": p.peer_id, "model": p.model, "spans": [list(s) for s in p.spans],
            "roles": list(p.roles), "precision": p.advert.precision or None,
            "rtt_ms": round(p.rtt_ms, 2) if p.rtt_ms is not None else None,
            "load": round(float(p.load), 3), **standing})
        if p.model and p.spans:
            coverage.setdefault(p.model, []).extend(
                {"peer_id": p.peer_id, "start": a, "end": b} for a, b in p.spans)
    now = time.time()
    live = [{"id": r.request_id, "kind": r.kind, "model": r.model, "tokens": r.tokens,
             "age_s": round(now - r.started, 2)} for r in st.live.values()]
    return JSONResponse({
        "node": {"peer_id": node.peer_id, "network_id": node.network_id,
                 "addrs": node.addrs, "uptime_s": round(now - node.started_at, 1)},
        "peers": peers,
        "coverage": [{"model_id": m, "spans": spans} for m, spans in sorted(coverage.items())],
        "live": live, "recent": list(st.recent)})


async def status_page(request: Request) -> Response:
    page = resources.files("p2pinfer.api").joinpath("status.html").read_text("utf-8")
    return HTMLResponse(page, headers={"cache-control": "no-cache"})


async def not_found(request: Request, exc: Exception) -> Response:
    return _error_response(NotFound(f"no endpoint {request.method} {request.url.path}"))


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    err = NotFound(f"{request.method} is not allowed on {request.url.path}")
    err.status = 405
    return _error_response(err)


def build_app(node: Node, settings: ApiSection) -> Starlette:
    """The API's ASGI app for `node` (not yet listening)."""
    requester = Requester(node)
    metrics_collector = ApiMetrics()
    metrics_collector.watch_node(node.peers, node.status, requester.open_sessions)
    routes = [Route("/metrics", metrics, methods=["GET"]),
              Route("/", status_page, methods=["GET"]),
              Route("/api/status", status_json, methods=["GET"])]
    if not settings.metrics_only:
        routes += [
            Route("/v1/models", endpoint(list_models), methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.api = ApiState(
        node=node, settings=settings, requester=requester, metrics=metrics_collector,
        recent=deque(maxlen=settings.recent_requests),
        keys=tuple(k.encode() for k in settings.keys))
    return app


def check_listen(settings: ApiSection) -> tuple[str, int]:
    """The host and port to bind; refuses a non-loopback address without a key."""
    host, _, port = settings.listen.rpartition(":")
    if not settings.keys and not is_loopback_host(host):
        raise ConfigError(f"refusing to serve the API on {host} without a key: set api.keys "
                          "or listen on 127.0.0.1")
    return host.strip("[]"), int(port)


async def serve_api(node: Node, settings: ApiSection, *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API until cancelled. `task_status.started` gets the base URL
    (`http://host:port`, the real port when the config asks for port 0)."""
    host, port = check_listen(settings)
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = 30.0
    config.h11_max_incomplete_size = 64 * 1024
    app = build_app(node, settings)
    async with trio.open_nursery() as nursery:
        # hypercorn serves until this task is cancelled (the node's nursery closing): its
        # listeners and open connections are closed with it
        binds = await nursery.start(partial(hypercorn_serve, app, config))
        task_status.started(binds[0])


def node_services(config: NodeConfig) -> list[NodeService]:
    """The services above the node that `config` turns on, for `Node(config, services=...)`:
    the HTTP API when `[api] enabled` (its base URL lands in `node.service_info`)."""
    if not config.api.enabled:
        return []
    check_listen(config.api)  # a refused address fails before the node starts
    return [partial(serve_api, settings=config.api)]
