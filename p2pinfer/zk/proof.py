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
Byte layout: protocols/zk-proof.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass

import msgpack
import numpy as np

from .attention_proof import attention_layer
from .booleanity import BooleanityProver
from .errors import (
    BindingMismatch,
    FixedPointOverflow,
    ProofError,
    ProofFormatError,
    ShapeMismatch,
)
from .field import (
    P,
    bind_first,
    dot,
    eq_eval,
    eq_table,
    int_mle_eval,
    int_vecmat,
)
from .gadgets import (
    INV32,
    POWERS,
    BitsOracle,
    Claim,
    Committed,
    TripleOracle,
    Witness,
    act_split,
    bit_decomposition,
    bits_head,
    columns,
    flat,
    kron,
    lookup_inverses,
    lookup_table_side,
    masked_eq,
    matmul_tail,
    open_vector,
)
from .group import PedersenParams, decode_scalar, encode_scalar
from .ledger import (
    DotProof,
    LedgerRecord,
    Lin,
    ProductProof,
    ProverLedger,
    VerifierLedger,
    sumcheck,
)
from .shard import (
    _LOOKUP_NAMES,
    ACTIVATIONS,
    BITS,
    GATED_ACTIVATIONS,
    LOOKUP_ACTIVATIONS,
    MAX_DIM,
    MAX_LOOKUP_FRAC_BITS,
    MAX_RMS_FRAC_BITS,
    RMS_EPS_DEFAULT,
    RMS_EPS_MAX,
    RMS_EPS_MIN,
    RMS_R_BITS,
    RMS_R_FRAC,
    RMS_RANGE_BITS,
    CommittedShard,
    LayerCommitment,
    ModelManifest,
    ShardCommitment,
    activation_table,
    attention_shape,
    generator_count_for,
    hyrax_split,
    log2_exact,
    lookup_activation,
    params_for,
    rms_constants,
    rmsnorm_fixed,
)
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
# Sum-check oracles (prover side)


# --------------------------------------------------------------------------------------------
# One layer, written once for both sides: `wit` is None on the verifier.


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
        return _residual_claims(led, lc.residual, nt, claims, res_x, res_a, prover)

    def keep(below: list[Claim]) -> list[Claim]:
        """The residual claims that go with the claims on this layer's input."""
        if not lc.skip:
            return below
        if deferred is None:
            raise ShapeMismatch("shard", "a skip residual needs the caller's deferred claims")
        deferred.extend(below)
        return []

    if lc.activation == "rmsnorm":
        return _norm_layer(led, lc, f, nt, ni, claims, x, wit, name, rows)
    if lc.activation == "attention":
        return attention_layer(led, lc, f, nt, claims, x, wit, name, rows,
                               (1 << nt) if live is None else live)
    if lc.activation in GATED_ACTIVATIONS:
        below, rest = _gated_layer(led, lc, f, nt, nk, ni, claims, x, wit, name, rows, split)
        return [*keep(below), *rest]
    if lc.activation in LOOKUP_ACTIVATIONS:
        below = split()
        rho, z_lin = _lookup_head(led, lc.activation, f, nt, ni, claims, below, wit, name)
        return matmul_tail(led, lc, nt, nk, rho, z_lin, keep(below), x, wit, name, rows)
    rho, z_lin, below = bits_head(led, f, nt, ni, claims, wit.z if prover else None, relu, name,
                                   split)
    return matmul_tail(led, lc, nt, nk, rho, z_lin, keep(below), x, wit, name, rows)


