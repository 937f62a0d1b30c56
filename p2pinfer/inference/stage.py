"""The stage side: serve a layer span to the routes that name this peer.

Protocol `/p2pinfer/stage/1.0.0` (protocols/stage.md). A route is a chain of hops
requester -> stage 0 -> ... -> stage n-1 -> requester. Each hop is one long-lived framed stream,
opened by the upstream side:

1. upstream sends `open {task, stage}`; the receiver checks the requester's signature, the network,
   the deadline, that the route names it for that stage, that it serves the model and layers, and
   that the upstream peer is the requester (stage 0) or a replica of the previous stage;
2. the receiver opens its own downstream hop (the next stage, or the requester's result hop after
   the last stage) and answers `ready` once the downstream answered `ready`: the whole chain
   exists before the first activation moves;
3. upstream sends `step {seq, pos, ...hidden}`; the stage runs its layers (in a worker thread),
   pushes `step` downstream, and never answers upstream: there is no orchestrator in the middle;
4. a failure anywhere becomes `fault {stage, peer_id, code, message}` sent upstream and relayed
   hop by hop to the requester, which re-plans around the faulty peer;
5. `close` (or the upstream stream ending, or the session idling past its TTL) erases the session's
   KV cache and buffers and closes the downstream hop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import trio

from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.inference.hop import HopCodec, HopContext, PlainHop
from p2pinfer.inference.task import Task
from p2pinfer.models import KVCache, LayerSpan
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.net.streams import FramedStream
from p2pinfer.wire import ACTIVATION_DTYPES, EndOfStream, Message

log = logging.getLogger(__name__)

STAGE_PROTOCOL = "stage"


class StageError(P2PInferError):
    code = "stage-failed"


class ModelMismatch(StageError):
    code = "wrong-model"


class NotInRoute(StageError):
    code = "not-in-route"


class ModeUnsupported(StageError):
    code = "mode-unsupported"


class SessionLimit(StageError):
    code = "busy"


class UpstreamRejected(StageError):
    """A runner caught an upstream stage cheating (e.g. a failed proof); `blame` is (stage,
    peer) of the stage to name in the fault sent both ways."""

    def __init__(self, stage: int, peer: str, message: str) -> None:
        super().__init__(message)
        self.blame = (stage, peer)


@dataclass
class StageSettings:
    #: a session idle longer than this is erased
    session_ttl_s: float = 300.0
    max_sessions: int = 32
    #: how long the whole downstream chain may take to answer `ready`
    open_timeout_s: float = 30.0


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class StageSession:
    task: Task
    stage: int
    start: int
    end: int
    cache: KVCache | None
    upstream: str
    downstream: str
    last_used: float = field(default_factory=time.monotonic)
    steps: int = 0
    #: the last step sequence number run (steps at or below it are duplicates, e.g. a stalled
    #: upstream's late copy of a step already fetched from a majority replica)
    last_seq: int = -1
    erased: bool = False
    #: inputs fetched from a majority replica instead of the own upstream's copy
    fetches: int = 0
    #: TEST-ONLY: the cache of a `skip-layer` cheat's shorter span (p2pinfer.inference.testing)
    fault_cache: KVCache | None = None
    #: a runner's own per-session state that holds secrets or caches (critical mode: the
    #: committed KV caches of a proven generation), closed with the session
    runner_state: Closable | None = None

    def erase(self) -> None:
        for cache in (self.cache, self.fault_cache):
            if cache is not None:
                cache.erase()
        if self.runner_state is not None:
            self.runner_state.close()
            self.runner_state = None
        self.erased = True


async def ensure_connected(node: PeerNetwork, peer_id: str,
                           addrs: tuple[str, ...] | list[str] = ()) -> None:
    """Dial `peer_id` unless connected, from the given addresses or its advert's."""
    if peer_id in node.connected_peers():
        return
    known = list(addrs)
    info = node.peer(peer_id)
    if info is not None:
        known += [a for a in info.addrs if a not in known]
    errors = []
    for addr in known[:8]:
        full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
        try:
            await node.dial(full)
            return
        except P2PInferError as e:
            errors.append(str(e))
    raise StageError(f"cannot reach {peer_id}: " + ("; ".join(errors)[:300] or "no known address"))


