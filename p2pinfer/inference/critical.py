"""Critical mode: every stage proves its shard in zero knowledge; every hop verifies before use.

Spec: protocols/critical.md (proof chain in `step`), protocols/zk-proof.md (proof bytes).
The model is a provable MLP (p2pinfer.models.mlp) whose owner published a manifest of weight
commitments; the task carries the manifest digest in `options["manifest"]` and a stage with
another manifest refuses the task at `open`. Activations cross hops as fixed-point int64.

Stage i receives y_{i-1} and the proof chain; it verifies the last entry (stage i-1's proof for
(x_{i-1}, y_{i-1}) under manifest.block_shard(layers of stage i-1), bound to the task, the stage and
the step), runs its layers in fixed point, proves, and appends its own entry (its input x_i and
proof). A failed check becomes a `fault` naming the upstream peer. The requester checks that
entry 0's input is what it sent, that the chain links up, and verifies every proof itself.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Self

import msgpack
import numpy as np
import torch
import trio

from p2pinfer.config import RequestSettings
from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.inference.client import (
    InferenceClient,
    InferenceError,
    PromptTooLong,
    RequestOutcome,
    RouteSession,
    StageFailure,
    StepResult,
    TokenStream,
)
from p2pinfer.inference.stage import StageError, StageSession, UpstreamRejected
from p2pinfer.inference.task import Task
from p2pinfer.models import LayerSpan
from p2pinfer.models.byte_vocab import VOCAB_SIZE, ByteVocabulary
from p2pinfer.net.adverts import Advert
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.wire import tensor_from_wire, tensor_to_wire

log = logging.getLogger(__name__)

CONTEXT_DOMAIN = b"p2pinfer/critical-step/v1"
#: the largest proof a stage accepts from its upstream
MAX_PROOF_BYTES = 8 << 20
MAX_CHAIN = 64


class ManifestMismatch(StageError):
    """The task names another manifest than the one this peer's weights are committed in."""

    code = "wrong-manifest"


class ProofRejected(UpstreamRejected):
    """An upstream stage's proof failed; `blame` is (stage, peer) of the stage that made it."""

    code = "proof-rejected"

    def __init__(self, stage: int, peer: str, message: str, check: str = "") -> None:
        super().__init__(stage, peer, message)
        self.check = check


# -- the proof chain on the wire ------------------------------------------------------------------
@dataclass
class ChainEntry:
    """One stage's proof as it travels down the route: its input, the proof, who made it."""

    stage: int
    peer: str
    start: int
    end: int
    input: np.ndarray  # int64 (tokens, hidden)
    proof: bytes
    prove_ms: float
    #: set by the next stage once it verified this entry
    verified_by: str = ""
    hop_verify_ms: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {"stage": self.stage, "peer": self.peer, "layers": [self.start, self.end],
                "input": tensor_to_wire(torch.from_numpy(np.ascontiguousarray(self.input))[None]),
                "proof": self.proof, "prove_ms": float(self.prove_ms),
                "verified_by": self.verified_by, "hop_verify_ms": float(self.hop_verify_ms)}

    @classmethod
    def from_wire(cls, obj: Any, *, hidden_size: int, max_bytes: int) -> ChainEntry:
        if not isinstance(obj, dict):
            raise WireError("a proof chain entry must be a map")
        stage, peer, layers = obj.get("stage"), obj.get("peer"), obj.get("layers")
        proof, prove_ms = obj.get("proof"), obj.get("prove_ms")
        by, hop_ms = obj.get("verified_by", ""), obj.get("hop_verify_ms", 0.0)
        if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage < MAX_CHAIN:
            raise WireError("proof chain entry: bad stage")
        if not isinstance(peer, str) or not 0 < len(peer) <= 128:
            raise WireError("proof chain entry: bad peer")
        if (not isinstance(layers, list) or len(layers) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers)
                or not 0 <= layers[0] < layers[1]):
            raise WireError("proof chain entry: bad layers")
        if not isinstance(proof, bytes) or len(proof) > MAX_PROOF_BYTES:
            raise WireError(f"proof chain entry: proof must be bytes of at most {MAX_PROOF_BYTES}")
        if not isinstance(prove_ms, (int, float)) or not isinstance(hop_ms, (int, float)):
            raise WireError("proof chain entry: bad timings")
        if not isinstance(by, str) or len(by) > 128:
            raise WireError("proof chain entry: bad verifier")
        x = tensor_from_wire(obj.get("input"), max_bytes=max_bytes, dtype="int64",
                             shape=(1, None, hidden_size))
        return cls(stage, peer, layers[0], layers[1], x[0].numpy(), proof, float(prove_ms), by,
                   float(hop_ms))


