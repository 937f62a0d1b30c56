"""Proven generation over a committed KV cache: one token's step proven against the keys and
values committed by the session's earlier steps.

A critical session processes tokens one at a time. At step T (the token at position T) every
attention layer of the shard commits its new rotated key row and value row (one Pedersen vector
commitment each, hiding) inside the step's proof, and proves its attention over the committed
rows 0..T-1 plus the new row (gadgets/decode.py). The prover (`KvCache`) keeps the rows and
their blindings; the verifier (`CacheCommitments`) keeps the row commitments it took from the
proofs it accepted. So a step costs one row's projections and one row of scores, whatever T.

Every step proof is bound to the session (a running digest that starts from the session id and
absorbs each accepted step's new rows) and to its position: a step proven against another
session's cache, at a position the verifier's cache does not reach, or over a row that was
never committed by an accepted step is rejected (`CacheMismatch`), and a cached row whose
values were changed after it was committed fails its opening (`OpeningError`).

Bytes: protocols/zk-proof.md, "Decode steps over a committed KV cache".

    cache = KvCache.open(committed_shard, session)            # prover, one per session
    seen = CacheCommitments.open(manifest.shard(a, b), session)  # verifier, same session
    y, step = prove_step(committed_shard, cache, x_row, binding)
    verify_step(manifest.shard(a, b), seen, x_row, y, step, binding)  # grows `seen` on success
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Self

import msgpack
import numpy as np

from .attention import (
    EXP_RANGE_BITS,
    AttentionShape,
    _exact_product,
    apply_rope,
    exp_table,
    rope_tables,
    score_shift,
)
from .commitment import CommittedShard
from .errors import (
    BindingMismatch,
    CacheMismatch,
    FixedPointOverflow,
    ProofFormatError,
    ShapeMismatch,
)
from .fixed import BITS, FixedLayer, ProvableMlp, attention_shape
from .gadgets.common import Claim, Witness
from .gadgets.decode import LayerCache, decode_attention_layer
from .group import decode_point
from .layout import generator_count_for, params_for
from .ledger import ProverLedger, VerifierLedger
from .manifest import ShardCommitment
from .proof import (
    DEFAULT_MAX_PROOF,
    MalformedProof,
    ProofBinding,
    ShardProof,
    _as_int,
    _check_commitment,
    _layer,
    _output_claims,
)
from .transcript import Transcript, tensor_digest

STEP_DOMAIN = b"p2pinfer/zk-step-proof/v1"
STEP_VERSION = 1
#: a session's cache holds at most this many positions
MAX_POSITIONS = 1 << 16
_HALF = 1 << (BITS - 1)


# --------------------------------------------------------------------------------------------
# The fixed-point step


def attention_step(a: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   shape: AttentionShape, frac_bits: int, keys: np.ndarray,
                   values: np.ndarray) -> dict[str, np.ndarray]:
    """Attention of one new row a (1 x d) at position T = len(keys) over the cached rotated
    keys and values (T x kv_width) and its own new row: bit for bit row T of
    attention.attention_fixed over all T + 1 tokens. Returns the output `out` (1 x d), the new
    rows `rk`, `v` (1 x kv_width) and every intermediate the step's proof needs; key and value
    tables (`keys`, `values`) are padded with zero rows to 2**ceil(log2(T + 1))."""
    f = frac_bits
    d, heads, dh, kvw = shape.d, shape.heads, shape.head_dim, shape.kv_width
    big_t = keys.shape[0]
    if a.shape != (1, d) or keys.shape != (big_t, kvw) or values.shape != (big_t, kvw):
        raise ValueError("a step is one row of d against (T, kv_width) keys and values")
    bound = int(np.abs(a).max(initial=0)) * int(np.abs(weight).max(initial=0)) * d
    z = a @ weight if not _exact_product(bound, "an attention projection") else (
        (a.astype(np.float64) @ weight.astype(np.float64)).astype(np.int64))
    if bias is not None:
        z = z + bias
    if z.min(initial=0) < -_HALF or z.max(initial=0) >= _HALF:
        raise FixedPointOverflow("an attention projection is outside [-2**31, 2**31)")
    q, k, v = z[:, :d] >> f, z[:, d:d + kvw] >> f, z[:, d + kvw:] >> f
    q3, k3 = q.reshape(1, heads, dh), k.reshape(1, shape.kv_heads, dh)
    if shape.rope:
        cos, sin = rope_tables(shape.rope, dh, big_t + 1, f)
        cos, sin = cos[big_t:big_t + 1], sin[big_t:big_t + 1]
        q3, k3 = apply_rope(q3, cos, sin), apply_rope(k3, cos, sin)
    rq, rk = q3.reshape(1, d), k3.reshape(1, kvw)
    n = 1 << big_t.bit_length()
    all_k = np.zeros((n, kvw), dtype=np.int64)
    all_v = np.zeros((n, kvw), dtype=np.int64)
    all_k[:big_t], all_k[big_t] = keys, rk[0]
    all_v[:big_t], all_v[big_t] = values, v[0]
    kh = np.repeat(all_k.reshape(n, shape.kv_heads, dh), shape.group, axis=1)  # (n, H, dh)
    bound = int(np.abs(q3).max(initial=0)) * int(np.abs(all_k).max(initial=0)) * dh
    if _exact_product(bound, "an attention score"):
        s = np.einsum("hc,jhc->hj", q3[0].astype(np.float64), kh.astype(np.float64))
        s = s.astype(np.int64)
    else:
        s = np.einsum("hc,jhc->hj", q3[0], kh)
    mask = (np.arange(n) <= big_t)[None, :]
    mx = np.where(mask, s, np.iinfo(np.int64).min).max(axis=1)  # (H,)
    shift = score_shift(f, shape.rope)
    gap = mx[:, None] - s
    delta = gap >> shift
    table = exp_table(f)
    top = len(table) - 1
    widest = int(np.where(mask, delta, 0).max(initial=0))
    if widest > top:
        raise FixedPointOverflow(f"attention logits of one row span more than "
                                 f"{1 << EXP_RANGE_BITS} (real): outside the exp table: "
                                 f"{widest / (1 << f):g}")
    rem = np.where(mask, gap - (delta << shift), 0)
    delta = np.where(mask, delta, top)
    e = table[delta]
    first = (mask & (gap == 0)).argmax(axis=1)
    argmax = np.zeros_like(s)
    argmax[np.arange(heads), first] = 1
    zsum = e.sum(axis=1)  # (H,)
    vh = np.repeat(all_v.reshape(n, shape.kv_heads, dh), shape.group, axis=1)
    o = np.einsum("hj,jhc->hc", e.astype(np.float64), vh.astype(np.float64)).astype(np.int64)
    out = (2 * o + zsum[:, None]) // (2 * zsum[:, None])
    r = 2 * o + zsum[:, None] - 2 * zsum[:, None] * out
    return {"z": z, "q": q, "k": k, "v": v, "rq": rq, "rk": rk, "keys": all_k,
            "values": all_v, "s": s, "mx": mx, "delta": delta, "rem": rem, "argmax": argmax,
            "e": e, "zsum": zsum, "o": o.reshape(1, d), "r": r.reshape(1, d),
            "out": out.reshape(1, d)}


# --------------------------------------------------------------------------------------------
# The two sides of a session's cache


def _attention_layers(layers) -> tuple[int, ...]:
    return tuple(k for k, lc in enumerate(layers) if lc.activation == "attention")


def _check_session(session: bytes) -> None:
    if not isinstance(session, bytes) or not 1 <= len(session) <= 64:
        raise ValueError("a session id is 1..64 bytes")


@dataclass
class CacheCommitments:
    """The public side of one session's KV cache over one shard (what a verifier keeps): per
    attention layer of the shard, one key and one value row commitment per position, and the
    running digest every step proof is bound to."""

    session: bytes
    layers: tuple[int, ...]  # indices in the shard of its attention layers
    keys: list[list[bytes]]
    values: list[list[bytes]]
    position: int = 0
    digest: bytes = b""
    _points: list[tuple[list, list]] = field(default_factory=list, repr=False)

    @classmethod
    def open(cls, commitment: ShardCommitment, session: bytes) -> CacheCommitments:
        """An empty cache for `session` over the shard `commitment`."""
        _check_session(session)
        layers = _attention_layers(commitment.layers)
        start = hashlib.sha256(b"p2pinfer-zk-v1/kv-cache" + len(session).to_bytes(1, "little")
                               + session + msgpack.packb(list(layers))).digest()
        return cls(session, layers, [[] for _ in layers], [[] for _ in layers], 0, start,
                   [([], []) for _ in layers])

    def _grow(self, rows: list[tuple[bytes, bytes]]) -> None:
        h = hashlib.sha256(self.digest + self.position.to_bytes(8, "little"))
        for k, (key, value) in enumerate(rows):
            h.update(key + value)
            self.keys[k].append(key)
            self.values[k].append(value)
            if self._points:
                self._points[k][0].append(decode_point(key))
                self._points[k][1].append(decode_point(value))
        self.digest = h.digest()
        self.position += 1

    def points(self, k: int) -> tuple[list, list]:
        """Decoded key and value row commitments of the k-th attention layer (kept)."""
        if len(self._points) != len(self.layers):
            self._points = [([decode_point(p) for p in ks], [decode_point(p) for p in vs])
                            for ks, vs in zip(self.keys, self.values)]
        return self._points[k]

    def clear(self) -> None:
        """Forget every row (the session ended)."""
        for rows in (*self.keys, *self.values):
            rows.clear()
        self._points = []


@dataclass
class KvCache:
    """The prover's side of one session's KV cache over one shard: the committed rows, their
    blindings (secret) and the public commitments. Closed with the session (`close`)."""

    commitments: CacheCommitments
    keys: list[np.ndarray]  # per attention layer: (T, kv_width) rotated keys
    values: list[np.ndarray]
    key_blinds: list[list[int]] = field(repr=False)
    value_blinds: list[list[int]] = field(repr=False)

    @classmethod
    def open(cls, shard: CommittedShard, session: bytes) -> KvCache:
        pub = CacheCommitments.open(shard.commitment, session)
        widths = [attention_shape(shard.shard.layers[k]).kv_width for k in pub.layers]
        return cls(pub, [np.zeros((0, w), dtype=np.int64) for w in widths],
                   [np.zeros((0, w), dtype=np.int64) for w in widths],
                   [[] for _ in widths], [[] for _ in widths])

    @property
    def position(self) -> int:
        return self.commitments.position

    def close(self) -> None:
        """Erase the rows and blindings."""
        for arr in (*self.keys, *self.values):
            arr.fill(0)
        self.keys = [a[:0] for a in self.keys]
        self.values = [a[:0] for a in self.values]
        for b in (*self.key_blinds, *self.value_blinds):
            b.clear()
        self.commitments.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# The step proof


@dataclass
class StepProof:
    """A decode step's proof: the position it extends and the cache digest it was proven
    against (both also bound into the proof), and the shard proof itself."""

    position: int
    cache_digest: bytes
    proof: ShardProof

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": STEP_VERSION, "t": "zk-step-proof", "pos": self.position,
                              "cache": self.cache_digest, "proof": self.proof.to_bytes()})

    @classmethod
    def from_bytes(cls, data: bytes, max_size: int = DEFAULT_MAX_PROOF) -> StepProof:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProofFormatError("expected bytes")
        if len(data) > max_size + 256:
            raise ProofFormatError(f"step proof of {len(data)} bytes is above the limit")
        try:
            m = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True,
                                max_bin_len=max_size, max_str_len=64, max_array_len=16,
                                max_map_len=8)
        except Exception as exc:
            raise ProofFormatError("step proof does not decode as msgpack") from exc
        if not isinstance(m, dict) or set(m) != {"v", "t", "pos", "cache", "proof"}:
            raise ProofFormatError("step proof has missing or unknown fields")
        if m["v"] != STEP_VERSION or m["t"] != "zk-step-proof":
            raise ProofFormatError("not a zk-step-proof of a known version")
        pos, cache = m["pos"], m["cache"]
        if type(pos) is not int or not 0 <= pos < MAX_POSITIONS:
            raise ProofFormatError("bad step position")
        if not isinstance(cache, bytes) or len(cache) != 32:
            raise ProofFormatError("bad cache digest")
        return cls(pos, cache, ShardProof.from_bytes(m["proof"], max_size))


def _step_binding(commitment: ShardCommitment, cache: CacheCommitments, x: np.ndarray,
                  y: np.ndarray, binding: ProofBinding) -> tuple[Transcript, bytes]:
    for v, what in ((binding.task_id, "task_id"), (binding.manifest_digest, "manifest_digest"),
                    (binding.context, "context")):
        if not isinstance(v, bytes) or len(v) > 1024:
            raise ValueError(f"binding {what} must be bytes of at most 1024")
    parts = [
        (b"task", binding.task_id),
        (b"manifest", binding.manifest_digest),
        (b"context", binding.context),
        (b"shard", commitment.digest()),
        (b"session", cache.session),
        (b"position", cache.position.to_bytes(8, "little")),
        (b"cache", cache.digest),
        (b"input", tensor_digest(x)),
        (b"output", tensor_digest(y)),
    ]
    t = Transcript(STEP_DOMAIN)
    h = hashlib.sha256(STEP_DOMAIN)
    for label, data in parts:
        t.absorb(label, data)
        h.update(len(label).to_bytes(8, "little") + label + len(data).to_bytes(8, "little") + data)
    return t, h.digest()


def _check_row(commitment: ShardCommitment, x: np.ndarray, y: np.ndarray | None) -> None:
    if x.shape != (1, commitment.layers[0].d_in) or (
            y is not None and y.shape != (1, commitment.layers[-1].d_out)):
        raise ShapeMismatch("shapes", "a step proves one token: x (1, d_in), y (1, d_out)")
    if int(np.abs(x).max(initial=0)) >= 1 << (BITS - 8):
        raise ShapeMismatch("shapes", "an input value is outside (-2**24, 2**24)")


def _params(commitment: ShardCommitment, position: int):
    kv = [attention_shape(lc).kv_width for lc in commitment.layers
          if lc.activation == "attention"]
    need = max(generator_count_for(commitment.layers, position + 1), *kv, 1)
    return params_for(need, commitment.generator_seed)


def _walk(led, commitment: ShardCommitment, x: np.ndarray, y: np.ndarray,
          views: dict[int, LayerCache], wits: list[Witness] | None,
          traces: list | None, rows: dict | None) -> None:
    """The layers from the last to the first, one token (nt = 0), attention layers over the
    cache (`views`, by layer index)."""
    claims: list[Claim] = _output_claims(led, y, 0)
    pending: dict[int, list[Claim]] = {}
    for k in range(len(commitment.layers) - 1, -1, -1):
        lc = commitment.layers[k]
        wit = wits[k] if wits is not None else None
        name = f"layer{commitment.first_layer + k}"
        src = k - lc.skip
        deferred = pending.setdefault(src, [])
        if lc.activation == "attention":
            claims = decode_attention_layer(led, lc, commitment.frac_bits, claims,
                                            x if k == 0 else None, wit, name, rows, views[k])
        else:
            claims = _layer(led, lc, commitment.frac_bits, 0, claims, x if k == 0 else None,
                            wit, name, rows, deferred,
                            (x if src == 0 else None,
                             traces[src].a if traces is not None else None), 1)
        claims = claims + pending.pop(k, [])


def prove_step(shard: CommittedShard, cache: KvCache, x: np.ndarray,
               binding: ProofBinding) -> tuple[np.ndarray, StepProof]:
    """Run and prove the next token's step: x (1, d_in) at position `cache.position`; returns
    (y (1, d_out), its StepProof) and commits the step's new key and value rows to `cache`."""
    x = _as_int(x, "x")
    c = shard.commitment
    _check_row(c, x, None)
    pub = cache.commitments
    if pub.layers != _attention_layers(c.layers):
        raise CacheMismatch("kv-cache", "this cache belongs to another shard")
    if pub.position >= MAX_POSITIONS:
        raise ShapeMismatch("kv-cache", f"a session holds at most {MAX_POSITIONS} positions")
    slot = {k: i for i, k in enumerate(pub.layers)}
    atts: dict[int, dict] = {}

    def step(k: int, layer: FixedLayer, a: np.ndarray) -> dict:
        i = slot[k]
        atts[k] = attention_step(a, layer.weight, layer.bias, attention_shape(layer),
                                 shard.shard.frac_bits, cache.keys[i], cache.values[i])
        return atts[k]

    traces = shard.shard.trace(x, 1, attention=step)
    y = traces[-1].out
    t, bind = _step_binding(c, pub, x, y, binding)
    led = ProverLedger(_params(c, pub.position), t)
    wits = [Witness(layer.weight, layer.bias, tr.a, tr.z, shard.weight_blinds[k],
                    shard.bias_blinds[k], tr.zw)
            for k, (layer, tr) in enumerate(zip(shard.shard.layers, traces))]
    views = {k: LayerCache(pub.position, keys=cache.keys[i], values=cache.values[i],
                           key_blinds=cache.key_blinds[i], value_blinds=cache.value_blinds[i],
                           att=atts[k])
             for k, i in slot.items()}
    _walk(led, c, x, y, views, wits, traces, None)
    proof = StepProof(pub.position, pub.digest, ShardProof(bind, led.finish()))
    for k, i in slot.items():
        cache.keys[i] = np.concatenate([cache.keys[i], atts[k]["rk"]])
        cache.values[i] = np.concatenate([cache.values[i], atts[k]["v"]])
        cache.key_blinds[i].append(views[k].new_key_blind)
        cache.value_blinds[i].append(views[k].new_value_blind)
    pub._grow([(views[k].new_key, views[k].new_value) for k in pub.layers])
    return y, proof


