"""The requester side: plan a route, run the head and tail locally, drive sessions, recover.

U-shaped split learning: the requester runs the embeddings and the first `k_head` layers and the
last `k_tail` layers with the LM head (or pooling) itself, so raw tokens and output logits never
leave it; peers only see boundary activations. Per token the requester pushes one activation to
stage 0 and receives the last stage's output on its result hop.

One attempt loop serves every kind of request (generation, embedding, critical inference):
plan, sign, open, step, blame, close, back off, re-plan, replay. What differs between task modes
(the task's options, the dtype on the wire, how an answer is checked, what runs locally) is a
`ModeStrategy`. Everything a request learns (its route, verification report, proofs, privacy
cost, re-plans, timings) lives in its own `RequestOutcome`; the client itself is shared by
concurrent requests and holds nothing per request.

Fault tolerance: a `fault` relayed from the route, a dead hop, or a step that misses its deadline
marks the faulty peer (found by the fault's attribution, or by pinging every peer of the route);
that peer is backed off with exponential delay, the middle layers are re-planned without it, and
the session's history (prompt and tokens generated so far) is replayed as one prefill to rebuild
every cache. With greedy decoding the text equals a failure-free run.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Self

import torch
import trio

from p2pinfer.config import RequestSettings
from p2pinfer.consensus import FingerprintError, precision_class
from p2pinfer.errors import ConfigError, P2PInferError, RemoteError
from p2pinfer.inference.hop import HopCodec, HopContext, PlainHop
from p2pinfer.inference.planner import TEE_ORDER, Candidate, NoRouteError, PlanRequest, plan_route
from p2pinfer.inference.stage import ensure_connected
from p2pinfer.inference.task import StagePlan, Task
from p2pinfer.models import ClientHead, ClientTail, KVCache, weights_digest
from p2pinfer.models.errors import ModelError
from p2pinfer.net.adverts import Advert
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.net.streams import FramedStream
from p2pinfer.wire import ACTIVATION_DTYPES, EndOfStream

log = logging.getLogger(__name__)

#: the request settings under their older name
ClientSettings = RequestSettings


class InferenceError(P2PInferError):
    """A request could not be completed; the message says why and what to do."""


class PromptTooLong(InferenceError):
    pass


class StageFailure(InferenceError):
    """One stage of a route failed; `peer_id` is the peer blamed (None if unknown)."""

    def __init__(self, stage: int | None, peer_id: str | None, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.peer_id = peer_id
        #: when no one peer can be blamed (a step timed out and every peer of the route still
        #: answers pings): the route's peers, all backed off so the re-plan avoids the staller
        self.suspects: tuple[str, ...] = ()


def check_settings(settings: RequestSettings) -> RequestSettings:
    """The settings, validated; a bad value is an `InferenceError` naming the key."""
    try:
        return settings.validate("request", "settings")
    except ConfigError as e:
        raise InferenceError(str(e)) from None


class Backoff:
    """Failing peers are excluded for base * 2^(failures-1) seconds, capped; a success forgets
    a peer's failures."""

    def __init__(self, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic):
        self.base_s, self.max_s, self.clock = base_s, max_s, clock
        self.failures: dict[str, int] = {}
        self.until: dict[str, float] = {}

    def fail(self, peer_id: str) -> float:
        n = self.failures.get(peer_id, 0) + 1
        self.failures[peer_id] = n
        delay = min(self.max_s, self.base_s * 2 ** (n - 1))
        self.until[peer_id] = self.clock() + delay
        return delay

    def succeed(self, peer_id: str) -> None:
        self.failures.pop(peer_id, None)
        self.until.pop(peer_id, None)

    def excluded(self) -> set[str]:
        now = self.clock()
        return {p for p, t in self.until.items() if t > now}


# -- what one request returns ---------------------------------------------------------------------
@dataclass
class RequestOutcome:
    """Everything one request learned on the way, owned by that request alone."""

    mode: str
    #: the route of the attempt that produced the answer (empty when every layer ran locally)
    route: list[StagePlan] = field(default_factory=list)
    #: general mode: the `VerificationReport` of that attempt (votes, audits, CDV, bans)
    report: Any = None
    #: critical mode: one verified `StageProof` per stage
    proofs: list[Any] = field(default_factory=list)
    replans: int = 0
    #: the (epsilon, delta) cost of boundary noise, when noise is on
    privacy: dict[str, float] | None = None
    #: failures that cost a re-plan, one line each
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    #: seconds from the start to the first result (first token)
    first_s: float | None = None
    #: seconds per network step (one per token for a generation)
    step_s: list[float] = field(default_factory=list)
    #: token positions this request sent through the route (a conversation's turn: only its
    #: new tokens, unless the route was rebuilt and the history replayed)
    tokens_sent: int = 0
    #: a conversation's turn: positions already in the route's caches that it reused
    tokens_reused: int = 0
    #: events worth telling the user that are not failures (a conversation's fresh route)
    notes: list[str] = field(default_factory=list)

    def route_dicts(self) -> list[dict[str, Any]]:
        return [{"layers": [s.start, s.end], "peers": list(s.replicas)} for s in self.route]

    def verification(self) -> dict[str, Any] | None:
        return self.report.to_dict() if self.report is not None else None

    def timings(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4),
                "first_s": round(self.first_s, 4) if self.first_s is not None else None,
                "step_s": [round(s, 4) for s in self.step_s]}

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self.started


@dataclass
class StepResult:
    seq: int
    hidden: torch.Tensor
    #: the step message's other fields (what the last stage attached, e.g. proofs)
    fields: dict[str, Any] = field(default_factory=dict)
    #: the last-stage replica that sent it
    peer: str = ""
    claimed: bool = False


class ConsensusSide(Protocol):
    """What the requester needs of the node's consensus service (votes, audits, CDV)."""

    tally_window_s: float

    def banned(self) -> set[str]: ...
    def open_report(self, task: Task, redundancy: int) -> Any: ...
    def forget_task(self, task_id: bytes) -> None: ...
    def late_result(self, peer: str, fields: dict[str, Any]) -> None: ...
    async def vote_results(self, task: Task, seq: int, results: dict[str, Any],
                           more: Callable[[], Awaitable[bool]]) -> torch.Tensor: ...
    def observe_result(self, task: Task, peer: str, hidden: torch.Tensor,
                       verified: bool) -> None: ...
    async def audit_prefill(self, task: Task, sent: torch.Tensor,
                            candidates: Sequence[Candidate]) -> None: ...
    def route_tolerance(self, route: Sequence[StagePlan]) -> float: ...