def decode_chain(fields: dict[str, Any], *, hidden_size: int, max_bytes: int) -> list[ChainEntry]:
    raw = fields.get("zk")
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_CHAIN:
        raise WireError(f"`zk` must be a list of at most {MAX_CHAIN} proof entries")
    return [ChainEntry.from_wire(e, hidden_size=hidden_size, max_bytes=max_bytes) for e in raw]


def step_binding(task: Task, manifest_digest: bytes, stage: int, seq: int, start: int, end: int,
                 peer: str) -> Any:
    """What one stage's proof of one step is bound to (replays across tasks, stages, steps,
    layer spans or peers fail the binding check)."""
    from p2pinfer.zk import ProofBinding

    context = CONTEXT_DOMAIN + msgpack.packb([task.network_id, stage, seq, start, end, peer])
    return ProofBinding(task.task_id, manifest_digest, context)


def kv_session(task: Task, stage: int) -> bytes:
    """The id of stage `stage`'s committed KV cache in a proven generation (zk-proof.md)."""
    return task.task_id + bytes([stage])


def verify_entry(manifest: Any, digest: bytes, task: Task, seq: int, entry: ChainEntry,
                 output: np.ndarray, *, stage: int, peer: str, cache: Any = None) -> float:
    """Verify one stage's proof for (entry.input, output); returns milliseconds, or raises
    `ProofRejected` blaming (stage, peer). `stage` and `peer` are what the verifier expects
    (from the route), never what the entry claims. With `cache` (the stage's
    `CacheCommitments` in a proven generation) the proof is a decode step over that cache,
    which grows by the step's rows once it verified."""
    from p2pinfer.zk import ProofError, ShardProof, verify
    from p2pinfer.zk.errors import ProofFormatError
    from p2pinfer.zk.kvcache import StepProof, verify_step

    plan = task.route[stage]
    if entry.stage != stage or entry.peer != peer or (entry.start, entry.end) != (plan.start,
                                                                                  plan.end):
        raise ProofRejected(stage, peer, f"the proof of stage {stage} names stage {entry.stage}, "
                            f"peer {entry.peer}, layers [{entry.start}, {entry.end})", "route")
    t0 = time.perf_counter()
    binding = step_binding(task, digest, stage, seq, plan.start, plan.end, peer)
    try:
        if cache is not None:
            step = StepProof.from_bytes(entry.proof, MAX_PROOF_BYTES)
            verify_step(manifest.block_shard(plan.start, plan.end), cache, entry.input, output,
                        step, binding)
        else:
            proof = ShardProof.from_bytes(entry.proof, MAX_PROOF_BYTES)
            verify(manifest.block_shard(plan.start, plan.end), entry.input, output, proof,
                   binding)
    except ProofError as e:
        raise ProofRejected(stage, peer, f"stage {stage} ({peer}) sent a proof that fails: {e}",
                            e.check) from None
    except (ProofFormatError, ValueError) as e:
        raise ProofRejected(stage, peer, f"stage {stage} ({peer}) sent a malformed proof: {e}",
                            "encoding") from None
    return (time.perf_counter() - t0) * 1000.0


# -- the stage side -----------------------------------------------------------------------------
#: the task option of a proven generation: one token per step, each proven over the stage's
#: committed KV cache (zk-proof.md, "Decode steps over a committed KV cache")
KV_OPTION = "kv"


class ProvenCaches:
    """A stage's per-session state in a proven generation: its own committed KV cache (rows
    and blindings) and the commitments of its upstream stage's cache (to verify its steps)."""

    def __init__(self, own: Any, upstream: Any) -> None:
        self.own, self.upstream = own, upstream

    def close(self) -> None:
        self.own.close()
        if self.upstream is not None:
            self.upstream.clear()


def manifest_tag(digest: bytes) -> str:
    """A manifest digest as adverts carry it (protocols/adverts.md `manifest`)."""
    return "sha256:" + digest.hex()