def _gated_layer(led, lc: LayerCommitment, f: int, nt: int, nk: int, ni: int,
                 claims: list[Claim], x: np.ndarray | None, wit: Witness | None, name: str,
                 rows: list | None, split_residual) -> tuple[list[Claim], list[Claim]]:
    """A gated layer: out = floor(p / 2**f) (+ a) with p = g * u elementwise, where
    u = floor(z_u / 2**f), g = G(floor(z_g / 2**f)) and [z_u | z_g] = a [W_u | W_g] + b.
    Returns (the residual claims, the claims on a from both halves)."""
    prover = wit is not None
    d = lc.d_out
    # 1-3. the output rescale: claims on out become p~(rho)
    rho, p_lin, below = bits_head(led, f, nt, ni, claims, wit.z if prover else None, False,
                                   name, split_residual)
    # 4. p~(rho) = sum_i eq(rho, i) g_i u_i: sum-check of degree 3, then g~ and u~ at rho2
    #    committed, with their product proven
    oracle = None
    if prover:
        q = wit.zw >> f
        gate = lookup_activation(q[:, d:], GATED_ACTIVATIONS[lc.activation], f)
        oracle = TripleOracle(eq_table(rho), flat(gate), flat(q[:, :d]))
    rho2, final = sumcheck(led, f"{name}/gate-product", p_lin, ni, 3, oracle)
    i_g = led.put(oracle.s[0] if prover else None)
    i_u = led.put(oracle.m[0] if prover else None)
    i_gu = led.put(oracle.s[0] * oracle.m[0] % P if prover else None)
    led.relate(f"{name}/gate-product-final", final - Lin.var(i_gu) * eq_eval(rho, rho2))
    led.product(f"{name}/gate-product-mul", i_g, i_u, i_gu)
    full = 1 << nt
    # 5. the up half, columns [0, d) of the matrix product: an identity rescale
    rho_u, zu_lin, _ = bits_head(led, f, nt, ni, [(rho2, Lin.var(i_u), full)],
                                  wit.zw[:, :d] if prover else None, False, f"{name}/up",
                                  list)
    up = matmul_tail(led, lc, nt, nk, rho_u[:nt] + [0] + rho_u[nt:], zu_lin, [], x, wit,
                      f"{name}/up", rows)
    # 6. the gate half, columns [d, 2d): the lookup of G
    gate_wit = dataclasses.replace(wit, z=wit.zw[:, d:]) if prover else None
    rho_g, zg_lin = _lookup_head(led, GATED_ACTIVATIONS[lc.activation], f, nt, ni,
                                 [(rho2, Lin.var(i_g), full)], [], gate_wit, f"{name}/gate")
    gate_claims = matmul_tail(led, lc, nt, nk, rho_g[:nt] + [1] + rho_g[nt:], zg_lin, [], x,
                               wit, f"{name}/gate", rows)
    return below, [*up, *gate_claims]


# --------------------------------------------------------------------------------------------
# RMSNorm (shard.rmsnorm_fixed): the rescales by bits, the broadcast products by sum-checks,
# and R = floor(sqrt(C / S)) by two range checks: 0 <= C - R^2 S and 0 <= (R+1)^2 S - C - 1,
# both below 2**80, with R below 2**32 and S = sum x^2 + E tied to x by a sum-check. All of
# them are integers far below the field's size, so the field equations are integer ones.

_RANGE_COLS = 256  # per token: D1 bits [0, 80), D2 bits [80, 160), R bits [160, 192), zeros


class _RsqrtOracle:
    """Round messages of sum_t e(t) [D1 + R^2 S - C + mu (D2 - (R+1)^2 S + C + 1)] (degree 4)."""

    def __init__(self, e, d1, d2, r, s, c: int, mu: int) -> None:
        self.tabs = [e, d1, d2, r, s]
        self.c, self.mu = c, mu

    def _term(self, e, d1, d2, r, s) -> int:
        rrs = r * r % P * s
        rp1 = (r + 1) * (r + 1) % P * s
        return e * ((d1 + rrs - self.c + self.mu * (d2 - rp1 + self.c + 1)) % P)

    def evals(self, claim: int) -> list[int]:
        h = len(self.tabs[0]) // 2
        acc = [0, 0, 0, 0]
        for k in range(h):
            lo = [t[k] for t in self.tabs]
            hi = [t[k + h] for t in self.tabs]
            for slot, x in enumerate((0, 2, 3, 4)):
                acc[slot] += self._term(*(a + x * (b - a) for a, b in zip(lo, hi)))
        g0 = acc[0] % P
        return [g0, (claim - g0) % P, acc[1] % P, acc[2] % P, acc[3] % P]

    def bind(self, r: int) -> None:
        self.tabs = [bind_first(t, r) for t in self.tabs]


