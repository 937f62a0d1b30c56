"""Redundant general-mode inference on the network: claims, votes, fetch, audits, CDV, bans.

Paper, section "Consensus-based verification" (CBV, sharded form; CDV; reputation); DESIGN.md,
"Flow of a general-mode request", step 4; wire formats in protocols/stage.md ("Redundant
stages") and protocols/votes.md. The pure pieces (fingerprints, claims, vote, evidence,
reputation, CDV, audit maths) live in `p2pinfer.consensus`; this module runs them between peers:

- A replica of stage i signs a `FingerprintClaim` of each output, sends it in-band to its own
  downstream replica (on the hop stream) and out-of-band to every other replica of stage i+1
  (`/p2pinfer/votes/1.0.0`, message `claim`), and keeps the output a while for `fetch`.
- A replica of stage i+1 (and the requester, after the last stage) waits until a majority of the
  m claims agree (bounded wait), checks its own tensor against the majority fingerprint and
  fetches the tensor from a majority replica when its copy does not match or never came (a
  stalled upstream must not stall the route). Traffic per hop: m tensors and m^2 small claims.
- After a short grace for late claims, the voter tallies all claims it holds: agreeing peers gain
  reputation, missing ones lose some, dissenters whose fault is provable at the network's
  evidence tolerance are accused with signed `FaultEvidence`. Tallies (those with dissent or
  missing replicas, and the first of each task and stage) and all evidence go out on the gossip
  topic `p2pinfer/<net>/votes/1`; every node verifies evidence it hears and bans the accused in
  its own `ReputationBook`, so bans are network-wide without a coordinator. Planners skip
  banned peers.
- With m = 1 the requester audits a random fraction of stages (more for low reputation): it
  fetches a stage's prefill input and output and has another peer serving those layers re-run
  them (`audit`); a mismatch becomes fault evidence against the stage (the auditor's claim is
  the majority of one).
- `DistributionWatch` keeps per (model, stage) output statistics on the requester and flags a
  peer whose outputs drift from the reference profile, whatever m is.

The claim box, the report and the distribution watch are pure (`p2pinfer.consensus`); the
TEST-ONLY cheating runners live in `p2pinfer.inference.testing`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import trio

from p2pinfer.consensus import (
    EVIDENCE_MARGIN,
    EVIDENCE_TOLERANCE,
    TOLERANCE_BFLOAT16,
    AuditPolicy,
    ConsensusError,
    EvidenceError,
    FaultEvidence,
    FingerprintClaim,
    FingerprintContext,
    FingerprintError,
    InlinedPeerKeys,
    MalformedVoteMessage,
    NoMajorityError,
    ReputationBook,
    VoteOutcome,
    build_fault_evidence,
    decode_claim,
    decode_fault_evidence,
    decode_tally,
    fingerprint,
    pair_tolerance,
    precision_class,
    sign_claim,
    stricter,
    tally,
    tolerance_for,
    verify_fault_evidence,
)
from p2pinfer.consensus.claimbox import ClaimBox, wait_majority
from p2pinfer.consensus.commit import (
    decode_commit,
    sealed_context_over,
    sign_commit,
)
from p2pinfer.consensus.errors import FingerprintMismatch
from p2pinfer.consensus.report import StageReport, VerificationReport
from p2pinfer.consensus.watch import DistributionWatch
from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.inference.client import StepResult
from p2pinfer.inference.hop import (
    SIDE_AUDIT,
    SIDE_FETCH,
    HopCodec,
    HopContext,
    PlainHop,
    side_label,
)
from p2pinfer.inference.stage import StepRunner, ensure_connected
from p2pinfer.inference.task import Task, TaskError
from p2pinfer.models import LayerSpan
from p2pinfer.models.info import dtype_name
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.wire import (
    ACTIVATION_DTYPES,
    Message,
    encode_message,
)

log = logging.getLogger(__name__)

VOTES_PROTOCOL = "votes"
VOTES_TOPIC = "votes"
#: fault evidence bans at once, network-wide, so it is judged at EVIDENCE_MARGIN times each
#: pair's class tolerance, at most EVIDENCE_TOLERANCE (p2pinfer.consensus.fingerprint): a
#: verdict never depends on the task's own tolerance, and a dissent that honest rounding could
#: still explain costs reputation only
DEFAULT_TOLERANCE = TOLERANCE_BFLOAT16
MAX_TOLERANCE = 0.5
MAX_STORED_OUTPUTS = 256
MAX_REPORTED_TASKS = 256


class ConsensusFailure(P2PInferError):
    """A redundant stage could not be verified (no majority, nothing matching to fetch)."""

    code = "no-majority"

    def __init__(self, stage: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class VoteTimings:
    """How long voters wait: for a majority, then for stragglers, then before fetching."""

    #: the most a stage waits for a majority of claims before the step fails (the requester
    #: bounds its own vote by its step timeout)
    majority_timeout_s: float = 30.0
    #: after a majority agreed, how long the tally waits for the remaining claims
    late_grace_s: float = 1.0
    #: a replica whose claim is still absent then is waited for this much longer before it
    #: counts as missing (slow honest peers must not lose reputation)
    missing_grace_s: float = 5.0
    #: a replica whose own upstream has not delivered a step that a majority already claimed
    #: fetches it from a majority replica after this long
    stall_grace_s: float = 1.0
    #: sealed steps: how long a replica waits for a majority of its stage's output
    #: commitments, then how much longer for the rest before it seals over those it holds
    commit_timeout_s: float = 30.0
    commit_grace_s: float = 1.0


@dataclass
class StoredOutput:
    task: Task
    stage: int
    step: int
    pos: int
    hidden: torch.Tensor
    claim: bytes


@dataclass
class FetchedOutput:
    """A stage output fetched from one replica: the tensor, that replica's claim on it (if
    any) and the KV position it was computed at, all from the same reply."""

    hidden: torch.Tensor
    claim: FingerprintClaim | None
    pos: int


@dataclass
class FetchedStep:
    """A step a replica fetched from a majority replica because its own upstream stalled."""

    seq: int
    pos: int
    hidden: torch.Tensor


def task_sealed(task: Task, stage: int) -> bool:
    """Whether the claims of `stage` are revealed under a seal of the replicas' output
    commitments (the requester's signed `options.sealed`, for stages of m > 1)."""
    return task.options.get("sealed") is True and len(task.route[stage].replicas) > 1


def task_tolerance(task: Task) -> float:
    """The vote tolerance the requester signed into the task (`options.tolerance`)."""
    value = task.options.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0.0 < float(value) <= MAX_TOLERANCE):
        raise TaskError(f"task tolerance must be a number in (0, {MAX_TOLERANCE}]")
    return float(value)


