"""Shard proofs: output = shard(input) under committed weights, in zero knowledge (zkDPS).

The proof runs GKR-style from the public output back to the public input (Goldwasser, Kalai,
Rothblum 2008; zkDL section 4 for ReLU by bit decomposition; Thaler's linear-time sum-check for
matrix products, "Time-optimal interactive proofs for circuit evaluation", 2013). Only claims
about one layer's output at random points flow to the layer below; no activation is committed.
Per layer, with i = (token, out) and j the 32 bits of the pre-activation z:

1. Claims out~(p_k) = v_k are merged with powers of a challenge alpha; a residual layer first
   splits off a~(p_k) (committed, or computed from x by the verifier at the first layer).
2. The prover commits the bit matrix B (z + 2**31 = sum_j 2**j B_ij, Hyrax rows) and runs one
   degree-3 sum-check over (i, j) of
       lambda/32 * E1(i) s(i) m(i)  +  eq(r', (i, j)) B(i, j) (1 - B(i, j))
   where E1 = sum_k alpha^k eq(p_k, .), s = B(., 31) the sign bit, m = sum_{f<=j<31} 2**(j-f) B
   (ReLU: out = s m; identity layers use s = 1, m = q). The second term forces B to be bits,
   which makes the rescale floor(z / 2**f) and the sign exact.
3. One proof-of-dot-product opens B at the final point for s, m, z and B itself.
4. z~(rho) - b~(rho_out) = sum_k a~(rho_tok, k) W~(k, rho_out) by a degree-2 sum-check over
   k; W~ and b~ are opened against the manifest's row commitments, a~ becomes the next claim.

All round polynomials and evaluations are committed (p2pinfer.zk.ledger); the transcript binds
the task, the manifest digest, the shard commitment and digests of input and output.
Byte layout: protocols/zk-proof.md ("Proof", "Transcript").

This module holds the proof's format, the binding and the walk over the layers; the argument
of each kind of layer is a gadget (gadgets/: bits, lookup, gated, rmsnorm, attention), picked
per layer by `_layer`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import msgpack
import numpy as np

from .commitment import CommittedShard
from .errors import BindingMismatch, ProofError, ProofFormatError, ShapeMismatch
from .field import int_mle_eval
from .fixed import (
    ACTIVATIONS,
    BITS,
    GATED_ACTIVATIONS,
    MAX_DIM,
    RMS_EPS_DEFAULT,
    RMS_EPS_MAX,
    RMS_EPS_MIN,
    attention_shape,
    log2_exact,
)
from .gadgets.attention import attention_layer
from .gadgets.bits import bits_head
from .gadgets.common import Claim, Witness, matmul_tail, residual_claims
from .gadgets.gated import gated_layer
from .gadgets.lookup import lookup_head
from .gadgets.rmsnorm import norm_layer
from .group import PedersenParams, decode_scalar, encode_scalar
from .layout import generator_count_for, params_for
from .ledger import DotProof, LedgerRecord, Lin, ProductProof, ProverLedger, VerifierLedger
from .manifest import LayerCommitment, ModelManifest, ShardCommitment
from .tables import LOOKUP_ACTIVATIONS
from .transcript import Transcript, tensor_digest

PROOF_VERSION = 1
MAX_TOKENS = 1 << 16

DOMAIN = b"p2pinfer/zk-shard-proof/v1"
DEFAULT_MAX_PROOF = 16 << 20


@dataclass(frozen=True)
class ProofBinding:
    """What a proof is bound to besides x and y: the task and the manifest the verifier pins."""

    task_id: bytes
    manifest_digest: bytes
    context: bytes = b""  # e.g. network id and stage index, as the caller defines


@dataclass
class ShardProof:
    binding: bytes  # digest of (binding, shard commitment, x, y); checked first
    record: LedgerRecord

    def to_bytes(self) -> bytes:
        r = self.record
        return msgpack.packb({
            "v": PROOF_VERSION,
            "t": "zk-shard-proof",
            "bind": self.binding,
            "c": r.commits,
            "m": r.matrices,
            "p": [[p.alpha, p.beta, p.delta, [encode_scalar(z) for z in p.z]] for p in r.products],
            "d": [[d.delta, d.betas, [encode_scalar(z) for z in d.z], encode_scalar(d.z_delta),
                   [encode_scalar(z) for z in d.z_betas]] for d in r.dots],
            "tau": [encode_scalar(t) for t in r.taus],
        })

    def size_by_part(self) -> dict[str, int]:
        """Encoded bytes of each part of the proof (they add up to len(to_bytes()) less a few
        bytes of framing): single commitments (claimed values and sum-check round
        coefficients), committed tables (Hyrax row commitments), product proofs, dot-product
        openings, and the rest (version, type, binding digest, taus)."""
        r = self.record
        whole = self.to_bytes()
        parts = {
            "commitments": len(msgpack.packb(r.commits)),
            "tables": len(msgpack.packb(r.matrices)),
            "products": len(msgpack.packb(msgpack.unpackb(whole)["p"])),
            "openings": len(msgpack.packb(msgpack.unpackb(whole)["d"])),
        }
        parts["other"] = len(whole) - sum(parts.values())
        return parts

    @classmethod
    def from_bytes(cls, data: bytes, max_size: int = DEFAULT_MAX_PROOF) -> ShardProof:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProofFormatError("expected bytes")
        if len(data) > max_size:
            raise ProofFormatError(f"proof of {len(data)} bytes is above the {max_size} limit")
        try:
            m = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True,
                                max_bin_len=1 << 10, max_str_len=64,
                                max_array_len=1 << 20, max_map_len=16)
        except Exception as exc:
            raise ProofFormatError("proof does not decode as msgpack") from exc
        if not isinstance(m, dict):
            raise ProofFormatError("proof is not a map")
        if m.get("v") != PROOF_VERSION:
            raise ProofFormatError(f"unsupported proof version {m.get('v')!r}")
        if m.get("t") != "zk-shard-proof":
            raise ProofFormatError(f"expected a zk-shard-proof, got {m.get('t')!r}")
        if set(m) != {"v", "t", "bind", "c", "m", "p", "d", "tau"}:
            raise ProofFormatError("proof has missing or unknown fields")
        bind = m["bind"]
        if not isinstance(bind, bytes) or len(bind) != 32:
            raise ProofFormatError("bad binding digest")
        rec = LedgerRecord(
            commits=_points(m["c"]),
            matrices=[_points(x) for x in _list(m["m"])],
            products=[_product(x) for x in _list(m["p"])],
            dots=[_dot(x) for x in _list(m["d"])],
            taus=[decode_scalar(x) for x in _list(m["tau"])],
        )
        return cls(bind, rec)


def _list(v: object) -> list:
    if not isinstance(v, list):
        raise ProofFormatError("expected an array")
    return v


def _points(v: object) -> list[bytes]:
    out = _list(v)
    for p in out:
        if not isinstance(p, bytes) or len(p) != 48:
            raise ProofFormatError("a group element is not 48 bytes")
    return out


def _product(v: object) -> ProductProof:
    x = _list(v)
    if len(x) != 4:
        raise ProofFormatError("a product proof has the wrong arity")
    a, b, d = _points(x[:3])
    z = [decode_scalar(s) for s in _list(x[3])]
    if len(z) != 5:
        raise ProofFormatError("a product proof has the wrong number of responses")
    return ProductProof(a, b, d, z)


def _dot(v: object) -> DotProof:
    x = _list(v)
    if len(x) != 5:
        raise ProofFormatError("an opening proof has the wrong arity")
    (delta,) = _points([x[0]])
    betas = _points(x[1])
    z = [decode_scalar(s) for s in _list(x[2])]
    z_betas = [decode_scalar(s) for s in _list(x[4])]
    return DotProof(delta, betas, z, decode_scalar(x[3]), z_betas)


# --------------------------------------------------------------------------------------------
# One layer: the dispatch to its gadget, written once for both sides (`wit` is None on the
# verifier).


def _layer(
    led: ProverLedger | VerifierLedger,
    lc: LayerCommitment,
    frac_bits: int,
    nt: int,
    claims: list[Claim],
    x: np.ndarray | None,
    wit: Witness | None,
    name: str,
    rows: list | None,
    deferred: list[Claim] | None = None,
    source: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    live: int | None = None,
) -> list[Claim]:
    """Reduce the claims on this layer's output to claims on its input (returned). The claims
    of a skip residual (`lc.skip`) on the input of an earlier layer go to `deferred`, with
    `source` = (that input if it is the public x, else None; its witness on the prover)."""
    prover = wit is not None
    f = frac_bits
    nk, no = log2_exact(lc.d_in, "d_in"), log2_exact(lc.d_out, "d_out")
    ni = nt + no
    relu = lc.activation == "relu"
    res_x, res_a = source if lc.skip else (x, wit.a if prover else None)

    def split() -> list[Claim]:
        return residual_claims(led, lc.residual, nt, claims, res_x, res_a, prover)

    def keep(below: list[Claim]) -> list[Claim]:
        """The residual claims that go with the claims on this layer's input."""
        if not lc.skip:
            return below
        if deferred is None:
            raise ShapeMismatch("shard", "a skip residual needs the caller's deferred claims")
        deferred.extend(below)
        return []

    if lc.activation == "rmsnorm":
        return norm_layer(led, lc, f, nt, ni, claims, x, wit, name, rows)
    if lc.activation == "attention":
        return attention_layer(led, lc, f, nt, claims, x, wit, name, rows,
                               (1 << nt) if live is None else live)
    if lc.activation in GATED_ACTIVATIONS:
        below, rest = gated_layer(led, lc, f, nt, nk, ni, claims, x, wit, name, rows, split)
        return [*keep(below), *rest]
    if lc.activation in LOOKUP_ACTIVATIONS:
        below = split()
        rho, z_lin = lookup_head(led, lc.activation, f, nt, ni, claims, below, wit, name,
                                 lc.lookup_range)
        return matmul_tail(led, lc, nt, nk, rho, z_lin, keep(below), x, wit, name, rows)
    rho, z_lin, below = bits_head(led, f, nt, ni, claims, wit.z if prover else None, relu, name,
                                   split)
    return matmul_tail(led, lc, nt, nk, rho, z_lin, keep(below), x, wit, name, rows)