def _check_rms_ranges(d1: list[int], d2: list[int], r: list[int]) -> None:
    """The prover's own check that its range values fit their bits (an honest R always does)."""
    if min(d1 + d2) < 0 or max(d1 + d2) >> RMS_RANGE_BITS or max(r) >> RMS_R_BITS:
        raise FixedPointOverflow("an RMSNorm range check is outside its bits")


def _norm_layer(led, lc: LayerCommitment, f: int, nt: int, ni: int, claims: list[Claim],
                x: np.ndarray | None, wit: Witness | None, name: str,
                rows: list | None) -> list[Claim]:
    """An RMSNorm layer: claims on y become claims on its input (returned; none when the input
    is the public x, which the verifier evaluates itself)."""
    prover = wit is not None
    d, full = lc.d_out, 1 << nt
    if lc.residual or lc.bias_rows is not None or lc.d_in != d or lc.skip:
        raise ShapeMismatch("shard", "an RMSNorm layer maps d to d, without bias or residual")
    if not 1 <= f <= MAX_RMS_FRAC_BITS:
        raise ShapeMismatch("shard", f"an RMSNorm layer needs frac_bits <= {MAX_RMS_FRAC_BITS}")
    e_const, c_const = rms_constants(d, f, lc.eps)
    d1_at, d2_at, r_at = 0, RMS_RANGE_BITS, 2 * RMS_RANGE_BITS
    out: list[Claim] = []
    # 0. the range bits (D1 | D2 | R) and S, per token, before any challenge of this layer
    split_b = (nt, _RANGE_COLS.bit_length() - 1)
    if prover:
        norm = rmsnorm_fixed(wit.a, wit.weight, f, lc.eps)
        s_vals = [int(v) for v in norm["s"]]
        r_vals = [int(v) for v in norm["r"]]
        d1 = [c_const - r * r * sv for r, sv in zip(r_vals, s_vals)]
        d2 = [(r + 1) * (r + 1) * sv - c_const - 1 for r, sv in zip(r_vals, s_vals)]
        _check_rms_ranges(d1, d2, r_vals)
        bits = np.zeros((full, _RANGE_COLS), dtype=np.int64)
        for t in range(full):
            for at, value, width in ((d1_at, d1[t], RMS_RANGE_BITS),
                                     (d2_at, d2[t], RMS_RANGE_BITS), (r_at, r_vals[t], RMS_R_BITS)):
                bits[t, at:at + width] = [(value >> j) & 1 for j in range(width)]
        com_b = Committed(led, split_b, ints=bits, bits=1)
        com_s = Committed(led, hyrax_split(nt), ints=np.array(s_vals, dtype=np.int64), bits=62)
    else:
        com_b = Committed(led, split_b)
        com_s = Committed(led, hyrax_split(nt))
    cols_d1 = columns(d1_at, RMS_RANGE_BITS, _RANGE_COLS)
    cols_d2 = columns(d2_at, RMS_RANGE_BITS, _RANGE_COLS)
    cols_r = columns(r_at, RMS_R_BITS, _RANGE_COLS)

    # 1-3. the claims on y = floor(v / 2**f) become v~(rho)
    rho, v_lin, _ = bits_head(led, f, nt, ni, claims, wit.z if prover else None, False, name,
                               list)
    # 4. v~(rho) = sum_i eq(rho, i) u_i g_(i mod d), the gain g opened from the manifest
    oracle = None
    if prover:
        gain = [int(v) % P for v in wit.weight.reshape(-1)]
        oracle = TripleOracle(eq_table(rho), flat(norm["u"]), gain * full)
    rho2, final = sumcheck(led, f"{name}/norm-gain", v_lin, ni, 3, oracle)
    i_u = led.put(oracle.s[0] if prover else None)
    i_g = open_vector(led, f"{name}/weight-opening", rho2[nt:], wit.weight if prover else None,
                      wit.weight_blinds if prover else None,
                      None if prover else rows[("w", id(lc.weight_rows))])
    i_ug = led.put(oracle.s[0] * oracle.m[0] % P if prover else None)
    led.relate(f"{name}/norm-gain-final", final - Lin.var(i_ug) * eq_eval(rho, rho2))
    led.product(f"{name}/norm-gain-mul", i_u, i_g, i_ug)

    # 5. u~(rho2) is a claim on the rescale u = floor(w / 2**RMS_R_FRAC) of w = x R
    rho3, w_lin, _ = bits_head(led, RMS_R_FRAC, nt, ni, [(rho2, Lin.var(i_u), full)],
                                wit.zw if prover else None, False, f"{name}/rescale", list)
    # 6. w~(rho3) = sum_i eq(rho3, i) x_i R_(i div d), R opened from the range bits
    oracle = None
    if prover:
        oracle = TripleOracle(eq_table(rho3), flat(wit.a), [r for r in r_vals for _ in range(d)])
    rho4, final = sumcheck(led, f"{name}/norm-mul", w_lin, ni, 3, oracle)
    i_r4 = com_b.open(f"{name}/range-opening", eq_table(rho4[:nt]), cols_r)
    scale4 = eq_eval(rho3, rho4)
    if x is not None:
        led.relate(f"{name}/norm-mul-final",
                   final - Lin.var(i_r4) * (scale4 * int_mle_eval(x, rho4) % P))
    else:
        i_x4 = led.put(oracle.s[0] if prover else None)
        i_xr = led.put(oracle.s[0] * oracle.m[0] % P if prover else None)
        led.relate(f"{name}/norm-mul-final", final - Lin.var(i_xr) * scale4)
        led.product(f"{name}/norm-mul-product", i_x4, i_r4, i_xr)
        out.append((rho4, Lin.var(i_x4), full))

    # 7. R = floor(sqrt(C / S)) for every token
    tau = [led.challenge(f"{name}/rsqrt/tau/{k}".encode()) for k in range(nt)]
    mu = led.challenge(f"{name}/rsqrt/mu".encode())
    oracle = _RsqrtOracle(eq_table(tau), [v % P for v in d1], [v % P for v in d2], r_vals,
                          s_vals, c_const, mu) if prover else None
    pi, final = sumcheck(led, f"{name}/rsqrt", Lin(), nt, 4, oracle)
    row_pi = eq_table(pi)
    i_d1, i_d2, i_r = com_b.open_many(f"{name}/range-opening", row_pi,
                                      [cols_d1, cols_d2, cols_r])
    i_s = com_s.open_at(f"{name}/sum-opening", pi)
    vals = led.values if prover else None
    i_rr = led.put(vals[i_r] * vals[i_r] % P if prover else None)
    i_rrs = led.put(vals[i_rr] * vals[i_s] % P if prover else None)
    i_rs = led.put(vals[i_r] * vals[i_s] % P if prover else None)
    for a, b, c, check in ((i_r, i_r, i_rr, "rr"), (i_rr, i_s, i_rrs, "rrs"),
                           (i_r, i_s, i_rs, "rs")):
        led.product(f"{name}/rsqrt-{check}", a, b, c)
    rrs, rs, sv = Lin.var(i_rrs), Lin.var(i_rs), Lin.var(i_s)
    expr = (Lin.var(i_d1) + rrs - c_const
            + (Lin.var(i_d2) - rrs - rs * 2 - sv + (c_const + 1)) * mu)
    led.relate(f"{name}/rsqrt-final", final - expr * eq_eval(tau, pi))

    # 8. S~(pi) - E = sum over (t, i) of eq(pi, t) x_(t,i)^2
    oracle = None
    if prover:
        xs = flat(wit.a)
        oracle = TripleOracle([v for v in row_pi for _ in range(d)], xs, xs)
    rho5, final = sumcheck(led, f"{name}/sum-squares", Lin.var(i_s) - e_const, ni, 3, oracle)
    scale5 = eq_eval(pi, rho5[:nt])
    if x is not None:
        x5 = int_mle_eval(x, rho5)
        led.relate(f"{name}/sum-squares-final", final - Lin(const=scale5 * x5 % P * x5 % P))
    else:
        i_x5 = led.put(oracle.s[0] if prover else None)
        i_xx = led.put(oracle.s[0] * oracle.s[0] % P if prover else None)
        led.relate(f"{name}/sum-squares-final", final - Lin.var(i_xx) * scale5)
        led.product(f"{name}/sum-squares-product", i_x5, i_x5, i_xx)
        out.append((rho5, Lin.var(i_x5), full))

    # 9. the range bits are bits: sum over (t, c) of eq(r', (t, c)) B (1 - B) = 0
    nr = nt + split_b[1]
    rb = [led.challenge(f"{name}/range/bool/{k}".encode()) for k in range(nr)]
    oracle = None
    if prover:
        flat_bits = bits.reshape(-1).tolist()
        oracle = TripleOracle(eq_table(rb), flat_bits, [1 - v for v in flat_bits])
    sig, final = sumcheck(led, f"{name}/range-bits", Lin(), nr, 3, oracle)
    i_b = com_b.open_at(f"{name}/range-opening", sig)
    i_bb = led.put(led.values[i_b] ** 2 % P if prover else None)
    led.product(f"{name}/range-bit-square", i_b, i_b, i_bb)
    led.relate(f"{name}/range-bits-final",
               final - (Lin.var(i_b) - Lin.var(i_bb)) * eq_eval(rb, sig))
    return out