class CriticalRunner:
    """The `critical` StepRunner of a stage serving layers of a provable MLP.

    The TEST-ONLY cheats in tests/critical subclass this and override `compute`, `attest` or
    `entry_for`; the honest runner never deviates.
    """

    wire_dtype: str | tuple[str, ...] = "int64"

    def __init__(self, node: PeerNetwork | None, model_path: str | Path, start: int,
                 end: int) -> None:
        from p2pinfer.zk import ModelManifest
        from p2pinfer.zk.checkpoint import commit_layers, load_manifest_bytes

        self.node = node
        self.path = Path(model_path)
        self.manifest = ModelManifest.from_bytes(load_manifest_bytes(self.path))
        self.digest = self.manifest.digest()
        self.start, self.end = start, end
        self._full = commit_layers(self.path, start, end)
        self._shards: dict[tuple[int, int], Any] = {(start, end): self._full}
        self._lock = trio.Lock()
        self.counters = {"proved": 0, "verified": 0, "rejected": 0}

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @property
    def manifest_tag(self) -> str:
        """The manifest digest as this peer's advert carries it."""
        return manifest_tag(self.digest)

    @property
    def _node(self) -> PeerNetwork:
        if self.node is None:
            raise StageError("this critical runner is not attached to a node")
        return self.node

    def admit(self, task: Task, start: int, end: int) -> None:
        """At `open`: refuse a task pinned to another manifest."""
        want = task.options.get("manifest")
        if not isinstance(want, bytes) or not hmac.compare_digest(want, self.digest):
            raise ManifestMismatch("the task's manifest digest differs from the one this peer's "
                                   "weights are committed in")

    def shard(self, start: int, end: int) -> Any:
        key = (start, end)
        if key not in self._shards:
            from p2pinfer.zk.checkpoint import commit_layers

            self._shards[key] = commit_layers(self.path, start, end)
        return self._shards[key]

    # the three steps a cheat may replace (tests only)
    def compute(self, shard: Any, x: np.ndarray) -> np.ndarray:
        return shard.forward_fixed(x)

    def attest(self, shard: Any, x: np.ndarray, y: np.ndarray, binding: Any) -> bytes:
        from p2pinfer.zk import prove

        return prove(shard, x, y, binding).to_bytes()

    def entry_for(self, entry: ChainEntry, y: np.ndarray, session: StageSession,
                  seq: int) -> tuple[ChainEntry, np.ndarray]:
        return entry, y

    def attest_step(self, shard: Any, cache: Any, x: np.ndarray, binding: Any
                    ) -> tuple[np.ndarray, bytes]:
        """A proven generation's step: run and prove one token over the committed cache."""
        from p2pinfer.zk.kvcache import prove_step

        y, step = prove_step(shard, cache, x, binding)
        return y, step.to_bytes()

    def session_caches(self, session: StageSession) -> ProvenCaches:
        """The session's committed KV caches (opened on its first step)."""
        state = session.runner_state
        if state is None:
            from p2pinfer.zk.kvcache import CacheCommitments, KvCache

            task, stage = session.task, session.stage
            own = KvCache.open(self.shard(session.start, session.end), kv_session(task, stage))
            upstream = None
            if stage > 0:
                up = task.route[stage - 1]
                upstream = CacheCommitments.open(self.manifest.block_shard(up.start, up.end),
                                                 kv_session(task, stage - 1))
            state = session.runner_state = ProvenCaches(own, upstream)
        if not isinstance(state, ProvenCaches):
            raise StageError("this session holds another runner's state")
        return state

    async def run(self, session: StageSession, view: Any, hidden: torch.Tensor, pos: int,
                  fields: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        task, stage = session.task, session.stage
        seq = int(fields.get("seq", 0))
        info = view.info
        try:
            chain = decode_chain(fields, hidden_size=info.hidden_size,
                                 max_bytes=self._node.config.limits.max_tensor_bytes)
        except WireError as e:
            if stage == 0:
                raise
            raise ProofRejected(stage - 1, session.upstream,
                                f"stage {stage - 1} sent a malformed proof chain: {e}",
                                "chain") from None
        x = hidden[0].numpy().astype(np.int64, copy=False)
        caches = None
        if task.options.get(KV_OPTION) is True:  # a proven generation: one token per step
            caches = self.session_caches(session)
            if x.shape[0] != 1 or pos != caches.own.position:
                raise StageError(f"a proven KV-cache step is one token at the next position "
                                 f"({caches.own.position}), not {x.shape[0]} at {pos}")
        if stage > 0:
            if len(chain) != stage:
                raise ProofRejected(stage - 1, session.upstream,
                                    f"stage {stage - 1} sent {len(chain)} proofs, not {stage}",
                                    "chain")
            last = chain[-1]
            try:
                ms = await trio.to_thread.run_sync(
                    lambda: verify_entry(self.manifest, self.digest, task, seq, last, x,
                                         stage=stage - 1, peer=session.upstream,
                                         cache=caches.upstream if caches else None))
            except ProofRejected as e:
                self.counters["rejected"] += 1
                log.warning("task %s: rejecting stage %d (%s): %s", task.short_id, stage - 1,
                            session.upstream, e)
                raise
            last.verified_by, last.hop_verify_ms = self._node.peer_id, ms
            self.counters["verified"] += 1
        elif chain:
            raise StageError("the requester sent proofs to stage 0")
        shard = self.shard(session.start, session.end)
        binding = step_binding(task, self.digest, stage, seq, session.start, session.end,
                               self._node.peer_id)

        def work() -> tuple[np.ndarray, bytes, float]:
            t0 = time.perf_counter()
            if caches is not None:
                y, proof = self.attest_step(shard, caches.own, x, binding)
            else:
                y = self.compute(shard, x)
                proof = self.attest(shard, x, y, binding)
            return y, proof, (time.perf_counter() - t0) * 1000.0

        async with self._lock:  # one proof at a time: the CPU is the bottleneck
            try:
                y, proof, ms = await trio.to_thread.run_sync(work)
            except (ValueError, P2PInferError) as e:
                raise StageError(f"could not prove stage {stage}: {e}") from None
        mine = ChainEntry(stage, self._node.peer_id, session.start, session.end, x, proof, ms)
        mine, y = self.entry_for(mine, y, session, seq)
        self.counters["proved"] += 1
        out = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).unsqueeze(0)
        return out, {"zk": [e.to_wire() for e in [*chain, mine]]}