def peer_tolerance(node: PeerNetwork, peer_id: str) -> float:
    """The vote tolerance a peer's advertised compute precision needs; a peer that states
    none, or one not calibrated, gets the bfloat16 tolerance."""
    row = node.peer(peer_id)
    try:
        return tolerance_for([row.advert.precision if row is not None else ""])
    except FingerprintError:
        return DEFAULT_TOLERANCE


def advertised_class(node: PeerNetwork, peer_id: str) -> str:
    """The precision class a peer's advert states; one that states none, or one not
    calibrated, counts as bfloat16."""
    row = node.peer(peer_id)
    try:
        return precision_class(row.advert.precision if row is not None else "")
    except FingerprintError:
        return "bfloat16"


def claim_context(task: Task, stage: int, step: int) -> FingerprintContext:
    return FingerprintContext(task.network_id, task.task_id, stage, step)


class ConsensusRunner:
    """General-mode step runner with redundancy: votes on the input, claims the output."""

    def __init__(self, inner: StepRunner, consensus: ConsensusService) -> None:
        self.inner = inner
        self.consensus = consensus
        self.wire_dtype = inner.wire_dtype

    @property
    def busy(self) -> bool:
        return self.inner.busy

    def admit(self, task: Task, start: int, end: int) -> None:
        self.inner.admit(task, start, end)

    async def run(self, session: Any, view: Any, hidden: torch.Tensor, pos: int,
                  fields: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        task, stage = session.task, session.stage
        seq = fields.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise WireError("step seq must be an integer")
        if stage > 0 and len(task.route[stage - 1].replicas) > 1 and not fields.get("fetched"):
            hidden = await self.consensus.verified_input(session, hidden, fields, seq)
        out, extra = await self.inner.run(session, view, hidden, pos, fields)
        claim = await self.consensus.claim_output(session, out, seq, pos)
        extra = {k: v for k, v in extra.items() if k != "claim"}
        if claim is not None:
            extra["claim"] = claim
        return out, extra


class ConsensusService:
    """Claims, votes, fetches, audits, evidence and reputation for one node."""

    def __init__(self, node: PeerNetwork, *, hop: HopCodec | None = None,
                 served_span: Callable[[], LayerSpan | None] = lambda: None,
                 timings: VoteTimings | None = None, audit: AuditPolicy | None = None) -> None:
        self.node = node
        #: how activations of fetch replies and audit requests travel (as on the route)
        self.hop: HopCodec = hop or PlainHop()
        #: the layers this node serves, if any (audits re-run them)
        self.served_span = served_span
        self.keys = InlinedPeerKeys()
        self.book = ReputationBook(time.monotonic)
        self.claims = ClaimBox(self.keys)
        self.outputs: OrderedDict[tuple[bytes, int, int], StoredOutput] = OrderedDict()
        self.timings = timings or VoteTimings()
        self.audit_policy = audit or AuditPolicy()
        self._audit_key = os.urandom(32)
        self.cdv = DistributionWatch()
        #: verification reports of tasks this node requested, by task id
        self.reports: OrderedDict[bytes, VerificationReport] = OrderedDict()
        self._task_stages: dict[bytes, tuple[Any, ...]] = {}
        self._published_first: set[tuple[bytes, int]] = set()
        self._nursery: trio.Nursery | None = None
        self.counters: dict[str, int] = {
            "claims_sent": 0, "claims_received": 0, "claims_rejected": 0, "votes": 0,
            "fetches": 0, "fetches_served": 0, "fetches_refused": 0, "stall_fetches": 0,
            "tallies_published": 0, "tallies_heard": 0, "evidence_published": 0,
            "evidence_accepted": 0, "evidence_rejected": 0, "audits": 0, "audits_failed": 0,
            "audits_served": 0, "timeouts": 0, "dissents": 0, "commits_sent": 0,
            "commits_received": 0, "commits_rejected": 0, "sealed_claims": 0,
            "unsealed_claims": 0, "full_reveals": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.node.set_handler(VOTES_PROTOCOL, self._serve)
            ready = trio.Event()
            nursery.start_soon(self._listen, ready)
            await ready.wait()
            task_status.started()
            await trio.sleep_forever()

    def spawn(self, fn: Any, *args: Any) -> None:
        """Start background work (a vote, a delayed forget) in the service's nursery; once the
        node is shutting down (the nursery closed) there is nothing left to do it for."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError:  # "Nursery is closed to new arrivals": the node is stopping
            log.debug("not starting %s: the node is stopping", getattr(fn, "__name__", fn))

    def banned(self) -> set[str]:
        """Peers this node currently refuses to route to."""
        return {p for p in list(self.book._peers) if self.book.is_banned(p)}

    def status(self) -> dict[str, Any]:
        return {**self.counters, "banned": sorted(self.banned()),
                "cdv_flags": self.cdv.flagged()}

    # -- gossip ------------------------------------------------------------------------------
    async def _listen(self, ready: trio.Event) -> None:
        async with self.node.subscribe(VOTES_TOPIC) as messages:
            ready.set()
            async for origin, payload in messages:
                try:
                    self.accept_gossip(origin, payload)
                except (P2PInferError, ValueError) as e:
                    log.debug("votes message from %s dropped: %s", origin, e)

    def accept_gossip(self, origin: str, payload: bytes) -> None:
        """Handle one votes-topic message: verify evidence (ban) or note a tally."""
        kind = _message_type(payload)
        if kind == "fault":
            self.accept_evidence(decode_fault_evidence(payload))
        elif kind == "tally":
            t = decode_tally(payload)
            t.verify(self.keys)
            self.counters["tallies_heard"] += 1
            report = self.reports.get(t.task_id)
            if report is not None and t.stage < len(report.stages) \
                    and t.reporter in self._route_peers(t.task_id):
                rep = report.stages[t.stage]
                rep.votes += 1
                rep.agreeing.update(t.agreeing)
                rep.dissenting.update(t.dissenting)
                rep.missing.update(t.missing)
        else:
            raise MalformedVoteMessage("votes message is neither a tally nor fault evidence")

    @property
    def precision(self) -> str:
        """The precision class this node computes in: its served span's, float32 when it
        serves none (a requester's tail)."""
        span = self.served_span()
        return precision_class(dtype_name(span.dtype)) if span is not None else "float32"

    def admit_claim(self, claim: FingerprintClaim, sender: str) -> None:
        """Add a decoded claim to the box. A claim that states a looser precision class than
        its replica advertises is refused (MalformedVoteMessage): a float32 peer cannot buy
        itself the bfloat16 tolerance."""
        if stricter(advertised_class(self.node, claim.replica), claim.precision):
            raise MalformedVoteMessage(
                f"claim by {claim.replica} states {claim.precision}, its advert a stricter class")
        self.claims.add(claim, sender=sender)

    def accept_evidence(self, evidence: FaultEvidence) -> bool:
        """Verify fault evidence and ban the accused; returns whether it was new."""
        try:
            accused = verify_fault_evidence(evidence, self.keys, EVIDENCE_TOLERANCE,
                                            self.node.network_id, EVIDENCE_MARGIN)
        except (EvidenceError, ConsensusError):
            self.counters["evidence_rejected"] += 1
            raise
        new = self.book.record_verified_fault(accused, evidence.digest())
        if new:
            self.counters["evidence_accepted"] += 1
            report = self.reports.get(evidence.dissent.task_id)
            if report is not None:
                if accused not in report.evidence:
                    report.evidence.append(accused)
                    report.banned.append(accused)
                stage = evidence.dissent.stage
                if stage < len(report.stages):
                    report.stages[stage].dissenting.add(accused)
        return new

    def _route_peers(self, task_id: bytes) -> set[str]:
        return {p for s in self._task_stages.get(task_id, ()) for p in s.replicas}

    async def _publish(self, payload: bytes) -> None:
        try:
            await self.node.publish(VOTES_TOPIC, payload)
        except (P2PInferError, ValueError, OSError) as e:
            log.debug("votes publish failed: %s", e)

    # -- the votes request protocol ----------------------------------------------------------
    async def _serve(self, msg: Message, peer_id: str) -> bytes:
        if msg.t == "claim":
            try:
                claim = decode_claim(msg.get("claim", bytes))
                self.admit_claim(claim, peer_id)
            except (ConsensusError, MalformedVoteMessage) as e:
                self.counters["claims_rejected"] += 1
                raise WireError(f"claim rejected: {e}") from None
            self.counters["claims_received"] += 1
            return encode_message("ok")
        if msg.t == "commit":
            try:
                self.claims.add_commit(decode_commit(msg.get("commit", bytes)), sender=peer_id)
            except (ConsensusError, MalformedVoteMessage) as e:
                self.counters["commits_rejected"] += 1
                raise WireError(f"commitment rejected: {e}") from None
            self.counters["commits_received"] += 1
            return encode_message("ok")
        if msg.t == "fetch":
            return await self._serve_fetch(msg, peer_id)
        if msg.t == "audit":
            return await self._serve_audit(msg, peer_id)
        raise WireError(f"unexpected votes message {msg.t[:32]!r}")

    async def _serve_fetch(self, msg: Message, peer_id: str) -> bytes:
        key = (msg.get("task", bytes), msg.get("stage", int), msg.get("step", int))
        stored = self.outputs.get(key)
        if stored is None:
            raise WireError("no such output here (never computed or already dropped)")
        task, stage = stored.task, stored.stage
        allowed = {task.requester}
        if stage + 1 < len(task.route):
            allowed |= set(task.route[stage + 1].replicas)
        if peer_id not in allowed:
            self.counters["fetches_refused"] += 1
            raise TaskError(f"peer {peer_id} is not downstream of stage {stage}")
        self.counters["fetches_served"] += 1
        return encode_message("output", {**await self._tensor_fields(
            stored.hidden, task, SIDE_FETCH, stage, stored.step, peer_id),
            "pos": stored.pos, "claim": stored.claim})

    async def _tensor_fields(self, hidden: torch.Tensor, task: Task, side: int, stage: int,
                             step: int, peer: str) -> dict[str, Any]:
        """An activation for a fetch reply or an audit request: sealed under a one-shot hop
        of the attested channel to `peer` when channels are required, else in the clear
        (inside libp2p's Noise stream), as on the route itself."""
        return await self.hop.seal_once(hidden, HopContext(task.task_id, side_label(side, stage),
                                                           step, peer))

    async def _tensor_from(self, fields: dict[str, Any], task: Task, side: int, stage: int,
                           step: int, peer: str, hidden_size: int | None) -> torch.Tensor:
        max_bytes = self.node.config.limits.max_tensor_bytes
        return await self.hop.open_once(
            fields, HopContext(task.task_id, side_label(side, stage), step, peer),
            hidden_size=hidden_size, dtype=ACTIVATION_DTYPES, max_bytes=max_bytes)

    async def _serve_audit(self, msg: Message, peer_id: str) -> bytes:
        span = self.served_span()
        if span is None:
            raise TaskError("this peer serves no layers to audit")
        task = Task.from_wire(msg.get("task", dict))
        task.verify(network_id=self.node.network_id)
        if task.requester != peer_id:
            raise TaskError("only the task's requester may ask for an audit")
        stage = msg.get("stage", int)
        if not 0 <= stage < len(task.route):
            raise TaskError(f"route has no stage {stage}")
        plan = task.route[stage]
        if task.model_id != span.info.model_id or not (
                span.start <= plan.start and plan.end <= span.end):
            raise TaskError("this peer does not serve the audited layers")
        hidden = await self._tensor_from(msg.fields, task, SIDE_AUDIT, stage, 0, peer_id,
                                         span.info.hidden_size)
        view = span.slice(plan.start, plan.end)
        out = await trio.to_thread.run_sync(view.forward, hidden, view.new_cache(), 0)
        claim = sign_claim(self.node.identity, self.node.peer_id,
                           claim_context(task, stage, 0), 1, fingerprint(out, claim_context(
                               task, stage, 0)), self.precision)
        self.counters["audits_served"] += 1
        return encode_message("audited", {"claim": claim.encode()})

    async def fetch(self, peer: str, task: Task, stage: int, step: int,
                    hidden_size: int | None = None) -> FetchedOutput:
        """Fetch a stage output from the replica `peer` (RemoteError when it refuses)."""
        self.counters["fetches"] += 1
        await ensure_connected(self.node, peer)
        reply = await self.node.request(peer, VOTES_PROTOCOL, "fetch",
                                        {"task": task.task_id, "stage": stage, "step": step},
                                        timeout=10.0, expect={"output"})
        hidden = await self._tensor_from(reply.fields, task, SIDE_FETCH, stage, step, peer,
                                         hidden_size)
        claim = None
        raw = reply.get("claim", bytes, b"")
        if raw:
            claim = decode_claim(raw)
            if claim.replica != peer:
                raise MalformedVoteMessage("fetched claim is not by the replica that sent it")
            claim.verify(self.keys)
        return FetchedOutput(hidden, claim, reply.get("pos", int, 0))

    # -- stage side --------------------------------------------------------------------------
    async def claim_output(self, session: Any, out: torch.Tensor, seq: int, pos: int
                           ) -> bytes | None:
        """Sign, keep and fan out the claim for this stage output; None when nobody votes on
        it (m = 1 past the prefill, where only audits look)."""
        task, stage = session.task, session.stage
        m = len(task.route[stage].replicas)
        if m == 1 and seq != 0:
            return None
        ctx = claim_context(task, stage, seq)
        if task_sealed(task, stage):
            ctx, complete = await self._seal(task, stage, seq, out, ctx)
            if not complete:  # reveal again under the full seal if the rest commit late
                self.spawn(self._reveal_full, task, stage, seq, out.detach().clone())
        fp = await trio.to_thread.run_sync(fingerprint, out, ctx)
        claim = sign_claim(self.node.identity, self.node.peer_id, ctx, m, fp, self.precision)
        encoded = claim.encode()
        self._store(StoredOutput(task, stage, seq, pos, out.detach().clone(), encoded))
        if m > 1 and stage + 1 < len(task.route):
            for peer in task.route[stage + 1].replicas:
                if peer != session.downstream:
                    self.spawn(self._send_claim, peer, encoded)
        return encoded

    def _store(self, item: StoredOutput) -> None:
        self.outputs[(item.task.task_id, item.stage, item.step)] = item
        while len(self.outputs) > MAX_STORED_OUTPUTS:
            _, dropped = self.outputs.popitem(last=False)
            dropped.hidden.zero_()

    def forget_task(self, task_id: bytes) -> None:
        """A session ended. Its kept outputs stay fetchable, and its claims countable, for as
        long as a late claim can still count in a tally (`tally_window_s`): a replica that lags
        behind a stalled upstream fetches its input from them after the requester is done, so
        its claim is tallied instead of being reported missing. Then they are zeroed and
        dropped."""
        if self._nursery is None:
            self._drop_outputs(task_id)
            self.claims.forget(task_id)
        else:
            self.spawn(self._forget_later, task_id)

    @property
    def tally_window_s(self) -> float:
        """How long after a majority a late claim still counts in the background tally."""
        return self.timings.late_grace_s + self.timings.missing_grace_s

    def _drop_outputs(self, task_id: bytes) -> None:
        for key in [k for k in self.outputs if k[0] == task_id]:
            item = self.outputs.pop(key)
            item.hidden.zero_()

    async def _forget_later(self, task_id: bytes) -> None:
        await trio.sleep(self.tally_window_s)
        self._drop_outputs(task_id)
        await trio.sleep(1.0)
        self.claims.forget(task_id)

    async def _send_claim(self, peer: str, encoded: bytes) -> None:
        await self._send_vote(peer, "claim", encoded)

    async def _send_vote(self, peer: str, kind: str, encoded: bytes) -> None:
        """Deliver a claim or an output commitment (best effort: a voter that misses it counts
        the replica as missing)."""
        try:
            with trio.fail_after(10):
                await ensure_connected(self.node, peer)
                await self.node.request(peer, VOTES_PROTOCOL, kind, {kind: encoded},
                                        timeout=10.0, expect={"ok"})
            self.counters[f"{kind}s_sent"] += 1
        except (P2PInferError, trio.TooSlowError, OSError) as e:
            log.debug("%s to %s not delivered: %s", kind, peer, e)

    async def _seal(self, task: Task, stage: int, seq: int, out: torch.Tensor,
                    ctx: FingerprintContext) -> tuple[FingerprintContext, bool]:
        """Commit before the seed (protocols/votes.md): sign a commitment to this output, send
        it to the stage's other replicas and to its voters (the next stage's replicas, or the
        requester), wait for the others' commitments (all of them, or a majority and then
        `commit_grace_s` more), and return the context sealed over those held. Without a
        majority of commitments in `commit_timeout_s` the claim stays unsealed, and voters of a
        sealed step do not count it. Also returns whether all m commitments were in."""
        replicas = task.route[stage].replicas
        me = self.node.peer_id
        commit = await trio.to_thread.run_sync(sign_commit, self.node.identity, me, ctx,
                                               len(replicas), out)
        self.claims.add_commit(commit)
        encoded = commit.encode()
        voters = (list(task.route[stage + 1].replicas) if stage + 1 < len(task.route)
                  else [task.requester])
        for peer in [p for p in replicas if p != me] + voters:
            self.spawn(self._send_vote, peer, "commit", encoded)
        key = (task.task_id, stage, seq)
        need = len(replicas) // 2 + 1

        def held() -> int:
            return len(self.claims.commits(key, replicas))

        with trio.move_on_after(self.timings.commit_timeout_s):
            while held() < need:
                await self.claims.changed(key)
        if held() < need:
            self.counters["unsealed_claims"] += 1
            log.debug("stage %d step %d: no majority of commitments; claim left unsealed",
                      stage, seq)
            return ctx, False
        with trio.move_on_after(self.timings.commit_grace_s):
            while held() < len(replicas):
                await self.claims.changed(key)
        self.counters["sealed_claims"] += 1
        commits = self.claims.commits(key, replicas)
        return sealed_context_over(commits, replicas), len(commits) == len(replicas)

    async def _reveal_full(self, task: Task, stage: int, seq: int, out: torch.Tensor) -> None:
        """A replica that sealed over a majority of commitments because the rest were late
        reveals again under the full seal once they are all in (within the tally window):
        its fellow replicas that waited longer sealed over all m, and claims under different
        seals are never compared, so without this an honest replica could split the vote."""
        replicas = task.route[stage].replicas
        key = (task.task_id, stage, seq)
        with trio.move_on_after(self.tally_window_s):
            while len(self.claims.commits(key, replicas)) < len(replicas):
                await self.claims.changed(key)
        commits = self.claims.commits(key, replicas)
        if len(commits) < len(replicas):
            return
        ctx = sealed_context_over(commits, replicas)
        fp = await trio.to_thread.run_sync(fingerprint, out, ctx)
        claim = sign_claim(self.node.identity, self.node.peer_id, ctx, len(replicas), fp,
                           self.precision)
        self.counters["full_reveals"] += 1
        voters = (list(task.route[stage + 1].replicas) if stage + 1 < len(task.route)
                  else [task.requester])
        encoded = claim.encode()
        for peer in voters:
            self.spawn(self._send_claim, peer, encoded)

    async def verified_input(self, session: Any, hidden: torch.Tensor, fields: dict[str, Any],
                             seq: int) -> torch.Tensor:
        """Vote over the upstream claims for this step and return an input that matches the
        majority: the received tensor, or one fetched from a majority replica."""
        task, stage = session.task, session.stage
        raw = fields.get("claim")
        if isinstance(raw, bytes):
            try:
                self.admit_claim(decode_claim(raw), session.upstream)
            except (ConsensusError, WireError) as e:
                log.debug("in-band claim from %s rejected: %s", session.upstream, e)
        outcome = await self.await_majority(task, stage - 1, seq)
        try:
            await trio.to_thread.run_sync(outcome.check_local, hidden, self.precision)
            return hidden
        except (FingerprintMismatch, FingerprintError):
            pass
        hidden, _pos = await self.fetch_majority(task, stage - 1, seq, outcome)
        session.fetches += 1
        return hidden

    async def await_majority(self, task: Task, stage: int, seq: int) -> VoteOutcome:
        """Wait (bounded) until a majority of stage `stage`'s replicas agree on step `seq`;
        then tally in the background once stragglers had their grace."""
        outcome = await wait_majority(self.claims, (task.task_id, stage, seq),
                                      task.route[stage].replicas, task_tolerance(task),
                                      timeout=self.timings.majority_timeout_s,
                                      sealed=task_sealed(task, stage))
        self.counters["votes"] += 1
        self.spawn(self._final_tally, task, stage, seq)
        return outcome

    async def fetch_majority(self, task: Task, stage: int, seq: int, outcome: VoteOutcome
                             ) -> tuple[torch.Tensor, int]:
        """A tensor from a majority replica that matches the majority fingerprint."""
        for peer in outcome.agreeing_replicas:
            if peer == self.node.peer_id:
                continue
            try:
                got = await self.fetch(peer, task, stage, seq)
                await trio.to_thread.run_sync(outcome.check_local, got.hidden,
                                              self.precision)
                return got.hidden, got.pos
            except (P2PInferError, OSError) as e:
                log.debug("fetch from %s failed: %s", peer, e)
        raise ConsensusFailure(stage, f"no majority replica of stage {stage} delivered a "
                                      f"matching output for step {seq}")

    async def _final_tally(self, task: Task, stage: int, seq: int) -> None:
        """After the late grace: tally every claim held, reward, penalise, accuse, gossip."""
        await trio.sleep(self.timings.late_grace_s)
        replicas = task.route[stage].replicas
        key = (task.task_id, stage, seq)
        tolerance = task_tolerance(task)
        sealed = task_sealed(task, stage)
        with trio.move_on_after(self.timings.missing_grace_s):
            while len(self.claims.counted(key, replicas, sealed=sealed)) < len(replicas):
                await self.claims.changed(key)
        claims = self.claims.counted(key, replicas, sealed=sealed)
        try:
            outcome = tally(claims, self.keys, tolerance)
        except ConsensusError as e:
            log.debug("late tally of stage %d step %d failed: %s", stage, seq, e)
            return
        self.apply_outcome(task, stage, outcome, replicas)

    def apply_outcome(self, task: Task, stage: int, outcome: VoteOutcome,
                      replicas: Sequence[str]) -> None:
        """Reputation, report, evidence and gossip for one tallied vote."""
        me = self.node.peer_id
        for peer in outcome.agreeing_replicas:
            self.book.record_agreement(peer)
        voted = set(outcome.agreeing_replicas) | set(outcome.dissenting_replicas)
        missing = [p for p in replicas if p not in voted]
        for peer in missing:
            self.book.record_timeout(peer)
            self.counters["timeouts"] += 1
        report = self.reports.get(task.task_id)
        if report is not None and stage < len(report.stages):
            rep = report.stages[stage]
            rep.votes += 1
            rep.agreeing.update(outcome.agreeing_replicas)
            rep.dissenting.update(outcome.dissenting_replicas)
            rep.missing.update(missing)
        key = self.node.identity
        publish_tally = bool(outcome.dissenting or missing) or \
            (task.task_id, stage) not in self._published_first
        if publish_tally:
            self._published_first.add((task.task_id, stage))
            if len(self._published_first) > 4096:
                self._published_first.clear()
            try:
                signed = outcome.sign_tally(key, me, replicas)
                self.counters["tallies_published"] += 1
                self.spawn(self._publish, signed.encode())
            except ConsensusError as e:
                log.debug("tally not signed: %s", e)
        for claim in outcome.dissenting:
            self._accuse(outcome, claim.replica)

    async def watch_stalls(self, session: Any, inject: trio.MemorySendChannel[Any]) -> None:
        """For a replica whose own upstream may stall: once a majority of the upstream stage
        claimed step s and the step has not come after `stall_grace_s`, fetch it from a majority
        replica and inject it into the session."""
        task, stage = session.task, session.stage
        if stage == 0 or len(task.route[stage - 1].replicas) < 3 or task.mode != "general":
            return
        replicas = task.route[stage - 1].replicas
        tolerance = task_tolerance(task)
        sealed = task_sealed(task, stage - 1)
        async with inject:
            seq = 0
            while True:
                seq = max(seq, session.last_seq + 1)
                key = (task.task_id, stage - 1, seq)
                async def not_arrived(seq: int = seq, key: tuple[bytes, int, int] = key
                                      ) -> bool:
                    await self.claims.changed(key)
                    return session.last_seq < seq

                try:
                    outcome = await wait_majority(self.claims, key, replicas, tolerance,
                                                  wake=not_arrived, sealed=sealed)
                except NoMajorityError:
                    continue  # the step arrived from upstream before a majority claimed it
                if session.last_seq >= seq:
                    continue
                with trio.move_on_after(self.timings.stall_grace_s):
                    while session.last_seq < seq:
                        await trio.sleep(0.02)
                if session.last_seq >= seq:
                    continue
                # claims that came during the grace join the majority fetched from
                outcome = await wait_majority(self.claims, key, replicas, tolerance,
                                              sealed=sealed)
                try:
                    hidden, pos = await self.fetch_majority(task, stage - 1, seq, outcome)
                except ConsensusFailure as e:
                    log.debug("stall fetch failed: %s", e)
                    seq += 1
                    continue
                self.counters["stall_fetches"] += 1
                self.spawn(self._final_tally, task, stage - 1, seq)
                await inject.send(FetchedStep(seq, pos, hidden))
                seq += 1

    # -- requester side ----------------------------------------------------------------------
    def route_tolerance(self, route: Sequence[Any]) -> float:
        """The vote tolerance for a route: the float32 one when every replica advertises
        float32, else the loosest its replicas' precisions need (a replica that states none,
        or one not calibrated, gets the bfloat16 tolerance)."""
        return max([peer_tolerance(self.node, p) for s in route for p in s.replicas],
                   default=DEFAULT_TOLERANCE)

    def open_report(self, task: Task, redundancy: int) -> VerificationReport:
        report = VerificationReport(task.mode, redundancy, [
            StageReport(i, (s.start, s.end), s.replicas) for i, s in enumerate(task.route)])
        self.reports[task.task_id] = report
        self._task_stages[task.task_id] = task.route
        while len(self.reports) > MAX_REPORTED_TASKS:
            old, _ = self.reports.popitem(last=False)
            self._task_stages.pop(old, None)
        return report

    async def vote_results(self, task: Task, seq: int, results: dict[str, StepResult],
                           more: Callable[[], Awaitable[bool]]) -> torch.Tensor:
        """The requester's vote over the last stage's answers for step `seq`.

        `results` maps replica -> StepResult received so far; `more()` waits for the next one
        (and returns False when none will come). Returns a majority tensor; raises
        NoMajorityError naming the stage when no majority forms in time.
        """
        last = len(task.route) - 1
        replicas = task.route[last].replicas
        tolerance = task_tolerance(task)
        key = (task.task_id, last, seq)

        def absorb() -> None:
            for peer, result in results.items():
                raw = result.fields.get("claim")
                if isinstance(raw, bytes) and not result.claimed:
                    result.claimed = True
                    try:
                        self.admit_claim(decode_claim(raw), peer)
                    except (ConsensusError, WireError) as e:
                        log.debug("result claim from %s rejected: %s", peer, e)

        sealed = task_sealed(task, last)

        async def more_claims() -> bool:
            if not await (_first_of(more, lambda: self._changed(key)) if sealed else more()):
                return False
            absorb()
            return True

        absorb()
        outcome = await wait_majority(self.claims, key, replicas, tolerance, wake=more_claims,
                                      sealed=sealed)
        chosen = None
        for peer in outcome.agreeing_replicas:
            result = results.get(peer)
            if result is None:
                continue
            try:
                # the tail computes in float32: a float32 centre wants a float32-close answer
                outcome.check_local(result.hidden, "float32")
                chosen = result.hidden
                break
            except (FingerprintMismatch, FingerprintError):
                continue
        if chosen is None:
            raise ConsensusFailure(last, f"no answer of stage {last} matched its majority")
        self.counters["votes"] += 1
        # stragglers' claims reach the box while later steps run; the full tally waits for them
        self.spawn(self._final_tally, task, last, seq)
        return chosen

    async def _changed(self, key: tuple[bytes, int, int]) -> bool:
        await self.claims.changed(key)
        return True

    def late_result(self, peer: str, fields: dict[str, Any]) -> None:
        """A last-stage answer that came after its step was decided: keep its claim for the
        background tally."""
        raw = fields.get("claim")
        if isinstance(raw, bytes):
            try:
                self.admit_claim(decode_claim(raw), peer)
            except (ConsensusError, WireError) as e:
                log.debug("late claim from %s rejected: %s", peer, e)

    def observe_result(self, task: Task, peer: str, hidden: torch.Tensor, verified: bool
                       ) -> None:
        """CDV on the requester: feed verified outputs to the profile, check every peer."""
        stage = len(task.route) - 1
        plan = task.route[stage]
        model = f"{task.model_id}@{plan.start}-{plan.end}"
        if verified:
            self.cdv.reference(model, stage, hidden)
        if self.cdv.observe(model, stage, peer, hidden):
            report = self.reports.get(task.task_id)
            if report is not None and peer not in report.cdv_flags:
                report.cdv_flags.append(peer)

    async def audit_prefill(self, task: Task, sent: torch.Tensor, candidates: Sequence[Any]
                            ) -> None:
        """m = 1: audit each stage's prefill with probability by its peer's reputation."""
        report = self.reports.get(task.task_id)
        for stage, plan in enumerate(task.route):
            if len(plan.replicas) != 1:
                continue
            peer = plan.replicas[0]
            if not self.audit_policy.should_audit(self._audit_key, task.network_id,
                                                  task.task_id, stage, 0, peer,
                                                  self.book.score(peer)):
                continue
            auditors = [c.peer_id for c in candidates
                        if c.peer_id not in {r for s in task.route for r in s.replicas}
                        and c.covers(plan.start, plan.end)
                        and not self.book.is_banned(c.peer_id)]
            if not auditors:
                continue
            auditors.sort(key=lambda p: (-self.book.score(p), p))
            ok = await self.audit_stage(task, stage, sent, auditors[:2])
            if report is not None:
                report.stages[stage].audits += 1
                if ok is False:
                    report.stages[stage].audit_failures += 1

    async def audit_stage(self, task: Task, stage: int, sent: torch.Tensor,
                          auditors: Sequence[str]) -> bool | None:
        """Re-run stage `stage`'s prefill on an auditor; True when it matches, False (and fault
        evidence against the stage) when it does not, None when no audit could be made.

        On a mismatch a second auditor breaks the tie: whoever of the three disagrees with the
        other two is accused (so a lying auditor is caught, not the stage); without a second
        auditor the first auditor's claim stands as the majority of one.
        """
        self.counters["audits"] += 1
        peer = task.route[stage].replicas[0]
        try:
            if stage == 0:
                hidden_in = sent
            else:
                hidden_in = (await self.fetch(task.route[stage - 1].replicas[0], task,
                                              stage - 1, 0)).hidden
            claimed = (await self.fetch(peer, task, stage, 0)).claim
        except (P2PInferError, OSError) as e:
            log.debug("audit of stage %d not carried out: %s", stage, e)
            return None
        ctx = claim_context(task, stage, 0)
        if claimed is None or claimed.context != ctx:
            return None
        from p2pinfer.consensus import distance

        votes: list[FingerprintClaim] = []
        tolerance = task_tolerance(task)
        for auditor in auditors:
            audit_claim = await self._audit_claim(task, stage, hidden_in, auditor, ctx)
            if audit_claim is None:
                continue
            # an auditor off the route may compute in a coarser precision than the route
            tolerance = max(tolerance, peer_tolerance(self.node, auditor))
            votes.append(audit_claim)
            limit = pair_tolerance(claimed.precision, audit_claim.precision, tolerance)
            if distance(claimed.fingerprint, audit_claim.fingerprint) <= limit:
                self.book.record_agreement(peer)
                for liar in votes[:-1]:  # an earlier auditor disagreed with both
                    self._accuse(_audit_outcome(ctx, liar, (claimed, audit_claim), tolerance),
                                 liar.replica)
                return True
            if len(votes) == 2:
                break
        if not votes:
            return None
        self.counters["audits_failed"] += 1
        self._accuse(_audit_outcome(ctx, claimed, tuple(votes), tolerance), claimed.replica)
        return False

    async def _audit_claim(self, task: Task, stage: int, hidden_in: torch.Tensor, auditor: str,
                           ctx: FingerprintContext) -> FingerprintClaim | None:
        try:
            await ensure_connected(self.node, auditor)
            fields = await self._tensor_fields(hidden_in, task, SIDE_AUDIT, stage, 0, auditor)
            reply = await self.node.request(auditor, VOTES_PROTOCOL, "audit", {
                "task": task.to_wire(), "stage": stage, **fields},
                timeout=30.0, expect={"audited"})
            claim = decode_claim(reply.get("claim", bytes))
            claim.verify(self.keys)
        except (P2PInferError, OSError) as e:
            log.debug("audit by %s failed: %s", auditor, e)
            return None
        if claim.replica != auditor or claim.context != ctx or claim.replicas != 1:
            return None
        return claim

    def _accuse(self, outcome: VoteOutcome, replica: str) -> None:
        """The one accusation path (tallied votes and audits): file fault evidence against
        `replica` from `outcome`, check it as every peer will, accept and gossip it; a dissent
        the evidence tolerance does not prove costs reputation only."""
        try:
            evidence = build_fault_evidence(outcome, replica, self.node.peer_id,
                                            self.node.identity, self.keys)
            verify_fault_evidence(evidence, self.keys, EVIDENCE_TOLERANCE,
                                  self.node.network_id, EVIDENCE_MARGIN)
        except EvidenceError:
            self.book.record_dissent(replica)
            self.counters["dissents"] += 1
            return
        self.accept_evidence(evidence)
        self.counters["evidence_published"] += 1
        self.spawn(self._publish, evidence.encode())


def _audit_outcome(ctx: FingerprintContext, dissent: FingerprintClaim,
                   majority: tuple[FingerprintClaim, ...], tolerance: float) -> VoteOutcome:
    """An audit's verdict as a vote outcome: the agreeing claims (m = 1) against `dissent`."""
    return VoteOutcome(ctx, 1, majority[0], majority, (dissent,), tolerance)


def _message_type(payload: bytes) -> str:
    """The `t` of a canonical votes message (a map starting with `v` = 1, then `t`)."""
    if len(payload) < 8 or payload[1:6] != b"\xa1v\x01\xa1t" or not 0xa0 <= payload[6] <= 0xbf:
        raise MalformedVoteMessage("votes message does not start with v = 1 and t")
    size = payload[6] - 0xa0
    return payload[7:7 + size].decode("ascii", "replace")


async def _first_of(*waits: Callable[[], Awaitable[bool]]) -> bool:
    """Run the waits at once; the value of the first to finish (the others are cancelled).
    An exception of the first to finish is raised as it is, not in a group."""
    done: list[tuple[bool, BaseException | None]] = []
    async with trio.open_nursery() as nursery:
        async def one(wait: Callable[[], Awaitable[bool]]) -> None:
            try:
                value = await wait()
            except Exception as e:  # noqa: BLE001 - handed to the caller below
                done.append((False, e))
            else:
                done.append((value, None))
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)
    value, error = done[0]
    if error is not None:
        raise error
    return value