class RouteTrust(Protocol):
    """What the planner needs of the node's attestation service: verified TEE levels only;
    rejected peers are never candidates."""

    def routable(self, peer_id: str) -> bool: ...
    def tee_level(self, peer_id: str) -> str: ...
    def min_level(self, mode: str) -> str: ...


class ModeStrategy(Protocol):
    """What differs between task modes on the requester."""

    mode: str
    #: what the last stage sends back (a dtype name or a tuple of accepted names)
    wire_dtype: str | tuple[str, ...]

    def task_options(self, route: Sequence[StagePlan]) -> dict[str, Any]: ...

    async def check(self, session: RouteSession, sent: torch.Tensor, result: StepResult) -> None:
        """Check the route's answer before use; raise `StageFailure` naming the peer to reject
        it; record what was verified in `session.outcome`."""

    async def after_prefill(self, session: RouteSession, sent: torch.Tensor,
                            result: torch.Tensor) -> None: ...


class GeneralStrategy:
    """General mode: redundant stages vote (the client's voted step); with one replica, CDV and
    random audits after the prefill."""

    mode = "general"
    wire_dtype: str | tuple[str, ...] = ACTIVATION_DTYPES

    def __init__(self, client: InferenceClient, settings: RequestSettings) -> None:
        self.client, self.settings = client, settings

    def task_options(self, route: Sequence[StagePlan]) -> dict[str, Any]:
        consensus = self.client.consensus
        tol = self.settings.tolerance or (
            consensus.route_tolerance(route) if consensus is not None else 0.0)
        options: dict[str, Any] = {"tolerance": float(tol)} if tol else {}
        if self.settings.commit_before_seed and any(len(s.replicas) > 1 for s in route):
            options["sealed"] = True
        return options

    async def check(self, session: RouteSession, sent: torch.Tensor, result: StepResult) -> None:
        return None

    async def after_prefill(self, session: RouteSession, sent: torch.Tensor,
                            result: torch.Tensor) -> None:
        consensus = self.client.consensus
        if consensus is None:
            return
        task = session.task
        if len(task.route[-1].replicas) == 1:
            consensus.observe_result(task, task.route[-1].replicas[0], result, False)
        if self.settings.audits and any(len(s.replicas) == 1 for s in task.route):
            await consensus.audit_prefill(task, sent, self.client.candidates())


class RouteSession:
    """One attempt's chain of hops, seen from the requester."""

    def __init__(self, client: InferenceClient, task: Task, settings: RequestSettings,
                 strategy: ModeStrategy, outcome: RequestOutcome) -> None:
        self.client = client
        self.task = task
        self.settings = settings
        self.strategy = strategy
        self.outcome = outcome
        #: the hop to each replica of stage 0, by its peer id (each replica's input is sealed
        #: for that replica alone, so a stream must never be paired with another replica)
        self.ups: dict[str, FramedStream] = {}
        self.result_send, self.result_recv = trio.open_memory_channel[Any](16)
        self.result_peer: str | None = None
        self.result_peers: set[str] = set()
        self.result_ready = trio.Event()
        self.report: Any = None
        self.closed = False
        #: once closed: until when the result hops still wait for late answers
        self.late_until = 0.0
        #: what the mode's strategy keeps for this attempt alone (critical generations: the
        #: stages' committed KV caches)
        self.mode_state: Any = None
        #: seconds of this route's one-token steps, newest last (the adaptive step timeout)
        self.token_steps: list[float] = []
        self._step_ewma = 0.0
        #: replicas that faults named, by stage (redundant routes absorb a minority of them)
        self.lost: dict[int, set[str]] = {}

    @property
    def route(self) -> tuple[StagePlan, ...]:
        return self.task.route

    @property
    def redundant(self) -> bool:
        return any(len(s.replicas) > 1 for s in self.task.route)

    #: one-token steps measured before the step timeout adapts to them
    ADAPT_AFTER = 3

    def observe_step(self, tokens: int, seconds: float) -> None:
        if tokens != 1:
            return
        self.token_steps = [*self.token_steps[-31:], seconds]
        self._step_ewma = seconds if len(self.token_steps) == 1 else \
            self._step_ewma + 0.2 * (seconds - self._step_ewma)

    def step_timeout(self, tokens: int) -> float:
        """How long a step of `tokens` positions may take before its route is given up: the
        configured `step_timeout_s` for a prefill (or replay) and until `ADAPT_AFTER`
        one-token steps were measured, then `step_timeout_factor` times the larger of the
        smoothed and the slowest recent step time, at least `step_timeout_floor_s`."""
        s = self.settings
        if tokens != 1 or len(self.token_steps) < self.ADAPT_AFTER:
            return s.step_timeout_s
        typical = max(self._step_ewma, max(self.token_steps))
        return min(s.step_timeout_s, max(s.step_timeout_floor_s,
                                         s.step_timeout_factor * typical))

    def _majority_lost(self, stage: int | None, peer_id: str | None) -> bool:
        """Note a replica that a fault names; whether its stage has too few replicas left to
        form a majority (then waiting for the step's deadline is pointless)."""
        if stage is None or not 0 <= stage < len(self.route) or peer_id is None:
            return False
        replicas = self.route[stage].replicas
        if peer_id not in replicas:
            return False
        lost = self.lost.setdefault(stage, set())
        lost.add(peer_id)
        return len(replicas) - len(lost) < len(replicas) // 2 + 1

    def fail(self, stage: int | None, peer_id: str | None, message: str) -> None:
        if self.redundant and not self.closed:
            # one replica chain failing is what redundancy absorbs: note it; the votes (and
            # the step timeout) decide the step, unless the faults leave a stage too few
            # replicas for a majority: then the route fails now
            if self.report is not None:
                self.report.faults.append(f"stage {stage} ({peer_id}): {message}"[:300])
            log.info("a replica chain reported: stage %s (%s): %s", stage, peer_id, message)
            if not self._majority_lost(stage, peer_id):
                return
            message = f"stage {stage} lost its majority of replicas; last: {message}"
        try:
            self.result_send.send_nowait(StageFailure(stage, peer_id, message))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass


def _no_spawn(*args: Any) -> None:
    raise InferenceError("the inference client is not attached to a running node")


class TokenStream:
    """The tokens of one generation as they come; `outcome` describes the request (final once
    the iteration ended)."""

    def __init__(self, tokens: AsyncIterator[int], outcome: RequestOutcome) -> None:
        self._tokens = tokens
        self.outcome = outcome

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> int:
        return await self._tokens.__anext__()

    async def aclose(self) -> None:
        await self._tokens.aclose()  # type: ignore[attr-defined]


@dataclass
class Embedded:
    """One embedding request's answer: the sentence vector [1, H] and how it was made."""

    vector: torch.Tensor
    outcome: RequestOutcome


class InferenceClient:
    """Requests inference of one model from the network through a node; shared by concurrent
    requests (per-request state lives in each request's `RequestOutcome` and `RouteSession`).
    Usually reached via `Node`."""

    def __init__(
        self,
        node: PeerNetwork,
        model_path: str,
        settings: RequestSettings | None = None,
        *,
        hop: HopCodec | None = None,
        dtype: torch.dtype = torch.float32,
        consensus: ConsensusSide | None = None,
        trust: RouteTrust | None = None,
        sessions: dict[bytes, RouteSession] | None = None,
        backoff: Backoff | None = None,
        placed: Counter[str] | None = None,
        spawn: Callable[..., None] = _no_spawn,
    ) -> None:
        self.node = node
        self.settings = check_settings(settings or RequestSettings())
        self.hop = hop or PlainHop()
        self.head_path = model_path
        self.head = ClientHead.load(model_path, self.settings.k_head, dtype)
        self.tail = ClientTail.load(model_path, self.settings.k_tail, dtype)
        self.info = self.head.info
        if self.settings.k_head + self.settings.k_tail > self.info.num_layers:
            raise InferenceError(
                f"k_head + k_tail = {self.settings.k_head + self.settings.k_tail} exceeds the "
                f"model's {self.info.num_layers} layers")
        self.dtype = dtype
        self.consensus = consensus
        self.trust = trust
        #: the requester's open sessions by task id (shared with the node's result-hop handler)
        self.sessions = sessions if sessions is not None else {}
        self.backoff = backoff or Backoff(self.settings.ban_base_s, self.settings.ban_max_s)
        #: route sessions this requester has placed and not closed yet, per peer (shared by
        #: the node's clients): the planner spreads concurrent requests over replicas with it
        self.placed: Counter[str] = placed if placed is not None else Counter()
        #: starts a background task that outlives one call (the owning service's nursery)
        self.spawn = spawn
        #: our copy's weights digest per span [a, b) (computed once per span a peer offers)
        self._digests: dict[tuple[int, int], str] = {}

    @property
    def middle(self) -> tuple[int, int]:
        return self.settings.k_head, self.info.num_layers - self.settings.k_tail

    def _settings(self, override: RequestSettings | None) -> RequestSettings:
        if override is None:
            return self.settings
        s = check_settings(override)
        if (s.k_head, s.k_tail) != (self.settings.k_head, self.settings.k_tail):
            raise InferenceError("k_head and k_tail are fixed per client; ask the service for "
                                 "a client with those settings")
        return s

    def strategy(self, settings: RequestSettings) -> ModeStrategy:
        if settings.mode != "general":
            raise InferenceError(f"this client runs general-mode tasks, not {settings.mode!r} "
                                 "(critical mode needs a provable model and its client)")
        return GeneralStrategy(self, settings)

    # -- planning ------------------------------------------------------------------------------
    def candidates(self) -> list[Candidate]:
        out = []
        # TEE levels come from verified claims only; rejected peers are never candidates
        att = self.trust
        for p in self.node.peers():
            if p.model != self.info.model_id or not p.spans or p.peer_id == self.node.peer_id:
                continue
            if att is not None and not att.routable(p.peer_id):
                continue
            spans = self.servable_spans(p.spans, p.advert)
            if not spans:
                continue
            layers = max(1, sum(b - a for a, b in spans))
            tee = att.tee_level(p.peer_id) if att is not None else "none"
            try:  # a precision not stated, or not calibrated, counts as bfloat16
                precision = precision_class(p.advert.precision)
            except FingerprintError:
                precision = "bfloat16"
            out.append(Candidate(
                p.peer_id, spans,
                throughput=float(p.throughput) * layers, load=float(p.load),
                rtt_ms=float(p.rtt_ms) if p.rtt_ms is not None else -1.0, tee_level=tee,
                sessions=self.placed.get(p.peer_id, 0), precision=precision,
            ))
        # a peer not pinged yet is assumed as near as the median measured one (a fixed guess
        # would put all load on whichever peer happened to be measured)
        known = sorted(c.rtt_ms for c in out if c.rtt_ms >= 0)
        guess = known[len(known) // 2] if known else 5.0
        return [c if c.rtt_ms >= 0 else replace(c, rtt_ms=guess) for c in out]

    def servable_spans(self, spans: Sequence[Sequence[int]], advert: Advert
                       ) -> tuple[tuple[int, int], ...]:
        """The spans of a peer's advert this client may route to: those whose weights digest
        equals our own copy's (a critical client asks for the manifest's digest instead)."""
        return self._same_weights(spans, advert.weights)

    def _same_weights(self, spans: Sequence[Sequence[int]], digests: Sequence[str]
                      ) -> tuple[tuple[int, int], ...]:
        """The spans whose advertised weights digest equals our own copy's for that span
        (a peer serving another file under the same architecture, another quantisation or
        altered weights is never routed to; a peer that states no digest neither)."""
        if len(digests) != len(spans):
            return ()
        same = []
        for (a, b), digest in zip(spans, digests, strict=True):
            key = (int(a), int(b))
            if key not in self._digests:
                try:
                    self._digests[key] = weights_digest(self.head_path, *key)
                except ModelError:  # a span our copy of the model does not have
                    self._digests[key] = ""
            if self._digests[key] and hmac.compare_digest(self._digests[key].encode(),
                                                          digest.encode()):
                same.append(key)
        return tuple(same)

    def plan(self, settings: RequestSettings | None = None) -> list[StagePlan]:
        s = self._settings(settings)
        start, end = self.middle
        exclude = self.backoff.excluded()
        banned = self.consensus.banned() if self.consensus is not None else set()
        exclude |= banned  # banned on verified fault evidence or low reputation
        # peers that did not answer our last dial, stream or ping (their adverts may still be
        # in the table: gossip relays them, but they prove nothing about their author's health)
        unreachable = self.node.unreachable()
        exclude |= unreachable
        req = PlanRequest(start, end, redundancy=s.redundancy,
                          allow=set(s.allow) if s.allow else None, deny=set(s.deny),
                          exclude=exclude, min_tee=self.min_tee(s),
                          float32_majority=s.mode == "general" and not s.bfloat16_majority)
        try:
            return plan_route(self.candidates(), req)
        except NoRouteError:
            second_chance = (self.backoff.excluded() | unreachable) - banned
            if not second_chance:
                raise
            # every alternative is backing off after a failure or unreachable: give those
            # peers another try rather than fail the request (banned peers stay excluded; the
            # route is dialled before it is used)
            req.exclude = exclude - second_chance
            return plan_route(self.candidates(), req)

    def route_tolerance(self, route: Sequence[StagePlan]) -> float:
        """The vote tolerance for a route (see `ConsensusService.route_tolerance`)."""
        if self.consensus is None:
            return 0.0
        return self.consensus.route_tolerance(route)

    def min_tee(self, settings: RequestSettings | None = None) -> str:
        """The stricter of the request's `min_tee` and the trust policy's minimum for the mode."""
        s = settings or self.settings
        levels = [s.min_tee]
        if self.trust is not None:
            levels.append(self.trust.min_level(s.mode))
        return max(levels, key=lambda lv: TEE_ORDER.index(lv) if lv in TEE_ORDER else 0)

    # -- hops ----------------------------------------------------------------------------------
    async def accept_result_hop(self, up: FramedStream, upstream: str, task: Task) -> None:
        """The last stage opened its hop to us: deliver its steps to the waiting session."""
        session = self.sessions.get(task.task_id)
        if session is None or task.requester != self.node.peer_id:
            raise InferenceError("no such session on this requester")
        if session.task.to_wire() != task.to_wire():
            raise InferenceError("the route's task differs from the one this requester signed")
        if upstream not in task.route[-1].replicas:
            raise InferenceError(f"peer {upstream} is not a replica of the last stage")
        if upstream in session.result_peers:
            raise InferenceError("the result hop is already open")
        session.result_peers.add(upstream)
        session.result_peer = session.result_peer or upstream
        up.timeout_s = max(session.settings.step_timeout_s * 4, 60.0)
        await up.send("ready", {"stage": len(task.route)})
        if len(session.result_peers) == len(task.route[-1].replicas):
            session.result_ready.set()
        info = self.info
        try:
            while True:
                if session.closed:
                    # the requester is done: wait for the route's own `close` so the last
                    # stage sees an orderly end, not a vanished requester; a replica that lags
                    # (behind a stalled upstream) may still answer while its claim can count
                    left = session.late_until - trio.current_time()
                    if left <= 0:
                        break
                    up.timeout_s = left
                try:
                    msg = await up.recv(expect={"step", "close", "fault"})
                except EndOfStream:
                    break
                if msg.t == "close":
                    break
                if session.closed:
                    if msg.t == "step" and self.consensus is not None:
                        # decided without it: its claim still counts in the background tally
                        self.consensus.late_result(upstream, msg.fields)
                    continue
                if msg.t == "fault":  # a stage reports a peer upstream of it vanished
                    session.fail(msg.get("stage", int, None), msg.get("peer_id", str, None),
                                 f"{msg.get('code', str, 'fault')}: {msg.get('message', str, '')}")
                    continue
                seq = msg.get("seq", int)
                ctx = HopContext(task.task_id, len(task.route), seq, upstream)
                # the last stage may compute in another precision; the tail casts
                hidden = await self.hop.unpack(
                    msg.fields, ctx, hidden_size=info.hidden_size,
                    dtype=session.strategy.wire_dtype,
                    max_bytes=self.node.config.limits.max_tensor_bytes)
                await session.result_send.send(
                    StepResult(seq, hidden, dict(msg.fields), peer=upstream))
        except (P2PInferError, OSError) as e:
            log.debug("result hop of %s failed: %s", task.short_id, e)
        finally:
            if not session.closed:  # no attribution: the requester probes the route
                session.fail(None, None, "the route's result hop closed")

    async def _watch_up(self, session: RouteSession, up: FramedStream, first: str) -> None:
        """Faults relayed from the route arrive on the hops to stage 0."""
        try:
            while True:
                msg = await up.recv(expect={"fault"})
                stage = msg.get("stage", int, None)
                peer = msg.get("peer_id", str, None)
                text = f"stage {stage} ({peer}) reported {msg.get('code', str, '?')}: " \
                       f"{msg.get('message', str, '')}"
                session.fail(stage, peer, text)
        except EndOfStream:
            if not session.closed:
                session.fail(0, first, "stage 0 closed its hop")
        except (P2PInferError, OSError) as e:
            if not session.closed:
                session.fail(0, first, f"hop to stage 0 failed: {e}")

    async def _open_first(self, session: RouteSession, first: str) -> FramedStream:
        """The hop to one replica of stage 0, once the chain below it answered `ready`."""
        task = session.task
        await ensure_connected(self.node, first)
        up = await self.node.open_stream(first, "stage")
        session.ups[first] = up
        await up.send("open", {"task": task.to_wire(), "stage": 0})
        up.timeout_s = session.settings.open_timeout_s
        reply = await up.recv(expect={"ready", "fault"})
        if reply.t == "fault":
            stage = reply.get("stage", int, None)
            peer = reply.get("peer_id", str, None)
            raise StageFailure(stage, peer, f"stage {stage} could not open: "
                               f"{reply.get('message', str, '')}")
        return up

    async def _open(self, session: RouteSession) -> None:
        task = session.task
        self.sessions[task.task_id] = session
        if self.consensus is not None and task.mode == "general":
            session.report = self.consensus.open_report(
                task, max(len(s.replicas) for s in task.route))
            session.outcome.report = session.report
        first = task.route[0].replicas[0]
        try:
            with trio.fail_after(session.settings.open_timeout_s):
                await self._open_first(session, first)
                if len(task.route[0].replicas) > 1:  # every replica of stage 0 gets the input
                    errors: list[BaseException] = []

                    async def open_one(peer: str) -> None:
                        try:
                            await self._open_first(session, peer)
                        except (P2PInferError, OSError) as e:
                            errors.append(StageFailure(0, peer, f"stage 0 replica {peer}: {e}")
                                          if not isinstance(e, StageFailure) else e)

                    async with trio.open_nursery() as nursery:
                        for peer in task.route[0].replicas[1:]:
                            nursery.start_soon(open_one, peer)
                    if errors:
                        raise errors[0]
                await session.result_ready.wait()
        except trio.TooSlowError:
            await self._close(session)
            raise StageFailure(None, None, "the route did not come up in time") from None
        except RemoteError as e:
            await self._close(session)
            raise StageFailure(0, first, f"stage 0 refused the task: {e}") from None
        except StageFailure:
            await self._close(session)
            raise
        except (P2PInferError, OSError) as e:
            await self._close(session)
            raise StageFailure(0, first, f"could not reach stage 0: {e}") from None
        for peer, up in session.ups.items():
            up.timeout_s = 24 * 3600.0  # the watchers wait for faults for the whole session
            self.spawn(self._watch_up, session, up, peer)

    async def _close(self, session: RouteSession) -> None:
        if not session.closed:
            self._release(session.route)
        session.closed = True
        consensus = self.consensus
        window = consensus.tally_window_s if consensus is not None and session.redundant else 0.0
        session.late_until = trio.current_time() + max(2.0, window)
        self.sessions.pop(session.task.task_id, None)
        self.hop.end_hops(session.task.task_id)  # erase the session's hop keys
        ups = list(session.ups.values())
        with trio.move_on_after(2) as scope:
            scope.shield = True
            for up in ups:
                try:
                    await up.send("close")
                except (P2PInferError, OSError):
                    pass
                await up.aclose()
        session.result_send.close()
        if consensus is not None:
            # answers that came after their step was decided and were not read yet still
            # count in the background tally
            while True:
                try:
                    item = session.result_recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(item, StepResult):
                    consensus.late_result(item.peer, item.fields)
            consensus.forget_task(session.task.task_id)

    async def _blame(self, session: RouteSession, failure: StageFailure) -> str | None:
        """The peer to back off: the one the fault names, else one that does not answer."""
        if failure.peer_id and failure.peer_id != self.node.peer_id:
            return failure.peer_id
        peers = [p for s in session.route for p in s.replicas]
        dead: list[str] = []

        async def probe(pid: str) -> None:
            try:
                with trio.fail_after(2.5):
                    await self.node.ping(pid, count=1, timeout=2.0)
            except (P2PInferError, trio.TooSlowError, OSError):
                dead.append(pid)

        async with trio.open_nursery() as n:
            for pid in peers:
                n.start_soon(probe, pid)
        return dead[0] if dead else None

    async def _attribute(self, session: RouteSession, failure: StageFailure) -> None:
        """Name the peer a failure is blamed on; when none can be (every peer of the route
        still answers a ping, e.g. a stage whose computation hangs), the whole route is
        suspect."""
        if failure.peer_id is not None:
            return
        failure.peer_id = await self._blame(session, failure)
        if failure.peer_id is None:
            failure.suspects = tuple(dict.fromkeys(p for s in session.route for p in s.replicas))

    # -- the attempt loop ----------------------------------------------------------------------
    @asynccontextmanager
    async def _route(self, outcome: RequestOutcome, settings: RequestSettings,
                     strategy: ModeStrategy, max_length: int) -> AsyncIterator[RouteSession]:
        """One attempt's route: planned, signed and open; closed on the way out. A failure in
        the body that names no peer gets one (the route is probed)."""
        session = await self._open_route(outcome, settings, strategy, max_length)
        try:
            yield session
        except StageFailure as failure:
            await self._attribute(session, failure)
            raise
        finally:
            await self._close(session)

    async def _open_route(self, outcome: RequestOutcome, settings: RequestSettings,
                          strategy: ModeStrategy, max_length: int) -> RouteSession:
        """A route planned, signed and open (the caller closes it with `_close`)."""
        route = await self._reachable_route(settings)
        outcome.route = route
        outcome.report = None
        try:
            task = Task.create(
                self.node.identity, network_id=self.node.network_id,
                model_id=self.info.model_id, requester_addrs=self.node.addrs, route=route,
                mode=strategy.mode, max_length=max_length,
                options=strategy.task_options(route))
            session = RouteSession(self, task, settings, strategy, outcome)
        except BaseException:
            self._release(route)
            raise
        await self._open(session)  # closes (and releases) the session when it fails
        return session

    #: how often a route is planned again because one of its peers did not answer, before
    #: the request waits for the network
    PREFLIGHT_PLANS = 3

    async def _reachable_route(self, settings: RequestSettings) -> list[StagePlan]:
        """A planned route whose peers all answer, held in `placed` (the caller releases it).
        Peers not connected, or marked unreachable, are probed first (concurrently); one that
        does not answer is marked unreachable by the node and the route is planned again
        without it, before any task is signed (no failed attempt). When no route's peers
        answer (this node's own link is down, say), the request waits for them, probing with
        growing pauses, up to `outage_wait_s`. The route is held from the moment it is
        planned, so requests planned meanwhile see its sessions."""

        async def probe(pid: str, failed: list[str]) -> None:
            if not await self.node.probe(pid):
                failed.append(pid)

        deadline = trio.current_time() + settings.outage_wait_s
        pause = 0.5
        while True:
            for _ in range(self.PREFLIGHT_PLANS):
                route = self.plan(settings)
                self._hold(route)
                try:
                    connected = set(self.node.connected_peers())
                    down = self.node.unreachable()
                    todo = {p for s in route for p in s.replicas
                            if p not in connected or p in down}
                    failed: list[str] = []
                    if todo:
                        async with trio.open_nursery() as nursery:
                            for pid in todo:
                                nursery.start_soon(probe, pid, failed)
                except BaseException:
                    self._release(route)
                    raise
                if not failed:
                    return route
                self._release(route)
                log.info("planning again without unreachable peer(s) %s", ", ".join(failed))
            everyone = {p for s in route for p in s.replicas}
            if set(failed) != everyone or await self._others_answer(everyone):
                # some peers answer: the network is there, these peers are not
                raise StageFailure(None, None, "no reachable route: "
                                   f"{', '.join(sorted(failed))} did not answer")
            left = deadline - trio.current_time()
            if left <= 0:
                raise InferenceError(f"no peer answered for {settings.outage_wait_s:g} s: is "
                                     "this node offline?")
            log.warning("no peer answers; waiting for the network (%.0f s left)", left)
            await trio.sleep(min(pause, left))
            pause = min(2 * pause, 4.0)

    async def _others_answer(self, exclude: set[str]) -> bool:
        """Whether any of (at most three) other connected peers answers a probe: tells a dead
        route from this node's own outage."""
        down = self.node.unreachable()
        others = [p for p in self.node.connected_peers() if p not in exclude and p not in down]
        answered: list[str] = []

        async def probe(pid: str) -> None:
            if await self.node.probe(pid):
                answered.append(pid)

        async with trio.open_nursery() as nursery:
            for pid in others[:3]:
                nursery.start_soon(probe, pid)
        return bool(answered)

    def _hold(self, route: Sequence[StagePlan]) -> None:
        for s in route:
            self.placed.update(s.replicas)

    def _release(self, route: Sequence[StagePlan]) -> None:
        for s in route:
            for p in s.replicas:
                n = self.placed.get(p, 0) - 1
                if n > 0:
                    self.placed[p] = n
                else:
                    self.placed.pop(p, None)

    async def _attempts(self, outcome: RequestOutcome, settings: RequestSettings,
                        attempt: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        """Run `attempt` until it completes: a `StageFailure` backs the blamed peer off and
        runs it again on a new route (at most `max_replans` times). `attempt` resumes where
        the last one stopped (it replays what was already produced)."""
        failures = 0
        try:
            while True:
                try:
                    async for item in attempt():
                        yield item
                    for peer in {p for s in outcome.route for p in s.replicas}:
                        self.backoff.succeed(peer)
                    return
                except StageFailure as failure:
                    failures += 1
                    outcome.failures.append(str(failure)[:300])
                    log.warning("route failed (%s); re-planning, attempt %d", failure, failures)
                    if failure.peer_id and failure.peer_id != self.node.peer_id:
                        self.backoff.fail(failure.peer_id)
                    for peer in failure.suspects:
                        self.backoff.fail(peer)
                    if failures > settings.max_replans:
                        raise InferenceError(f"gave up after {failures - 1} re-plans; last "
                                             f"failure: {failure}") from None
                    outcome.replans += 1
        finally:
            outcome.finish()

    async def _step(self, session: RouteSession, seq: int, pos: int, hidden: torch.Tensor
                    ) -> torch.Tensor:
        """One step through the route: the answer, checked by the mode's strategy."""
        t0 = time.perf_counter()
        for first in session.route[0].replicas:
            up = session.ups[first]
            fields = await self.hop.pack(hidden, HopContext(session.task.task_id, 0, seq, first))
            try:
                await up.send("step", {"seq": seq, "pos": pos, **fields})
            except (P2PInferError, OSError) as e:
                raise StageFailure(0, first, f"could not send to stage 0: {e}") from None
        tokens = int(hidden.shape[-2]) if hidden.dim() >= 2 else 1
        timeout = session.step_timeout(tokens)
        if len(session.route[-1].replicas) > 1:
            out = await self._voted_step(session, seq, timeout)
        else:
            out = await self._single_step(session, seq, hidden, timeout)
        seconds = time.perf_counter() - t0
        session.outcome.step_s.append(seconds)
        session.observe_step(tokens, seconds)
        return out

    async def _single_step(self, session: RouteSession, seq: int, sent: torch.Tensor,
                           timeout: float) -> torch.Tensor:
        with trio.move_on_after(timeout):
            while True:
                try:
                    item = await session.result_recv.receive()
                except trio.EndOfChannel:
                    raise StageFailure(None, None, "the session closed") from None
                if isinstance(item, StageFailure):
                    raise item
                if item.seq == seq:
                    await session.strategy.check(session, sent, item)
                    return item.hidden
        raise StageFailure(None, None, f"step {seq} got no answer in {timeout:.3g} s")

    async def _voted_step(self, session: RouteSession, seq: int, timeout: float
                          ) -> torch.Tensor:
        """Redundant last stage: vote over the replicas' answers (majority, bounded wait)."""
        from p2pinfer.consensus import NoMajorityError

        consensus = self.consensus
        if consensus is None:
            raise InferenceError("redundant routes need the node's consensus service")
        results: dict[str, StepResult] = {}
        last = len(session.route) - 1

        async def more() -> bool:
            while True:
                try:
                    item = await session.result_recv.receive()
                except trio.EndOfChannel:
                    return False
                if isinstance(item, StageFailure):
                    raise item
                if item.seq == seq and item.peer not in results:
                    results[item.peer] = item
                    return True
                consensus.late_result(item.peer, item.fields)

        try:
            with trio.fail_after(timeout):
                chosen = await consensus.vote_results(session.task, seq, results, more)
        except trio.TooSlowError:
            raise StageFailure(last, None, f"step {seq}: no majority of stage {last} answered "
                               f"in {timeout:.3g} s") from None
        except NoMajorityError as e:
            raise InferenceError(f"task failed: {e}") from None
        for peer, result in results.items():
            consensus.observe_result(session.task, peer, result.hidden, result.hidden is chosen)
        return chosen

    # -- noise ---------------------------------------------------------------------------------
    def _protect(self, hidden: torch.Tensor, settings: RequestSettings,
                 outcome: RequestOutcome) -> torch.Tensor:
        """Clip and add Gaussian noise to the outgoing activation when configured (noise from
        the OS CSPRNG); the (epsilon, delta) of the query goes into the request's outcome."""
        if settings.noise_sigma <= 0:
            return hidden
        from p2pinfer.models.noise import BoundaryNoise

        out, cost = BoundaryNoise(settings.noise_clip, settings.noise_sigma,
                                  settings.noise_delta).apply(hidden)
        outcome.privacy = {"epsilon_per_token": cost.epsilon,
                           "epsilon_sequence": cost.epsilon_sequence, "delta": cost.delta,
                           "sigma": cost.sigma, "clip_norm": settings.noise_clip}
        return out

    # -- public calls --------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sample: Callable[[torch.Tensor], int],
        *,
        stop_ids: Sequence[int] = (),
        settings: RequestSettings | None = None,
    ) -> TokenStream:
        """New token ids as they are produced (decoder models); the stream's `outcome` says
        how they were made."""
        s = self._settings(settings)
        outcome = RequestOutcome(s.mode)
        return TokenStream(self._generate(list(prompt_ids), max_new_tokens, sample,
                                          tuple(stop_ids), s, outcome), outcome)

    async def _generate(self, prompt: list[int], max_new_tokens: int,
                        sample: Callable[[torch.Tensor], int], stop_ids: tuple[int, ...],
                        settings: RequestSettings, outcome: RequestOutcome
                        ) -> AsyncIterator[int]:
        if not self.info.is_decoder:
            raise InferenceError("generation needs a decoder model; use embed() for encoders")
        if not prompt:
            raise InferenceError("the prompt is empty")
        if max_new_tokens < 1:
            raise InferenceError("max_new_tokens must be at least 1")
        if len(prompt) + max_new_tokens > self.info.max_positions:
            raise PromptTooLong(
                f"prompt of {len(prompt)} tokens plus {max_new_tokens} new tokens exceeds the "
                f"model's context of {self.info.max_positions} tokens")
        strategy = self.strategy(settings)
        history = list(prompt)

        async def attempt() -> AsyncIterator[int]:
            budget = len(prompt) + max_new_tokens - len(history)
            if budget <= 0 or (len(history) > len(prompt) and history[-1] in stop_ids):
                return
            async for tok in self._run_route(history, len(prompt) + max_new_tokens, budget,
                                             sample, stop_ids, settings, strategy, outcome):
                history.append(tok)
                if outcome.first_s is None:
                    outcome.first_s = time.perf_counter() - outcome.started
                yield tok

        async for tok in self._attempts(outcome, settings, attempt):
            yield tok

    async def _run_route(self, history: list[int], max_length: int, budget: int,
                         sample: Callable[[torch.Tensor], int], stop_ids: Sequence[int],
                         settings: RequestSettings, strategy: ModeStrategy,
                         outcome: RequestOutcome) -> AsyncIterator[int]:
        head_cache = self.head.new_cache()
        tail_cache = self.tail.new_cache()
        start, end = self.middle
        try:
            if start >= end:  # every layer runs here
                outcome.route = []
                async for tok in self._decode(None, history, budget, sample, stop_ids,
                                              head_cache, tail_cache):
                    yield tok
                return
            async with self._route(outcome, settings, strategy, max_length) as session:
                async for tok in self._decode(session, history, budget, sample, stop_ids,
                                              head_cache, tail_cache):
                    yield tok
        finally:
            for c in (head_cache, tail_cache):
                if isinstance(c, KVCache):
                    c.erase()

    async def _decode(self, session: RouteSession | None, history: list[int], budget: int,
                      sample: Callable[[torch.Tensor], int], stop_ids: Sequence[int],
                      head_cache: Any, tail_cache: Any) -> AsyncIterator[int]:
        pending = list(history)
        pos = 0
        for i in range(budget):
            h = await trio.to_thread.run_sync(self.head.forward, pending, head_cache, pos)
            if session is not None:
                sent = self._protect(h, session.settings, session.outcome)
                session.outcome.tokens_sent += len(pending)
                h = await self._step(session, i, pos, sent)
                if i == 0:
                    await session.strategy.after_prefill(session, sent, h)
            logits = await trio.to_thread.run_sync(self._tail_last, h, tail_cache, pos)
            tok = int(sample(logits[0, -1]))
            pos += len(pending)
            pending = [tok]
            yield tok
            if tok in stop_ids:
                break

    def _tail_last(self, hidden: torch.Tensor, cache: Any, pos: int) -> torch.Tensor:
        return self.tail.forward(hidden, cache, pos, last_only=True)

    def conversation(self, settings: RequestSettings | None = None) -> RouteConversation:
        """A multi-turn generation whose route session and local caches stay open across
        turns (use as an async context manager; each turn sends only its new tokens)."""
        s = self._settings(settings)
        if not self.info.is_decoder:
            raise InferenceError("a conversation needs a decoder model")
        return RouteConversation(self, s)

    async def embed(self, ids: Sequence[int], *, settings: RequestSettings | None = None
                    ) -> Embedded:
        """The sentence embedding of one token sequence (encoder models) and its outcome."""
        s = self._settings(settings)
        outcome = RequestOutcome(s.mode)
        if self.info.is_decoder:
            raise InferenceError("embed() needs an encoder model; use generate() for decoders")
        if not ids:
            raise InferenceError("nothing to embed")
        if len(ids) > self.info.max_positions:
            raise PromptTooLong(f"input of {len(ids)} tokens exceeds the model's "
                                f"{self.info.max_positions}")
        strategy = self.strategy(s)

        async def attempt() -> AsyncIterator[torch.Tensor]:
            h = await trio.to_thread.run_sync(self.head.forward, list(ids))
            start, end = self.middle
            if start < end:
                async with self._route(outcome, s, strategy, len(ids)) as session:
                    outcome.tokens_sent += len(ids)
                    h = await self._step(session, 0, 0, self._protect(h, s, outcome))
            yield await trio.to_thread.run_sync(self.tail.forward, h)

        vector: torch.Tensor | None = None
        async for vector in self._attempts(outcome, s, attempt):
            outcome.first_s = time.perf_counter() - outcome.started
        assert vector is not None
        return Embedded(vector, outcome)


class RouteConversation:
    """Turns of one conversation over one route session: the stages' KV caches and the local
    head and tail caches keep every earlier turn, so a turn sends only the tokens that differ
    from what the caches hold. A failed stage re-plans and replays the whole history on the new
    route; a turn whose prompt rewrites cached positions starts a fresh route session (its
    outcome says so). Per-conversation state lives here; the client is shared."""

    def __init__(self, client: InferenceClient, settings: RequestSettings) -> None:
        self.client = client
        self.settings = settings
        self.strategy = client.strategy(settings)
        self.session: RouteSession | None = None
        self.head_cache: Any = None
        self.tail_cache: Any = None
        #: the token ids the caches hold, in order (the last sampled token is not among them)
        self.cached: list[int] = []
        #: the next step index on the route session
        self.seq = 0
        self.turns = 0
        self._busy = False
        self._open = False
        #: why the caches were dropped between turns (told in the next turn's outcome)
        self._dropped: str | None = None

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        await self._drop()

    @property
    def max_length(self) -> int:
        return self.client.info.max_positions

    async def _drop(self) -> None:
        """Close the route session and erase every cache (the next turn starts afresh)."""
        session, self.session = self.session, None
        if session is not None:
            await self.client._close(session)
        for c in (self.head_cache, self.tail_cache):
            if isinstance(c, KVCache):
                c.erase()
        self.head_cache = self.tail_cache = None
        self.cached = []
        self.seq = 0

    async def reset(self) -> None:
        """Forget the conversation: the next turn opens a fresh route session."""
        await self._drop()
        self._dropped = None

    def turn(self, ids: Sequence[int], max_new_tokens: int, sample: Callable[[torch.Tensor], int],
             *, stop_ids: Sequence[int] = ()) -> TokenStream:
        """New token ids answering `ids`, the whole conversation so far (e.g. the chat
        template applied to every message); only what the caches do not hold yet is sent."""
        if not self._open:
            raise InferenceError("the conversation is not open (use `async with`)")
        outcome = RequestOutcome(self.settings.mode)
        return TokenStream(self._turn(list(ids), max_new_tokens, sample, tuple(stop_ids),
                                      outcome), outcome)

    async def _turn(self, target: list[int], max_new_tokens: int,
                    sample: Callable[[torch.Tensor], int], stop_ids: tuple[int, ...],
                    outcome: RequestOutcome) -> AsyncIterator[int]:
        if not target:
            raise InferenceError("the conversation is empty")
        if max_new_tokens < 1:
            raise InferenceError("max_new_tokens must be at least 1")
        if len(target) + max_new_tokens > self.max_length:
            raise PromptTooLong(
                f"the conversation of {len(target)} tokens plus {max_new_tokens} new tokens "
                f"exceeds the model's context of {self.max_length} tokens; /reset to start over")
        if self._busy:
            raise InferenceError("one turn at a time: the previous turn is still running")
        self.turns += 1
        out: list[int] = []

        async def attempt() -> AsyncIterator[int]:
            budget = max_new_tokens - len(out)
            if budget <= 0 or (out and out[-1] in stop_ids):
                return
            async for tok in self._run(target + out, budget, sample, stop_ids, outcome):
                out.append(tok)
                if outcome.first_s is None:
                    outcome.first_s = time.perf_counter() - outcome.started
                yield tok

        async for tok in self.client._attempts(outcome, self.settings, attempt):
            yield tok

    async def _run(self, want: list[int], budget: int, sample: Callable[[torch.Tensor], int],
                   stop_ids: tuple[int, ...], outcome: RequestOutcome) -> AsyncIterator[int]:
        client = self.client
        keep = 0
        for a, b in zip(self.cached, want, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(want) - 1)  # at least one token must run for the next logits
        if self._dropped is not None:
            outcome.notes.append(self._dropped)
            self._dropped = None
        if keep < len(self.cached):
            if self.cached:
                outcome.notes.append(
                    f"the prompt rewrites cached position {keep} of {len(self.cached)}: fresh "
                    "route session, whole history sent")
            await self._drop()
            keep = 0
        start, end = client.middle
        if self.head_cache is None:
            self.head_cache = client.head.new_cache()
            self.tail_cache = client.tail.new_cache()
        if self.session is None and start < end:
            self.seq = 0
            self.session = await client._open_route(outcome, self.settings, self.strategy,
                                                    self.max_length)
        session = self.session
        fresh = self.seq == 0
        if session is not None:
            session.outcome = outcome
            outcome.route = list(session.route)
            outcome.report = session.report
        outcome.tokens_reused = keep
        pending = want[keep:]
        try:
            for _ in range(budget):
                self._busy = True
                pos = len(self.cached)
                h = await trio.to_thread.run_sync(client.head.forward, pending, self.head_cache,
                                                  pos)
                if session is not None:
                    sent = client._protect(h, self.settings, outcome)
                    outcome.tokens_sent += len(pending)
                    h = await client._step(session, self.seq, pos, sent)
                    self.seq += 1
                    if fresh:
                        fresh = False
                        await session.strategy.after_prefill(session, sent, h)
                logits = await trio.to_thread.run_sync(client._tail_last, h, self.tail_cache,
                                                       pos)
                self.cached.extend(pending)
                self._busy = False
                tok = int(sample(logits[0, -1]))
                pending = [tok]
                yield tok
                if tok in stop_ids:
                    break
        except StageFailure as failure:
            if session is not None:
                await client._attribute(session, failure)
            await self._drop()
            raise
        finally:
            if self._busy:  # stopped inside a step: the caches may hold half of it
                self._busy = False
                await self._drop()
                self._dropped = ("the last turn stopped inside a step: fresh route session, "
                                 "whole history sent")


def settings_with(base: RequestSettings, **overrides: Any) -> RequestSettings:
    """`base` with the given keys replaced (None leaves a key as it is), validated."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return check_settings(replace(base, **changes)) if changes else base