def _residual_claims(led, residual: bool, nt: int, claims: list[Claim], x: np.ndarray | None,
                     a: np.ndarray | None, prover: bool) -> list[Claim]:
    """For a residual layer, a~(p_k) at each claim's point, a being the residual source
    (committed, or computed from x by the verifier when the source is the shard's input): split
    off the output claims, passed on as claims on a."""
    below: list[Claim] = []
    if residual:
        for p, _, live in claims:
            if x is not None:  # the padded rows of x are zero: no mask needed
                lin = Lin(const=int_mle_eval(x, p))
            else:
                v = dot(masked_eq(p, live, nt), flat(a)) if prover else None
                lin = Lin.var(led.put(v))
            below.append((p, lin, live))
    return below


# --------------------------------------------------------------------------------------------
# GELU and SiLU by a committed logUp lookup (Haboeck, "Multivariate lookups based on logarithmic
# derivatives", 2022): (q_i, y_i) lies in the table {(t, G(t))} iff, for random beta, gamma,
#     sum_i 1 / (beta - q_i - gamma y_i) = sum_t m_t / (beta - t - gamma G(t))
# with m_t the multiplicity of t. The prover commits y, m, then (after beta, gamma) the
# inverses h and g, and proves h_i (beta - q_i - gamma y_i) = 1 and
# g_t (beta - t - gamma G(t)) = m_t by zero-checks, and sum h = sum g by two openings.


