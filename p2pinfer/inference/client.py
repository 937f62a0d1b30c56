"""The requester side: plan a route, run the head and tail locally, drive sessions, recover.

U-shaped split learning: the requester runs the embeddings and the first `k_head` layers and the
last `k_tail` layers with the LM head (or pooling) itself, so raw tokens and output logits never
leave it; peers only see boundary activations. Per token the requester pushes one activation to
stage 0 and receives the last stage's output on its result hop.

Fault tolerance: a `fault` relayed from the route, a dead hop, or a step that misses its deadline
marks the faulty peer (found by the fault's attribution, or by pinging every peer of the route);
that peer is backed off with exponential delay, the middle layers are re-planned without it, and
the session's history (prompt and tokens generated so far) is replayed as one prefill to rebuild
every cache. With greedy decoding the text equals a failure-free run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import trio

from p2pinfer.errors import P2PInferError, RemoteError
from p2pinfer.inference.hop import HopCodec, HopContext, PlainHop
from p2pinfer.inference.planner import Candidate, NoRouteError, PlanRequest, plan_route
from p2pinfer.inference.task import StagePlan, Task
from p2pinfer.models import ClientHead, ClientTail, KVCache
from p2pinfer.wire import ACTIVATION_DTYPES, EndOfStream

log = logging.getLogger(__name__)


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


@dataclass
class ClientSettings:
    k_head: int = 1
    k_tail: int = 1
    redundancy: int = 1
    mode: str = "general"
    step_timeout_s: float = 30.0
    open_timeout_s: float = 30.0
    max_replans: int = 4
    allow: list[str] | None = None
    deny: list[str] = field(default_factory=list)
    min_tee: str = "none"
    #: Gaussian noise on the outgoing activation (0 = off), per-token L2 clip norm
    noise_sigma: float = 0.0
    noise_clip: float = 0.0
    noise_delta: float = 1e-5
    ban_base_s: float = 10.0
    ban_max_s: float = 600.0
    #: fingerprint tolerance of the votes; 0 = from the route's advertised precisions (the
    #: float32 one when every replica computes in float32, else the bfloat16 one; see
    #: p2pinfer.consensus.fingerprint)
    tolerance: float = 0.0
    #: m = 1: audit a random fraction of stages (p2pinfer.consensus.AuditPolicy)
    audits: bool = True


class Backoff:
    """Failing peers are excluded for base * 2^(failures-1) seconds, capped."""

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

    def excluded(self) -> set[str]:
        now = self.clock()
        return {p for p, t in self.until.items() if t > now}


@dataclass
class StepResult:
    seq: int
    hidden: torch.Tensor
    #: the step message's other fields (what the last stage attached, e.g. proofs)
    fields: dict[str, Any] = field(default_factory=dict)
    #: the last-stage replica that sent it
    peer: str = ""
    claimed: bool = False


class ResultCheck(Protocol):
    """Checks the route's answer before the requester uses it, for tasks of one mode.
    Raises a `P2PInferError` (ideally a `StageFailure` naming the peer) to reject it."""

    async def check(self, session: RouteSession, sent: torch.Tensor, result: StepResult) -> None: ...


class RouteSession:
    """One task's chain of hops, seen from the requester."""

    def __init__(self, client: InferenceClient, task: Task) -> None:
        self.client = client
        self.task = task
        self.up: Any = None
        #: one hop per replica of stage 0 (`up` is the first)
        self.ups: list[Any] = []
        self.result_send, self.result_recv = trio.open_memory_channel[Any](16)
        self.result_peer: str | None = None
        self.result_peers: set[str] = set()
        self.result_ready = trio.Event()
        self.report: Any = None
        self.closed = False
        #: once closed: until when the result hops still wait for late answers
        self.late_until = 0.0

    @property
    def route(self) -> tuple[StagePlan, ...]:
        return self.task.route

    @property
    def redundant(self) -> bool:
        return any(len(s.replicas) > 1 for s in self.task.route)

    def fail(self, stage: int | None, peer_id: str | None, message: str) -> None:
        if self.redundant and not self.closed:
            # one replica chain failing is what redundancy absorbs: note it; the votes (and
            # the step timeout) decide whether the route still has a majority
            if self.report is not None:
                self.report.faults.append(f"stage {stage} ({peer_id}): {message}"[:300])
            log.info("a replica chain reported: stage %s (%s): %s", stage, peer_id, message)
            return
        try:
            self.result_send.send_nowait(StageFailure(stage, peer_id, message))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass


def _no_spawn(*args: Any) -> None:
    raise InferenceError("the inference client is not attached to a running node")


class InferenceClient:
    """Requests inference from the network through a node. Usually reached via `Node`."""

    def __init__(
        self,
        node: Any,
        model_path: str,
        settings: ClientSettings | None = None,
        *,
        hop: HopCodec | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.node = node
        self.settings = settings or ClientSettings()
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
        self.backoff = Backoff(self.settings.ban_base_s, self.settings.ban_max_s)
        self.sessions: dict[bytes, RouteSession] = {}
        self.last_route: list[StagePlan] = []
        #: the verification report of the last request (`VerificationReport`), if any
        self.last_report: Any = None
        self.replans = 0
        self.privacy: dict[str, float] | None = None
        #: per task mode, how the route's answers are checked before use (none for general)
        self.checks: dict[str, ResultCheck] = {}
        #: starts a background task that outlives one call (set by the owning service)
        self.spawn: Callable[..., None] = _no_spawn

    @property
    def middle(self) -> tuple[int, int]:
        return self.settings.k_head, self.info.num_layers - self.settings.k_tail

    # -- planning ------------------------------------------------------------------------------
    def candidates(self) -> list[Candidate]:
        out = []
        # TEE levels come from verified claims only; rejected peers are never candidates
        att = getattr(self.node, "attestation", None)
        for p in self.node.peers():
            if p.model != self.info.model_id or not p.spans or p.peer_id == self.node.peer_id:
                continue
            if att is not None and not att.routable(p.peer_id):
                continue
            layers = max(1, sum(b - a for a, b in p.spans))
            tee = att.tee_level(p.peer_id) if att is not None else "none"
            out.append(Candidate(
                p.peer_id, tuple(tuple(s) for s in p.spans),
                throughput=float(p.throughput) * layers, load=float(p.load),
                rtt_ms=float(p.rtt_ms) if p.rtt_ms is not None else 5.0, tee_level=tee,
            ))
        return out

    def plan(self) -> list[StagePlan]:
        start, end = self.middle
        s = self.settings
        exclude = self.backoff.excluded()
        consensus = self.consensus
        if consensus is not None:  # banned on verified fault evidence or low reputation
            exclude |= consensus.banned()
        req = PlanRequest(start, end, redundancy=s.redundancy,
                          allow=set(s.allow) if s.allow else None, deny=set(s.deny),
                          exclude=exclude, min_tee=self.min_tee())
        try:
            return plan_route(self.candidates(), req)
        except NoRouteError:
            backing_off = self.backoff.excluded() - (consensus.banned() if consensus else set())
            if not backing_off:
                raise
            # every alternative is backing off after a failure: give those peers another try
            # rather than fail the request (banned peers stay excluded)
            req.exclude = exclude - backing_off
            return plan_route(self.candidates(), req)

    @property
    def consensus(self) -> Any:
        """The node's `ConsensusService` (votes, reputation, audits), if it runs one."""
        return getattr(getattr(self.node, "inference", None), "consensus", None)

    def _task_options(self, route: Sequence[Any]) -> dict[str, Any]:
        if self.settings.mode != "general":
            return {}
        return {"tolerance": float(self.settings.tolerance or self.route_tolerance(route))}

    def route_tolerance(self, route: Sequence[Any]) -> float:
        """The vote tolerance for a route: the float32 one when every replica advertises
        float32, else the loosest its replicas' precisions need (a replica that states none,
        or one not calibrated, gets the bfloat16 tolerance)."""
        from p2pinfer.inference.redundancy import DEFAULT_TOLERANCE, peer_tolerance

        return max([peer_tolerance(self.node, p) for s in route for p in s.replicas],
                   default=DEFAULT_TOLERANCE)

    def min_tee(self) -> str:
        """The stricter of the request's `min_tee` and the trust policy's minimum for the mode."""
        from p2pinfer.inference.planner import TEE_ORDER

        levels = [self.settings.min_tee]
        att = getattr(self.node, "attestation", None)
        if att is not None:
            levels.append(att.min_level(self.settings.mode))
        return max(levels, key=lambda lv: TEE_ORDER.index(lv) if lv in TEE_ORDER else 0)

    # -- hops ----------------------------------------------------------------------------------
    async def accept_result_hop(self, up: Any, upstream: str, task: Task) -> None:
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
        up.timeout_s = max(self.settings.step_timeout_s * 4, 60.0)
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
                dtype = "int64" if task.mode == "critical" else ACTIVATION_DTYPES
                hidden = await self.hop.unpack(
                    msg.fields, ctx, hidden_size=info.hidden_size, dtype=dtype,
                    max_bytes=self.node.config.limits.max_tensor_bytes)
                await session.result_send.send(
                    StepResult(seq, hidden, dict(msg.fields), peer=upstream))
        except (P2PInferError, OSError) as e:
            log.debug("result hop of %s failed: %s", task.short_id, e)
        finally:
            if not session.closed:  # no attribution: the requester probes the route
                session.fail(None, None, "the route's result hop closed")

    async def _watch_up(self, session: RouteSession, up: Any = None) -> None:
        """Faults relayed from the route arrive on the hops to stage 0."""
        up = up if up is not None else session.up
        first = up.peer_id if hasattr(up, "peer_id") else session.route[0].replicas[0]
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

    async def _open_first(self, session: RouteSession, first: str) -> Any:
        """The hop to one replica of stage 0, once the chain below it answered `ready`."""
        from p2pinfer.inference.stage import ensure_connected

        task = session.task
        await ensure_connected(self.node, first)
        up = await self.node.open_stream(first, "stage")
        session.ups.append(up)
        await up.send("open", {"task": task.to_wire(), "stage": 0})
        up.timeout_s = self.settings.open_timeout_s
        reply = await up.recv(expect={"ready", "fault"})
        if reply.t == "fault":
            stage = reply.get("stage", int, None)
            peer = reply.get("peer_id", str, None)
            raise StageFailure(stage, peer, f"stage {stage} could not open: "
                               f"{reply.get('message', str, '')}")
        return up

    async def _open(self, task: Task) -> RouteSession:
        session = RouteSession(self, task)
        self.sessions[task.task_id] = session
        consensus = self.consensus
        if consensus is not None:
            session.report = consensus.open_report(task, max(len(s.replicas) for s in task.route))
        first = task.route[0].replicas[0]
        try:
            with trio.fail_after(self.settings.open_timeout_s):
                session.up = await self._open_first(session, first)
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
        for up in session.ups:  # the watchers wait for faults for the whole session
            up.timeout_s = 24 * 3600.0
            self.spawn(self._watch_up, session, up)
        return session

    async def _close(self, session: RouteSession) -> None:
        session.closed = True
        consensus = self.consensus
        window = consensus.tally_window_s if consensus is not None and session.redundant else 0.0
        session.late_until = trio.current_time() + max(2.0, window)
        self.sessions.pop(session.task.task_id, None)
        end_hops = getattr(self.hop, "end_hops", None)
        if end_hops is not None:  # erase the session's hop keys
            end_hops(session.task.task_id)
        ups = session.ups or ([session.up] if session.up is not None else [])
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
                with trio.fail_after(2.0):
                    await self.node.ping(pid, count=1)
            except (P2PInferError, trio.TooSlowError, OSError):
                dead.append(pid)

        async with trio.open_nursery() as n:
            for pid in peers:
                n.start_soon(probe, pid)
        return dead[0] if dead else None

    async def _step(self, session: RouteSession, seq: int, pos: int, hidden: torch.Tensor
                    ) -> torch.Tensor:
        ups = session.ups or [session.up]
        for up, first in zip(ups, session.route[0].replicas):
            fields = await self.hop.pack(hidden, HopContext(session.task.task_id, 0, seq, first))
            try:
                await up.send("step", {"seq": seq, "pos": pos, **fields})
            except (P2PInferError, OSError) as e:
                raise StageFailure(0, first, f"could not send to stage 0: {e}") from None
        if len(session.route[-1].replicas) > 1:
            return await self._voted_step(session, seq)
        with trio.move_on_after(self.settings.step_timeout_s):
            while True:
                try:
                    item = await session.result_recv.receive()
                except trio.EndOfChannel:
                    raise StageFailure(None, None, "the session closed") from None
                if isinstance(item, StageFailure):
                    raise item
                if item.seq == seq:
                    check = self.checks.get(session.task.mode)
                    if check is not None:
                        await check.check(session, hidden, item)
                    return item.hidden
        raise StageFailure(None, None, f"step {seq} got no answer in {self.settings.step_timeout_s} s")

    async def _voted_step(self, session: RouteSession, seq: int) -> torch.Tensor:
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
            with trio.fail_after(self.settings.step_timeout_s):
                chosen = await consensus.vote_results(session.task, seq, results, more)
        except trio.TooSlowError:
            raise StageFailure(last, None, f"step {seq}: no majority of stage {last} answered "
                               f"in {self.settings.step_timeout_s} s") from None
        except NoMajorityError as e:
            raise InferenceError(f"task failed: {e}") from None
        for peer, result in results.items():
            consensus.observe_result(session.task, peer, result.hidden, result.hidden is chosen)
        return chosen

    async def _audit(self, session: RouteSession, sent: torch.Tensor, result: torch.Tensor
                     ) -> None:
        """After a prefill: CDV on the answer and, for stages with one replica, random audits
        (re-execution on another peer serving the same layers)."""
        consensus = self.consensus
        if consensus is None or session.task.mode != "general":
            return
        task = session.task
        if len(task.route[-1].replicas) == 1:
            consensus.observe_result(task, task.route[-1].replicas[0], result, False)
        if self.settings.audits and any(len(s.replicas) == 1 for s in task.route):
            await consensus.audit_prefill(task, sent, self.candidates())

    # -- noise ---------------------------------------------------------------------------------
    def _protect(self, hidden: torch.Tensor) -> torch.Tensor:
        """Clip and add Gaussian noise to the outgoing activation when configured (noise from
        the OS CSPRNG); the (epsilon, delta) of the last query is kept in `self.privacy`."""
        s = self.settings
        if s.noise_sigma <= 0:
            return hidden
        from p2pinfer.models.noise import BoundaryNoise

        out, cost = BoundaryNoise(s.noise_clip, s.noise_sigma, s.noise_delta).apply(hidden)
        self.privacy = {"epsilon_per_token": cost.epsilon, "epsilon_sequence": cost.epsilon_sequence,
                        "delta": cost.delta, "sigma": cost.sigma, "clip_norm": s.noise_clip}
        return out

    # -- public calls --------------------------------------------------------------------------
    async def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sample: Callable[[torch.Tensor], int],
        *,
        stop_ids: Sequence[int] = (),
    ) -> AsyncIterator[int]:
        """Yield new token ids as they are produced (decoder models)."""
        if not self.info.is_decoder:
            raise InferenceError("generation needs a decoder model; use embed() for encoders")
        prompt = list(prompt_ids)
        if not prompt:
            raise InferenceError("the prompt is empty")
        if len(prompt) + max_new_tokens > self.info.max_positions:
            raise PromptTooLong(
                f"prompt of {len(prompt)} tokens plus {max_new_tokens} new tokens exceeds the "
                f"model's context of {self.info.max_positions} tokens")
        history = list(prompt)
        produced = 0
        attempts = 0
        while True:
            try:
                async for tok in self._run_route(history, len(prompt) + max_new_tokens,
                                                 max_new_tokens - produced, sample, stop_ids):
                    history.append(tok)
                    produced += 1
                    yield tok
                return
            except StageFailure as failure:
                attempts += 1
                peer = failure.peer_id
                log.warning("route failed (%s); re-planning, attempt %d", failure, attempts)
                if attempts > self.settings.max_replans:
                    raise InferenceError(
                        f"gave up after {attempts - 1} re-plans; last failure: {failure}") from None
                if peer:
                    self.backoff.fail(peer)
                self.replans += 1
                if history and history[-1] in stop_ids:
                    return

    async def _run_route(self, history: list[int], max_length: int, budget: int,
                         sample: Callable[[torch.Tensor], int], stop_ids: Sequence[int],
                         ) -> AsyncIterator[int]:
        if budget <= 0:
            return
        head_cache = self.head.new_cache()
        tail_cache = self.tail.new_cache()
        start, end = self.middle
        local_only = start >= end
        route = [] if local_only else self.plan()
        self.last_route = route
        session = None
        try:
            if route:
                task = Task.create(
                    self.node.identity, network_id=self.node.network_id,
                    model_id=self.info.model_id, requester_addrs=self.node.addrs,
                    route=route, mode=self.settings.mode, max_length=max_length,
                    options=self._task_options(route))
                session = await self._open(task)
                self.last_report = session.report
            pending = list(history)
            pos = 0
            for i in range(budget):
                h = await trio.to_thread.run_sync(self.head.forward, pending, head_cache, pos)
                if session is not None:
                    h = self._protect(h)
                    sent = h
                    try:
                        h = await self._step(session, i, pos, h)
                    except StageFailure as failure:
                        if failure.peer_id is None:
                            failure.peer_id = await self._blame(session, failure)
                        raise
                    if i == 0:
                        await self._audit(session, sent, h)
                logits = await trio.to_thread.run_sync(
                    lambda: self.tail.forward(h, tail_cache, pos, last_only=True))
                tok = int(sample(logits[0, -1]))
                pos += len(pending)
                pending = [tok]
                yield tok
                if tok in stop_ids:
                    break
        finally:
            if session is not None:
                await self._close(session)
            for c in (head_cache, tail_cache):
                if isinstance(c, KVCache):
                    c.erase()

    async def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """The sentence embedding of one token sequence (encoder models)."""
        if self.info.is_decoder:
            raise InferenceError("embed() needs an encoder model; use generate() for decoders")
        if len(ids) > self.info.max_positions:
            raise PromptTooLong(f"input of {len(ids)} tokens exceeds the model's "
                                f"{self.info.max_positions}")
        attempts = 0
        while True:
            try:
                h = await trio.to_thread.run_sync(self.head.forward, list(ids))
                start, end = self.middle
                if start < end:
                    route = self.plan()
                    self.last_route = route
                    task = Task.create(
                        self.node.identity, network_id=self.node.network_id,
                        model_id=self.info.model_id, requester_addrs=self.node.addrs,
                        route=route, mode=self.settings.mode, max_length=len(ids),
                        options=self._task_options(route))
                    session = await self._open(task)
                    try:
                        h = await self._step(session, 0, 0, self._protect(h))
                    except StageFailure as failure:
                        if failure.peer_id is None:
                            failure.peer_id = await self._blame(session, failure)
                        raise
                    finally:
                        await self._close(session)
                return await trio.to_thread.run_sync(self.tail.forward, h)
            except StageFailure as failure:
                attempts += 1
                if attempts > self.settings.max_replans:
                    raise InferenceError(f"gave up after {attempts - 1} re-plans: {failure}") from None
                if failure.peer_id:
                    self.backoff.fail(failure.peer_id)
                self.replans += 1