def critical_runner(node: PeerNetwork | None, span: LayerSpan, model_path: str | Path
                    ) -> CriticalRunner | None:
    """The `critical` runner for a stage serving `span` of a provable MLP with a manifest and
    the owner's commitment caches; None for other models (they serve no critical tasks)."""
    from p2pinfer.models.errors import ModelError
    from p2pinfer.zk import ZkError
    from p2pinfer.zk.checkpoint import is_provable

    if not is_provable(model_path):
        return None
    try:
        runner = CriticalRunner(node, model_path, span.start, span.end)
    except (ModelError, ZkError) as e:
        log.warning("not serving critical tasks: %s", e)
        return None
    log.info("serving critical tasks for layers [%d, %d) under manifest %s", span.start,
             span.end, runner.digest.hex()[:16])
    return runner


# -- the requester side --------------------------------------------------------------------------
@dataclass
class StageProof:
    """One stage's verified proof, as the requester reports it."""

    stage: int
    peer: str
    layers: tuple[int, int]
    proof_bytes: int
    prove_ms: float
    #: the requester's own verification
    verify_ms: float
    #: the next stage's verification (none for the last stage)
    hop_verified_by: str
    hop_verify_ms: float
    #: a proven generation: the token position of the step (a decode step over the cache)
    position: int | None = None


@dataclass
class CriticalResult:
    """Output of a critical-mode inference and what was verified on the way."""

    output: np.ndarray  # float64 (tokens, hidden), dequantized
    output_fixed: np.ndarray  # int64 (tokens, hidden), bit-for-bit
    proofs: list[StageProof]
    manifest_digest: str
    route: list[dict[str, Any]]
    replans: int
    seconds: float
    local_layers: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    extra: dict[str, Any] = field(default_factory=dict)
    #: seconds in all, to the answer, per network step
    timings: dict[str, Any] = field(default_factory=dict)
    mode: str = "critical"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = self.output.tolist()
        d["output_fixed"] = self.output_fixed.tolist()
        return d