def _lookup_head(led, activation: str, f: int, nt: int, ni: int, claims: list[Claim],
                 below: list[Claim], wit: Witness | None, name: str) -> tuple[list[int], Lin]:
    """Steps 1-3 of a GELU or SiLU layer: returns (rho, z~(rho) as a committed linear form)."""
    prover = wit is not None
    nb = ni + 5
    if not 1 <= f <= MAX_LOOKUP_FRAC_BITS:
        raise ShapeMismatch("shard", f"a {_LOOKUP_NAMES[activation]} layer needs frac_bits <= "
                                     f"{MAX_LOOKUP_FRAC_BITS}")
    table = activation_table(activation, f)
    kt = log2_exact(len(table), "table")
    half = len(table) // 2
    rows_b, cols_b = hyrax_split(nb, 5)
    split_a = act_split(ni, nt)
    split_t = hyrax_split(kt)

    # 1. commit the bits of z + 2**31, the outputs y = G(q) and the multiplicities m
    if prover:
        bits = bit_decomposition(wit.z)
        bmat = bits.reshape(1 << rows_b, 1 << cols_b)
        row_blinds = led.put_bit_matrix(bmat)
        q = wit.z.reshape(-1) >> f
        y = table[q + half]
        mult = np.bincount(q + half, minlength=len(table)).astype(np.int64)
        # public bounds: |G(t)| <= |t| <= 2**(kt - 1), and a key is used at most 2**ni times
        com_y = Committed(led, split_a, ints=y, bits=kt)
        com_m = Committed(led, split_t, ints=mult, bits=ni + 1)
    else:
        bit_rows = led.next_matrix(1 << rows_b)
        com_y = Committed(led, split_a)
        com_m = Committed(led, split_t)

    # 2. the claims on this layer's output are openings of y (minus the residual part)
    for k, (p, lin, live) in enumerate(claims):
        row_w = eq_table(p[:split_a[0]])
        live_rows = live * (len(row_w) >> nt)
        row_w[live_rows:] = [0] * (len(row_w) - live_rows)
        i_y = com_y.open(f"{name}/output-opening", row_w, eq_table(p[split_a[0]:]))
        rest = lin - below[k][1] if below else lin
        led.relate(f"{name}/output", rest - Lin.var(i_y))

    # 3. the lookup: inverses h (per element) and g (per table entry), committed
    lookup = lookup_inverses(led, name, range(-half, half), table, split_a, split_t,
                             (q, y, mult) if prover else None)
    beta, gamma, com_h = lookup.beta, lookup.gamma, lookup.com_h

    # 4. one sum-check over (i, j): lambda/32 eq(r_h, i) h(i) l(i) (sums to lambda: h l = 1)
    #    plus booleanity of the bits; it ends at (rho, sigma)
    r_h = [led.challenge(f"{name}/lookup/rh/{k}".encode()) for k in range(ni)]
    lam = led.challenge(f"{name}/lambda".encode())
    r_bool = [led.challenge(f"{name}/bool/{k}".encode()) for k in range(nb)]
    oracle = None
    if prover:
        oracle = BitsOracle(eq_table(r_h), lookup.h_tab, lookup.l_tab,
                             BooleanityProver(bits.reshape(-1), r_bool, ni), lam, ni, nb)
    point, final = sumcheck(led, f"{name}/bits", Lin(const=lam), nb, 3, oracle)
    rho, sigma = point[:ni], point[ni:]
    lo = eq_table(rho[rows_b:])
    y_q = [(1 << (j - f)) if j >= f else 0 for j in range(BITS)]
    ys = [kron(lo, y_q), kron(lo, POWERS), kron(lo, eq_table(sigma))]
    row_w = eq_table(point[:rows_b])
    u = int_vecmat(row_w, bmat) if prover else None
    i_q, i_z, i_beta = (led.put(dot(u, yv) if prover else None) for yv in ys)
    if prover:
        led.prove_dot(u, dot(row_w, row_blinds), ys, [i_q, i_z, i_beta])
    else:
        led.check_dot(f"{name}/bits-opening", bit_rows, row_w, ys, [i_q, i_z, i_beta])
    i_yr = com_y.open_at(f"{name}/output-opening", rho)
    i_h = com_h.open_at(f"{name}/lookup-opening", rho)
    q_lin = Lin.var(i_q) - (1 << (BITS - 1 - f))
    l_lin = (q_lin + Lin.var(i_yr) * gamma) * (P - 1) + beta
    i_l = led.put(led.value(l_lin) if prover else None)
    led.relate(f"{name}/lookup", Lin.var(i_l) - l_lin)
    i_hl = led.put(led.values[i_h] * led.values[i_l] if prover else None)
    i_b2 = led.put(led.values[i_beta] ** 2 if prover else None)
    expect = (Lin.var(i_hl) * (lam * INV32 % P * eq_eval(r_h, rho) % P)
              + (Lin.var(i_beta) - Lin.var(i_b2)) * eq_eval(r_bool, point))
    led.relate(f"{name}/bits-final", final - expect)
    led.product(f"{name}/lookup-product", i_h, i_l, i_hl)
    led.product(f"{name}/bit-square", i_beta, i_beta, i_b2)

    # 5-6. the table side, T public, and sum h = sum g
    lookup_table_side(led, name, lookup, com_m, mult if prover else None)
    return rho, Lin.var(i_z) - (1 << (BITS - 1))


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