def verify_step(commitment: ShardCommitment, cache: CacheCommitments, x: np.ndarray,
                y: np.ndarray, proof: StepProof, binding: ProofBinding) -> None:
    """Accept the step (and grow `cache` by its new rows) or raise a ProofError naming the
    failed check; `cache` is unchanged on failure. `CacheMismatch` when the step was proven
    at another position or against another cache than `cache`."""
    try:
        x, y = _as_int(x, "x"), _as_int(y, "y")
    except ValueError as exc:
        raise ShapeMismatch("shapes", str(exc)) from None
    _check_commitment(commitment)
    _check_row(commitment, x, y)
    if cache.layers != _attention_layers(commitment.layers):
        raise CacheMismatch("kv-cache", "this cache belongs to another shard")
    if proof.position != cache.position:
        raise CacheMismatch("kv-cache", f"the step extends position {proof.position}, the "
                                        f"committed cache holds {cache.position} rows")
    if not hmac.compare_digest(proof.cache_digest, cache.digest):
        raise CacheMismatch("kv-cache", "the step was proven against another session's cache "
                                        "or rows that were never committed")
    t, bind = _step_binding(commitment, cache, x, y, binding)
    if not hmac.compare_digest(bind, proof.proof.binding):
        raise BindingMismatch("binding", "proof was made for another task, manifest, x or y")
    try:
        led = VerifierLedger(_params(commitment, cache.position), t, proof.proof.record)
        rows = {}
        for lc in commitment.layers:
            w_pts, b_pts = lc.decoded_rows()
            rows[("w", id(lc.weight_rows))] = w_pts
            rows[("b", id(lc.bias_rows))] = b_pts
        views = {}
        for i, k in enumerate(cache.layers):
            kp, vp = cache.points(i)
            views[k] = LayerCache(cache.position, key_points=kp, value_points=vp)
        _walk(led, commitment, x, y, views, None, None, rows)
        led.finish()
    except ProofFormatError as exc:
        raise MalformedProof("encoding", str(exc)) from None
    cache._grow([(views[k].new_key, views[k].new_value) for k in cache.layers])