class StepRunner(Protocol):
    """How a stage turns one step's input into its output for tasks of one mode.

    `general` runs the float layers; other modes (e.g. `critical`, which runs fixed-point layers
    and attaches a proof) plug in here. `fields` are the incoming step's message fields (after
    the hop codec), so a runner may read what its upstream attached (a proof to verify); the
    returned dict is merged into the outgoing step message.
    """

    #: the dtype (or accepted dtypes) of this mode's activations on the wire
    wire_dtype: str | tuple[str, ...]

    @property
    def busy(self) -> bool:
        """A step is being computed now (the stage's load figure)."""
        ...

    def admit(self, task: Task, start: int, end: int) -> None:
        """At `open`: raise a `StageError` to refuse a task this runner cannot serve."""
        ...

    async def run(self, session: StageSession, view: LayerSpan, hidden: torch.Tensor, pos: int,
                  fields: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]: ...


class StageConsensus(Protocol):
    """What a stage needs of the node's consensus service (redundant general-mode tasks)."""

    async def watch_stalls(self, session: StageSession,
                           inject: trio.MemorySendChannel[Any]) -> None: ...

    def forget_task(self, task_id: bytes) -> None: ...


class FloatRunner:
    """General mode: the span's float layers, one forward pass at a time, in a worker thread."""

    wire_dtype: str | tuple[str, ...] = ACTIVATION_DTYPES

    def __init__(self) -> None:
        self._lock = trio.Lock()  # the CPU is the bottleneck: never run two passes at once
        self.busy = False

    def admit(self, task: Task, start: int, end: int) -> None:
        return None  # any general-mode task of the served model

    async def run(self, session: StageSession, view: LayerSpan, hidden: torch.Tensor, pos: int,
                  fields: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        async with self._lock:
            self.busy = True
            try:
                out = await trio.to_thread.run_sync(view.forward, hidden, session.cache, pos)
            finally:
                self.busy = False
        return out, {}


def span_slice(span: LayerSpan, start: int, end: int) -> LayerSpan:
    """A view of layers [start, end) of a loaded span, sharing its weights."""
    if not span.start <= start < end <= span.end:
        raise NotInRoute(f"layers [{start}, {end}) are outside the served [{span.start}, {span.end})")
    return span.slice(start, end)


class StageServer:
    """Serves one loaded `LayerSpan` on a node. Register with `attach()`, run `run()`."""

    def __init__(
        self,
        node: PeerNetwork,
        span: LayerSpan,
        *,
        hop: HopCodec | None = None,
        settings: StageSettings | None = None,
        runners: dict[str, StepRunner] | None = None,
        consensus: StageConsensus | None = None,
    ) -> None:
        self.node = node
        self.span = span
        self.hop = hop or PlainHop()
        self.settings = settings or StageSettings()
        self.sessions: dict[tuple[bytes, int], StageSession] = {}
        #: how each task mode is computed; a mode missing here is refused at `open`
        self.runners: dict[str, StepRunner] = dict(runners or {"general": FloatRunner()})
        #: `tokens`: token positions received by this stage's sessions
        self.counters: dict[str, int] = {"opened": 0, "steps": 0, "faults": 0, "refused": 0,
                                         "expired": 0, "tokens": 0}
        #: redundancy (claims, votes, fetch), when the node runs it
        self.consensus = consensus

    @property
    def model_id(self) -> str:
        return self.span.info.model_id

    @property
    def load(self) -> float:
        busy = 0.5 if any(r.busy for r in self.runners.values()) else 0.0
        return min(1.0, len(self.sessions) / max(1, self.settings.max_sessions) + busy)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: erase idle sessions."""
        task_status.started()
        while True:
            await trio.sleep(min(5.0, self.settings.session_ttl_s / 4))
            self.reap()

    def reap(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        dead = [k for k, s in self.sessions.items()
                if now - s.last_used > self.settings.session_ttl_s]
        for k in dead:
            self.sessions.pop(k).erase()
        self.counters["expired"] += len(dead)
        return len(dead)

    def cache_bytes(self) -> int:
        return sum(s.cache.nbytes for s in self.sessions.values() if s.cache is not None)

    # -- the hop protocol ----------------------------------------------------------------------
    def _admit(self, task: Task, stage: int, upstream: str) -> tuple[int, int, str]:
        me = self.node.peer_id
        task.verify(network_id=self.node.network_id)
        plan = task.stage_of(me, stage)
        if task.mode not in self.runners:
            raise ModeUnsupported(f"this peer does not run {task.mode!r} tasks")
        # e.g. critical mode: the task's manifest must be ours
        self.runners[task.mode].admit(task, plan.start, plan.end)
        if task.model_id != self.model_id:
            raise ModelMismatch(f"this peer serves {self.model_id}, not {task.model_id}")
        if not (self.span.start <= plan.start and plan.end <= self.span.end):
            raise NotInRoute(
                f"stage {stage} asks for layers [{plan.start}, {plan.end}); this peer serves "
                f"[{self.span.start}, {self.span.end})")
        allowed = {task.requester} if stage == 0 else set(task.route[stage - 1].replicas)
        if upstream not in allowed:
            raise NotInRoute(f"peer {upstream} is not upstream of stage {stage} in this route")
        j = plan.replicas.index(me)
        if stage + 1 < len(task.route):
            nxt = task.route[stage + 1].replicas
            downstream = nxt[j % len(nxt)]
        else:
            downstream = task.requester
        return plan.start, plan.end, downstream

    async def handle(self, up: FramedStream, upstream: str, task: Task, stage: int) -> None:
        """Owns one inbound hop stream (whose `open` was read) for the life of a session."""
        up.timeout_s = self.settings.session_ttl_s
        try:
            start, end, downstream = self._admit(task, stage, upstream)
        except P2PInferError:
            self.counters["refused"] += 1
            raise
        if len(self.sessions) >= self.settings.max_sessions:
            self.reap()
            if len(self.sessions) >= self.settings.max_sessions:
                raise SessionLimit("this stage has no free session slot")
        key = (task.task_id, stage)
        view = span_slice(self.span, start, end)
        old = self.sessions.pop(key, None)
        if old is not None:  # a re-open (replay after a failure elsewhere) starts afresh
            old.erase()
        session = StageSession(task, stage, start, end, view.new_cache(), upstream, downstream)
        self.sessions[key] = session
        self.counters["opened"] += 1
        try:
            down = await self._open_downstream(session, up)
            async with down:
                # if the downstream watcher ends the session first, serve_steps never returns
                outcome = "downstream-lost"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_downstream, session, down, up,
                                       nursery.cancel_scope)
                    inbox_send, inbox = trio.open_memory_channel[Any](4)
                    nursery.start_soon(self._read_upstream, up, inbox_send)
                    if self.consensus is not None:
                        nursery.start_soon(self.consensus.watch_stalls, session,
                                           inbox_send.clone())
                    await up.send("ready", {"stage": stage})
                    outcome = await self._serve_steps(session, view, up, down, inbox)
                    nursery.cancel_scope.cancel()
                if outcome == "upstream-lost" and stage > 0:
                    # tell the rest of the route (and so the requester) who vanished
                    await self._send(down, "fault", {
                        "stage": stage - 1, "peer_id": upstream, "code": "upstream-lost",
                        "message": f"stage {stage - 1} stopped sending to stage {stage}"})
                elif outcome != "downstream-lost":
                    await self._send(down, "close", {})
        finally:
            if self.sessions.get(key) is session:
                del self.sessions[key]
            session.erase()
            if self.consensus is not None:
                self.consensus.forget_task(task.task_id)
            # erase this session's hop keys (in and out)
            self.hop.end_hops(task.task_id, stage)
            self.hop.end_hops(task.task_id, stage + 1)

    async def _send(self, stream: Any, t: str, fields: dict[str, Any]) -> None:
        """Best-effort message on a hop that may already be gone."""
        if "message" in fields:
            fields["message"] = str(fields["message"])[:400]
        with trio.move_on_after(2):
            try:
                await stream.send(t, fields)
            except (P2PInferError, OSError):
                pass

    async def _fault(self, up: FramedStream, session: StageSession, code: str, message: str) -> None:
        self.counters["faults"] += 1
        await self._send_up(up, {"stage": session.stage, "peer_id": self.node.peer_id,
                                 "code": code, "message": message})

    async def _open_downstream(self, session: StageSession, up: FramedStream) -> FramedStream:
        nxt = session.stage + 1
        down = None
        try:
            with trio.fail_after(self.settings.open_timeout_s):
                addrs = session.task.requester_addrs if nxt == len(session.task.route) else ()
                await ensure_connected(self.node, session.downstream, addrs)
                down = await self.node.open_stream(session.downstream, STAGE_PROTOCOL)
                await down.send("open", {"task": session.task.to_wire(), "stage": nxt})
                down.timeout_s = self.settings.open_timeout_s
                reply = await down.recv(expect={"ready", "fault"})
        except (P2PInferError, trio.TooSlowError, OSError) as e:
            if down is not None:
                await down.aclose()
            reason = "timed out" if isinstance(e, trio.TooSlowError) else str(e)
            # whoever is downstream failed to come up: blame it, not us
            await self._send_up(up, {"stage": nxt, "peer_id": session.downstream,
                                     "code": "unreachable",
                                     "message": f"could not open stage {nxt}: {reason}"})
            raise StageError(f"downstream stage {nxt} unreachable") from None
        if reply.t == "fault":  # a stage further down failed to come up: pass its word on
            await down.aclose()
            await self._send_up(up, dict(reply.fields))
            raise StageError("a downstream stage failed to open")
        down.timeout_s = self.settings.session_ttl_s
        return down

    async def _send_up(self, up: FramedStream, fault: dict[str, Any]) -> None:
        await self._send(up, "fault", fault)

    async def _watch_downstream(self, session: StageSession, down: FramedStream, up: FramedStream,
                                scope: trio.CancelScope) -> None:
        """Relay `fault`s from downstream to upstream. If the downstream hop dies, report that
        peer upstream and end the session."""
        try:
            while True:
                msg = await down.recv(expect={"fault"})
                await self._send_up(up, dict(msg.fields))
        except (EndOfStream, P2PInferError, OSError) as e:
            log.debug("downstream hop of stage %d ended: %s", session.stage, e)
            await self._send_up(up, {
                "stage": session.stage + 1, "peer_id": session.downstream,
                "code": "downstream-lost",
                "message": f"stage {session.stage + 1} dropped its hop from stage {session.stage}"})
            scope.cancel()

    async def _read_upstream(self, up: FramedStream, inbox: trio.MemorySendChannel[Any]) -> None:
        """Hand the upstream hop's messages (or the error that ended it) to the step loop."""
        async with inbox:
            while True:
                try:
                    msg = await up.recv(expect={"step", "close", "fault"})
                except (EndOfStream, P2PInferError, OSError) as e:
                    await inbox.send(e)
                    return
                await inbox.send(msg)
                if msg.t != "step":
                    return

    async def _serve_steps(self, session: StageSession, view: LayerSpan, up: FramedStream, down: FramedStream,
                           inbox: trio.MemoryReceiveChannel[Any]) -> str:
        """Run steps until the session ends; returns how it ended: `closed`, `upstream-lost`,
        `downstream-lost`, `bad-input` or `fault-forwarded`. Steps come from the upstream hop, or
        (redundant stages) from a majority replica when the own upstream stalled."""

        info = self.span.info
        max_bytes = self.node.config.limits.max_tensor_bytes
        while True:
            try:
                item = await inbox.receive()
            except trio.EndOfChannel:
                return "upstream-lost"
            if isinstance(item, BaseException):
                if isinstance(item, WireError):  # garbage from upstream
                    await self._fault(up, session, item.code, str(item))
                    return "bad-input"
                return "upstream-lost"
            if not isinstance(item, Message):  # a step fetched from a majority replica
                msg = Message(1, "step", {"seq": item.seq, "pos": item.pos, "fetched": True})
                fetched: torch.Tensor | None = item.hidden
            else:
                msg, fetched = item, None
            if msg.t == "close":
                return "closed"
            if msg.t == "fault":  # an upstream stage reports a vanished peer: pass it on
                await self._send(down, "fault", dict(msg.fields))
                return "fault-forwarded"
            ctx_in = HopContext(session.task.task_id, session.stage, 0, session.upstream)
            try:
                seq = msg.get("seq", int)
                pos = msg.get("pos", int)
                if seq <= session.last_seq:
                    continue  # already run (fetched from a majority replica)
                session.last_seq = seq
                ctx_in = HopContext(session.task.task_id, session.stage, seq, session.upstream)
                runner = self.runners[session.task.mode]
                if fetched is not None:  # any float precision: the span casts it
                    hidden = fetched
                else:  # a runner may take another wire dtype (critical: fixed-point int64);
                    # float activations of any precision are cast by the span
                    hidden = await self.hop.unpack(
                        msg.fields, ctx_in, hidden_size=info.hidden_size,
                        dtype=runner.wire_dtype,
                        max_bytes=max_bytes)
                if hidden.shape[1] + pos > session.task.max_length:
                    raise StageError(f"positions up to {hidden.shape[1] + pos} exceed the task's "
                                     f"max_length {session.task.max_length}")
                session.last_used = time.monotonic()
                out, extra = await runner.run(session, view, hidden, pos, msg.fields)
            except (WireError, P2PInferError) as e:
                if isinstance(e, UpstreamRejected):  # the runner caught an upstream stage (a
                    # failed proof): name it both ways, so a cheat upstream cannot swallow it
                    self.counters["faults"] += 1
                    fault = {"stage": e.blame[0], "peer_id": e.blame[1], "code": e.code,
                             "message": str(e)}
                    await self._send_up(up, dict(fault))
                    await self._send(down, "fault", fault)
                    return "fault-forwarded"
                # bad input from upstream: a typed fault back, the session ends, the stage
                # keeps serving everyone else
                await self._fault(up, session, getattr(e, "code", "bad-input"), str(e))
                return "bad-input"
            session.steps += 1
            self.counters["steps"] += 1
            self.counters["tokens"] += int(hidden.shape[1])
            ctx_out = HopContext(session.task.task_id, session.stage + 1, seq, session.downstream)
            try:
                fields = await self.hop.pack(out, ctx_out)
            except P2PInferError as e:  # e.g. no attested channel to the next stage
                await self._send_up(up, {
                    "stage": session.stage + 1, "peer_id": session.downstream,
                    "code": getattr(e, "code", "hop-failed"), "message": str(e)})
                return "downstream-lost"
            del hidden, out
            try:
                await down.send("step", {**extra, "seq": seq, "pos": pos, **fields})
            except (P2PInferError, OSError):
                await self._send_up(up, {
                    "stage": session.stage + 1, "peer_id": session.downstream,
                    "code": "downstream-lost",
                    "message": f"stage {session.stage + 1} stopped taking steps"})
                return "downstream-lost"