class CriticalStrategy:
    """The requester's strategy for critical tasks: the manifest pinned in the task, int64 on
    the wire, and the whole proof chain verified before the answer is used."""

    mode = "critical"
    wire_dtype: str | tuple[str, ...] = "int64"

    def __init__(self, manifest: Any, digest: bytes, hidden_size: int, max_bytes: int, *,
                 kv: bool = False) -> None:
        self.manifest, self.digest = manifest, digest
        self.hidden_size, self.max_bytes = hidden_size, max_bytes
        #: a proven generation: one token per step, each over the stages' committed caches
        self.kv = kv

    def task_options(self, route: Sequence[Any]) -> dict[str, Any]:
        return {"manifest": self.digest, KV_OPTION: True} if self.kv else {
            "manifest": self.digest}

    async def check(self, session: RouteSession, sent: torch.Tensor, result: StepResult) -> None:
        if not self.kv:
            session.outcome.proofs = await trio.to_thread.run_sync(
                self.verify_chain, session.task, sent, result)
            return
        from p2pinfer.zk.kvcache import CacheCommitments

        if session.mode_state is None:  # this attempt's copy of every stage's cache
            session.mode_state = [
                CacheCommitments.open(self.manifest.block_shard(p.start, p.end),
                                      kv_session(session.task, k))
                for k, p in enumerate(session.task.route)]
        caches = session.mode_state
        position = caches[0].position
        proofs = await trio.to_thread.run_sync(self.verify_chain, session.task, sent, result,
                                               caches)
        session.outcome.proofs.extend(replace(p, position=position) for p in proofs)

    async def after_prefill(self, session: RouteSession, sent: torch.Tensor,
                            result: torch.Tensor) -> None:
        return None  # proven answers need no re-execution audits

    def verify_chain(self, task: Task, sent: torch.Tensor, result: StepResult,
                     caches: Sequence[Any] | None = None) -> list[StageProof]:
        n = len(task.route)
        last_peer = result.peer or task.route[-1].replicas[0]
        try:
            chain = decode_chain(result.fields, hidden_size=self.hidden_size,
                                 max_bytes=self.max_bytes)
        except WireError as e:
            raise StageFailure(n - 1, last_peer, f"proof chain does not decode: {e}") from None
        if len(chain) != n:
            raise StageFailure(n - 1, last_peer, f"the answer carries {len(chain)} proofs for "
                               f"{n} stages")
        x0 = sent[0].numpy().astype(np.int64, copy=False)
        if not np.array_equal(chain[0].input, x0):
            raise StageFailure(0, chain[0].peer, "stage 0 proved an input other than the one "
                               "the requester sent")
        out = []
        for k, entry in enumerate(chain):
            peer = entry.peer if entry.peer in task.route[k].replicas else task.route[k].replicas[0]
            y = chain[k + 1].input if k + 1 < n else result.hidden[0].numpy()
            try:
                ms = verify_entry(self.manifest, self.digest, task, result.seq, entry, y,
                                  stage=k, peer=peer, cache=caches[k] if caches else None)
            except ProofRejected as e:
                log.warning("task %s: %s", task.short_id, e)
                raise StageFailure(k, peer, str(e)) from None
            out.append(StageProof(k, peer, (entry.start, entry.end), len(entry.proof),
                                  entry.prove_ms, ms, entry.verified_by, entry.hop_verify_ms))
        return out