class CachedForward:
    """A shard's fixed-point forward one token at a time over a plain KV cache (nothing
    committed, nothing proven): the requester's own head and tail layers of a proven
    generation. Bit for bit the rows of `shard.forward_fixed` over the whole sequence."""

    def __init__(self, shard: ProvableMlp) -> None:
        self.shard = shard
        layers = _attention_layers(shard.layers)
        self.keys = {k: np.zeros((0, attention_shape(shard.layers[k]).kv_width), np.int64)
                     for k in layers}
        self.values = {k: a.copy() for k, a in self.keys.items()}

    @property
    def position(self) -> int:
        return next(iter(self.keys.values())).shape[0] if self.keys else 0

    def step(self, x: np.ndarray) -> np.ndarray:
        """x (1, d_in) at the next position -> y (1, d_out)."""
        a = _as_int(x, "x")
        if a.shape != (1, self.shard.d_in):
            raise ValueError(f"a step is one row of {self.shard.d_in} features")
        rows: dict[int, dict] = {}

        def attend(k: int, layer: FixedLayer, inp: np.ndarray) -> dict:
            rows[k] = attention_step(inp, layer.weight, layer.bias, attention_shape(layer),
                                     self.shard.frac_bits, self.keys[k], self.values[k])
            return rows[k]

        y = self.shard.trace(a, 1, attention=attend)[-1].out
        for k, att in rows.items():
            self.keys[k] = np.concatenate([self.keys[k], att["rk"]])
            self.values[k] = np.concatenate([self.values[k], att["v"]])
        return y

    def close(self) -> None:
        for arr in (*self.keys.values(), *self.values.values()):
            arr.fill(0)
        self.keys = {k: a[:0] for k, a in self.keys.items()}
        self.values = {k: a[:0] for k, a in self.values.items()}