# --------------------------------------------------------------------------------------------
# Public API


def _binding(commitment: ShardCommitment, x: np.ndarray, y: np.ndarray,
             binding: ProofBinding) -> tuple[Transcript, bytes]:
    for v, what in ((binding.task_id, "task_id"), (binding.manifest_digest, "manifest_digest"),
                    (binding.context, "context")):
        if not isinstance(v, bytes) or len(v) > 1024:
            raise ValueError(f"binding {what} must be bytes of at most 1024")
    parts = [
        (b"task", binding.task_id),
        (b"manifest", binding.manifest_digest),
        (b"context", binding.context),
        (b"shard", commitment.digest()),
        (b"input", tensor_digest(x)),
        (b"output", tensor_digest(y)),
    ]
    t = Transcript(DOMAIN)
    h = hashlib.sha256(DOMAIN)
    for label, data in parts:
        t.absorb(label, data)
        h.update(len(label).to_bytes(8, "little") + label + len(data).to_bytes(8, "little") + data)
    return t, h.digest()


def _check_shapes(commitment: ShardCommitment, x: np.ndarray, y: np.ndarray) -> int:
    """log2 of the padded token count (tokens are zero-padded to a power of two)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ShapeMismatch("shapes", "x and y must be (tokens, features) with equal tokens")
    if x.shape[1] != commitment.layers[0].d_in or y.shape[1] != commitment.layers[-1].d_out:
        raise ShapeMismatch("shapes", "x or y does not match the shard's dimensions")
    if not 1 <= x.shape[0] <= MAX_TOKENS:
        raise ShapeMismatch("shapes", f"the number of tokens must be in 1..{MAX_TOKENS}")
    if x.size and int(np.abs(x).max()) >= 1 << (BITS - 8):
        raise ShapeMismatch("shapes", "an input value is outside (-2**24, 2**24)")
    return (x.shape[0] - 1).bit_length()


def _pad_tokens(a: np.ndarray, nt: int) -> np.ndarray:
    if a.shape[0] == 1 << nt:
        return a
    out = np.zeros((1 << nt, a.shape[1]), dtype=np.int64)
    out[: a.shape[0]] = a
    return out


def _as_int(t: object, what: str) -> np.ndarray:
    a = np.asarray(t)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an integer (fixed-point) tensor")
    return a.astype(np.int64)


def _params(commitment: ShardCommitment, tokens: int) -> PedersenParams:
    return params_for(generator_count_for(commitment.layers, tokens), commitment.generator_seed)


def prove(shard: CommittedShard, x: np.ndarray, y: np.ndarray,
          binding: ProofBinding) -> ShardProof:
    """Prove y = shard.forward_fixed(x) under shard.commitment, bound to `binding`."""
    x, y = _as_int(x, "x"), _as_int(y, "y")
    c = shard.commitment
    nt = _check_shapes(c, x, y)
    t, bind = _binding(c, x, y, binding)
    live = x.shape[0]
    x = _pad_tokens(x, nt)
    traces = shard.shard.trace(x, live)
    if not np.array_equal(traces[-1].out[:live], y):
        raise ValueError("y is not this shard's fixed-point output on x")
    led = ProverLedger(_params(c, 1 << nt), t)
    claims = _output_claims(led, y, nt)
    pending: dict[int, list[Claim]] = {}
    for k in range(len(c.layers) - 1, -1, -1):
        layer = shard.shard.layers[k]
        wit = Witness(layer.weight, layer.bias, traces[k].a, traces[k].z,
                       shard.weight_blinds[k], shard.bias_blinds[k], traces[k].zw)
        src = k - layer.skip
        deferred = pending.setdefault(src, [])
        claims = _layer(led, c.layers[k], c.frac_bits, nt, claims, x if k == 0 else None, wit,
                        f"layer{c.first_layer + k}", None, deferred,
                        (x if src == 0 else None, traces[src].a), live)
        claims = claims + pending.pop(k, [])
    return ShardProof(bind, led.finish())


def _output_claims(led, y: np.ndarray, nt: int) -> list[Claim]:
    """The claim on the (token-masked) output at a random point: the verifier knows y."""
    n = nt + (y.shape[1].bit_length() - 1)
    r = [led.challenge(b"output/%d" % k) for k in range(n)]
    return [(r, Lin(const=int_mle_eval(_pad_tokens(y, nt), r)), y.shape[0])]


def verify(commitment: ShardCommitment | ModelManifest, x: np.ndarray, y: np.ndarray,
           proof: ShardProof, binding: ProofBinding) -> None:
    """Accept (return None) or raise a ProofError subclass naming the failed check.

    `commitment` is the manifest slice of the shard (`manifest.shard(start, stop)`), or a whole
    manifest when the shard is the whole model. Check `binding.manifest_digest` against the
    digest you pin: the proof is bound to it.
    """
    if isinstance(commitment, ModelManifest):
        commitment = commitment.shard(0, len(commitment.layers))
    try:
        x, y = _as_int(x, "x"), _as_int(y, "y")
    except ValueError as exc:
        raise ShapeMismatch("shapes", str(exc)) from None
    _check_commitment(commitment)
    nt = _check_shapes(commitment, x, y)
    t, bind = _binding(commitment, x, y, binding)
    if not hmac.compare_digest(bind, proof.binding):
        raise BindingMismatch("binding", "proof was made for another task, manifest, x or y")
    live = x.shape[0]
    x = _pad_tokens(x, nt)
    try:
        rows = {}
        for lc in commitment.layers:
            w_pts, b_pts = lc.decoded_rows()
            rows[("w", id(lc.weight_rows))] = w_pts
            rows[("b", id(lc.bias_rows))] = b_pts
        led = VerifierLedger(_params(commitment, 1 << nt), t, proof.record)
        claims = _output_claims(led, y, nt)
        pending: dict[int, list[Claim]] = {}
        for k in range(len(commitment.layers) - 1, -1, -1):
            src = k - commitment.layers[k].skip
            deferred = pending.setdefault(src, [])
            claims = _layer(led, commitment.layers[k], commitment.frac_bits, nt, claims,
                            x if k == 0 else None, None, f"layer{commitment.first_layer + k}",
                            rows, deferred, (x if src == 0 else None, None), live)
            claims = claims + pending.pop(k, [])
        led.finish()
    except ProofFormatError as exc:
        raise MalformedProof("encoding", str(exc)) from None


def _check_commitment(c: ShardCommitment) -> None:
    """What decoding a manifest checks, for a commitment built in code: ShapeMismatch if the
    shard's structure is not one the proof can be checked against."""
    def pow2(n: object) -> bool:
        return type(n) is int and 1 <= n <= MAX_DIM and not n & (n - 1)

    if type(c.frac_bits) is not int or not 1 <= c.frac_bits <= 16 or not c.layers:
        raise ShapeMismatch("shard", "frac_bits must be an int in 1..16, with at least one layer")
    for k, lc in enumerate(c.layers):
        if (lc.activation not in ACTIVATIONS or not pow2(lc.d_in) or not pow2(lc.d_out)
                or type(lc.residual) is not bool or type(lc.skip) is not int):
            raise ShapeMismatch("shard", f"layer {k} has a malformed shape or activation")
        if lc.activation == "attention":
            problem = attention_shape(lc).check()
            if problem:
                raise ShapeMismatch("shard", problem)
        elif lc.heads or lc.kv_heads or lc.rope:
            raise ShapeMismatch("shard", "heads, kv_heads and rope belong to attention layers")
        if lc.activation == "rmsnorm":
            if type(lc.eps) is not int or not RMS_EPS_MIN <= lc.eps <= RMS_EPS_MAX:
                raise ShapeMismatch("shard", "an RMSNorm eps must be an int in [4, 2**32]")
        elif lc.eps != RMS_EPS_DEFAULT:
            raise ShapeMismatch("shard", "eps belongs to RMSNorm layers")
        if not 0 <= k - lc.skip <= k:
            raise ShapeMismatch("shard", "a residual reaches back before the shard's first layer")
        if lc.residual and lc.d_out != c.layers[k - lc.skip].d_in:
            raise ShapeMismatch("shard", "a skip residual's source has another width")
        if k and c.layers[k - 1].d_out != lc.d_in:
            raise ShapeMismatch("shard", "the shard's layers do not chain")


class MalformedProof(ProofError):
    """A point or scalar inside the proof does not decode."""