class CriticalClient(InferenceClient):
    """Requests critical-mode inference of a provable MLP; runs its head and tail layers in
    fixed point itself and accepts only answers whose every stage proof verifies."""

    def __init__(self, node: PeerNetwork, model_path: str, settings: RequestSettings | None = None, *,
                 manifest: bytes | None = None, **collaborators: Any) -> None:
        from p2pinfer.zk import ModelManifest
        from p2pinfer.zk.checkpoint import fixed_layers, is_provable, load_manifest_bytes

        if not is_provable(model_path):
            raise InferenceError(f"{model_path} is not a provable model (critical mode runs "
                                 "p2pinfer-mlp models, e.g. the built-in p2pinfer-zk-mlp or "
                                 "p2pinfer-zk-llama)")
        s = settings or RequestSettings()
        if s.redundancy != 1:
            raise InferenceError("critical mode proves every stage; it runs one replica per stage")
        # critical answers are proven: no re-execution audits
        super().__init__(node, model_path, replace(s, mode="critical", audits=False),
                         **collaborators)
        raw = manifest if manifest is not None else load_manifest_bytes(model_path)
        self.manifest = ModelManifest.from_bytes(raw)
        self.manifest_digest = self.manifest.digest()
        self.manifest_tag = manifest_tag(self.manifest_digest)
        n = self.info.num_layers
        k, kt = self.settings.k_head, self.settings.k_tail
        self.fixed_head = fixed_layers(model_path, 0, k) if k else None
        self.fixed_tail = fixed_layers(model_path, n - kt, n) if kt else None
        self.critical = CriticalStrategy(self.manifest, self.manifest_digest,
                                         self.info.hidden_size,
                                         node.config.limits.max_tensor_bytes)
        self.proven_kv = CriticalStrategy(self.manifest, self.manifest_digest,
                                          self.info.hidden_size,
                                          node.config.limits.max_tensor_bytes, kv=True)
        #: token embeddings and head, kept here (split learning)
        self.vocabulary = ByteVocabulary(self.info.model_id, self.info.hidden_size)

    def servable_spans(self, spans: Sequence[Sequence[int]], advert: Advert
                       ) -> tuple[tuple[int, int], ...]:
        """Critical mode routes on the manifest: a peer whose advert names another manifest
        digest than our copy's (or none: it serves no critical tasks) is never a candidate.
        Its float weights digest is not asked for: every proof is checked against the
        manifest's commitments, and a requester may hold the manifest without the weights."""
        if not hmac.compare_digest(advert.manifest.encode(), self.manifest_tag.encode()):
            return ()
        return tuple((int(a), int(b)) for a, b in spans)

    def strategy(self, settings: RequestSettings) -> CriticalStrategy:
        if settings.redundancy != 1:
            raise InferenceError("critical mode proves every stage; it runs one replica per stage")
        return self.critical

    def _settings(self, override: RequestSettings | None) -> RequestSettings:
        if override is None:
            return self.settings
        return super()._settings(replace(override, mode="critical", audits=False))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float features -> fixed point with the manifest's fractional bits."""
        return np.rint(np.asarray(x, dtype=np.float64) * (1 << self.manifest.frac_bits)
                       ).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(q, dtype=np.float64) / (1 << self.manifest.frac_bits)

    def local_forward(self, x: np.ndarray) -> np.ndarray:
        """The whole model in fixed point on this machine (needs every layer's weights)."""
        from p2pinfer.zk.checkpoint import fixed_layers

        return fixed_layers(self.head_path, 0, self.info.num_layers).forward_fixed(
            self.quantize(x))

    async def infer(self, features: np.ndarray | torch.Tensor, *,
                    settings: RequestSettings | None = None) -> CriticalResult:
        """Features (tokens, hidden) -> the model's output, every remote stage proven."""
        s = self._settings(settings)
        outcome = RequestOutcome("critical")
        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features,
                       dtype=np.float64)
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        h = self.info.hidden_size
        if x.ndim != 2 or x.shape[1] != h or not 1 <= x.shape[0] <= self.info.max_positions:
            raise InferenceError(f"input must be (tokens <= {self.info.max_positions}, {h})")
        if not np.isfinite(x).all():
            raise InferenceError("input contains NaN or infinity")
        q = self.quantize(x)
        if self.fixed_head is not None:
            q = await trio.to_thread.run_sync(self.fixed_head.forward_fixed, q)
        start, end = self.middle
        strategy = self.strategy(s)

        async def attempt() -> AsyncIterator[np.ndarray]:
            if start >= end:
                yield q
                return
            async with self._route(outcome, s, strategy, q.shape[0]) as session:
                sent = torch.from_numpy(np.ascontiguousarray(q)).unsqueeze(0)
                out = await self._step(session, 0, 0, sent)
            yield out[0].numpy().astype(np.int64)

        y = q
        async for y in self._attempts(outcome, s, attempt):
            pass
        if self.fixed_tail is not None:
            y = await trio.to_thread.run_sync(self.fixed_tail.forward_fixed, y)
        outcome.finish()
        n = self.info.num_layers
        return CriticalResult(
            output=self.dequantize(y), output_fixed=y, proofs=list(outcome.proofs),
            manifest_digest=self.manifest_digest.hex(), route=outcome.route_dicts(),
            replans=outcome.replans, seconds=outcome.seconds,
            local_layers=((0, start), (end, n)), timings=outcome.timings())


    # -- proven generation ---------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 sample: Callable[[torch.Tensor], int], *, stop_ids: Sequence[int] = (),
                 settings: RequestSettings | None = None) -> TokenStream:
        """New token ids, each sampled only after every stage's step for it was verified: one
        token per step through the route, each stage proving its layers over its committed KV
        cache (zk-proof.md, "Decode steps"); the prompt's tokens are steps too. The stream's
        `outcome.proofs` holds one `StageProof` per stage and step (with its position)."""
        s = self._settings(settings)
        outcome = RequestOutcome("critical")
        return TokenStream(self._proven_generate(list(prompt_ids), max_new_tokens, sample,
                                                 tuple(stop_ids), s, outcome), outcome)

    async def _proven_generate(self, prompt: list[int], max_new_tokens: int,
                               sample: Callable[[torch.Tensor], int],
                               stop_ids: tuple[int, ...], settings: RequestSettings,
                               outcome: RequestOutcome) -> AsyncIterator[int]:
        from p2pinfer.zk.kvcache import CachedForward

        if not prompt:
            raise InferenceError("the prompt is empty")
        if max_new_tokens < 1:
            raise InferenceError("max_new_tokens must be at least 1")
        if any(not 0 <= t < VOCAB_SIZE for t in prompt):
            raise InferenceError(f"token ids must be in 0..{VOCAB_SIZE - 1}")
        if len(prompt) + max_new_tokens > self.info.max_positions:
            raise PromptTooLong(
                f"prompt of {len(prompt)} tokens plus {max_new_tokens} new tokens exceeds the "
                f"model's context of {self.info.max_positions} tokens")
        history = list(prompt)
        max_length = len(prompt) + max_new_tokens
        start, end = self.middle

        async def attempt() -> AsyncIterator[int]:
            budget = max_length - len(history)
            if budget <= 0 or (len(history) > len(prompt) and history[-1] in stop_ids):
                return
            head = CachedForward(self.fixed_head) if self.fixed_head is not None else None
            tail = CachedForward(self.fixed_tail) if self.fixed_tail is not None else None
            try:
                if start >= end:
                    outcome.route = []
                    async for tok in self._proven_tokens(None, history, budget, sample,
                                                         stop_ids, head, tail):
                        history.append(tok)
                        yield tok
                    return
                async with self._route(outcome, settings, self.proven_kv,
                                       max_length) as session:
                    async for tok in self._proven_tokens(session, history, budget, sample,
                                                         stop_ids, head, tail):
                        history.append(tok)
                        if outcome.first_s is None:
                            outcome.first_s = time.perf_counter() - outcome.started
                        yield tok
            finally:
                for part in (head, tail):
                    if part is not None:
                        part.close()

        async for tok in self._attempts(outcome, settings, attempt):
            yield tok

    async def _proven_tokens(self, session: RouteSession | None, history: list[int],
                             budget: int, sample: Callable[[torch.Tensor], int],
                             stop_ids: tuple[int, ...], head: Any, tail: Any
                             ) -> AsyncIterator[int]:
        """Tokens after `history` (replayed step by step on this route), at most `budget`."""
        pending, pos = list(history), 0
        for _ in range(budget):
            y = None
            for tok in pending:
                y = await self._proven_step(session, tok, pos, head, tail)
                pos += 1
            tok = int(sample(self.vocabulary.logits(self.dequantize(y))))
            pending = [tok]
            yield tok
            if tok in stop_ids:
                return

    async def _proven_step(self, session: RouteSession | None, tok: int, pos: int, head: Any,
                           tail: Any) -> np.ndarray:
        """One token at `pos`: local head layers, the route's proven step (verified), local
        tail layers; returns the model's fixed-point output row."""
        q = self.quantize(self.vocabulary.embed([tok]))
        if head is not None:
            q = await trio.to_thread.run_sync(head.step, q)
        if session is not None:
            sent = torch.from_numpy(np.ascontiguousarray(q)).unsqueeze(0)
            session.outcome.tokens_sent += 1
            out = await self._step(session, pos, pos, sent)
            q = out[0].numpy().astype(np.int64)
        if tail is not None:
            q = await trio.to_thread.run_sync(tail.step, q)
        return q

    def conversation(self, settings: RequestSettings | None = None) -> ProvenConversation:
        """A multi-turn proven chat whose route session and committed caches stay open across
        turns: a turn proves only the tokens the caches do not hold yet."""
        return ProvenConversation(self, self._settings(settings))


class ProvenConversation:
    """Turns of a critical-mode chat over one route session: the stages' committed KV caches
    and the local head and tail caches keep every earlier turn, so a turn runs (and proves)
    only the tokens after what they hold. A failed stage re-plans and replays the conversation
    on a fresh session; so does a turn that rewrites a cached position (its outcome says so).
    Per-conversation state lives here; the client is shared."""

    def __init__(self, client: CriticalClient, settings: RequestSettings) -> None:
        self.client, self.settings = client, settings
        self.session: RouteSession | None = None
        self.head: Any = None
        self.tail: Any = None
        #: the token ids whose steps the caches hold, in order
        self.cached: list[int] = []
        self._open = False
        self._busy = False

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        await self._drop()

    async def _drop(self) -> None:
        """Close the route session and erase the local caches."""
        session, self.session = self.session, None
        if session is not None:
            await self.client._close(session)
        for part in (self.head, self.tail):
            if part is not None:
                part.close()
        self.head = self.tail = None
        self.cached = []

    async def reset(self) -> None:
        await self._drop()

    def turn(self, ids: Sequence[int], max_new_tokens: int,
             sample: Callable[[torch.Tensor], int], *, stop_ids: Sequence[int] = ()
             ) -> TokenStream:
        if not self._open:
            raise InferenceError("the conversation is not open (use `async with`)")
        outcome = RequestOutcome("critical")
        return TokenStream(self._turn(list(ids), max_new_tokens, sample, tuple(stop_ids),
                                      outcome), outcome)

    async def _turn(self, target: list[int], max_new_tokens: int,
                    sample: Callable[[torch.Tensor], int], stop_ids: tuple[int, ...],
                    outcome: RequestOutcome) -> AsyncIterator[int]:
        client = self.client
        if not target:
            raise InferenceError("the conversation is empty")
        if max_new_tokens < 1:
            raise InferenceError("max_new_tokens must be at least 1")
        if any(not 0 <= t < VOCAB_SIZE for t in target):
            raise InferenceError(f"token ids must be in 0..{VOCAB_SIZE - 1}")
        if len(target) + max_new_tokens > client.info.max_positions:
            raise PromptTooLong(
                f"the conversation of {len(target)} tokens plus {max_new_tokens} new tokens "
                f"exceeds the model's context of {client.info.max_positions} tokens")
        if self._busy:
            raise InferenceError("one turn at a time: the previous turn is still running")
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

        async for tok in client._attempts(outcome, self.settings, attempt):
            yield tok

    async def _run(self, want: list[int], budget: int, sample: Callable[[torch.Tensor], int],
                   stop_ids: tuple[int, ...], outcome: RequestOutcome) -> AsyncIterator[int]:
        from p2pinfer.zk.kvcache import CachedForward

        client = self.client
        keep = 0
        for a, b in zip(self.cached, want, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(want) - 1)  # at least one token must run for the next logits
        if keep < len(self.cached):
            outcome.notes.append(f"the prompt rewrites cached position {keep} of "
                                 f"{len(self.cached)}: fresh proven session, whole history sent")
            await self._drop()
            keep = 0
        start, end = client.middle
        if self.head is None and self.tail is None:
            head, tail = client.fixed_head, client.fixed_tail
            self.head = CachedForward(head) if head is not None else None
            self.tail = CachedForward(tail) if tail is not None else None
        if self.session is None and start < end:
            self.session = await client._open_route(outcome, self.settings, client.proven_kv,
                                                    client.info.max_positions)
        session = self.session
        if session is not None:
            session.outcome = outcome
            outcome.route = list(session.route)
        outcome.tokens_reused = keep
        pending = want[keep:]
        try:
            for _ in range(budget):
                y = None
                for tok in pending:
                    self._busy = True
                    y = await client._proven_step(session, tok, len(self.cached), self.head,
                                                  self.tail)
                    self.cached.append(tok)
                    self._busy = False
                tok = int(sample(client.vocabulary.logits(client.dequantize(y))))
                pending = [tok]
                yield tok
                if tok in stop_ids:
                    break
        except StageFailure as failure:
            if session is not None and failure.peer_id is None:
                failure.peer_id = await client._blame(session, failure)
            await self._drop()
            raise
        finally:
            if self._busy:  # stopped inside a step: the caches may hold half of it
                self._busy = False
                await self._drop()


class CriticalClients(Protocol):
    """Where critical clients come from (the node's inference service)."""

    def critical_client(self, model: str, settings: RequestSettings | None = None, *,
                        manifest: bytes | None = None) -> InferenceClient: ...


def critical_client(service: CriticalClients, model: str,
                    settings: RequestSettings | None = None, *,
                    manifest: bytes | None = None) -> CriticalClient:
    """A critical client for `model` (directory or built-in name) on a running service."""
    client = service.critical_client(model, settings, manifest=manifest)
    assert isinstance(client, CriticalClient)
    return client


async def infer_critical(service: CriticalClients, features: np.ndarray | torch.Tensor | Sequence[Any], *,
                         model: str, settings: RequestSettings | None = None,
                         manifest: bytes | None = None) -> CriticalResult:
    """Critical-mode inference of `features` (tokens, hidden) through the network."""
    client = critical_client(service, model, settings, manifest=manifest)
    return await client.infer(np.asarray(features, dtype=np.float64)
                              if not isinstance(features, torch.Tensor) else features)
