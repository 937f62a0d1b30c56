"""Provable MLP shards: fixed-point execution, weight commitments, model manifests.

Fixed point (paper section 4, zkDPS; zkLLM section 5): activations carry `frac_bits` fractional
bits, weights `frac_bits`, biases 2*frac_bits. A layer computes z = a W + b exactly in integers,
rescales q = floor(z / 2**f) and applies ReLU (or nothing), then optionally adds the residual a.
Every pre-activation z must satisfy -2**31 <= z < 2**31 (the 32-bit decomposition the proof uses):
`FixedPointOverflow` otherwise. Execution is bit-for-bit deterministic (int64 numpy).

Weights are committed Hyrax-style (Wahby et al. 2018, section 6): the d_in x d_out matrix is laid
out as a table of 2**n entries (index k * d_out + o), cut into 2**(n // 2) rows of
2**(n - n // 2) entries, and each row gets one Pedersen vector commitment with its own
blinding. The row commitments are public (they go into the manifest); the blindings stay with
the weight owner and the provers.
"""

from __future__ import annotations

import decimal
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from math import isqrt
from pathlib import Path

import msgpack
import numpy as np

from .attention import (
    EXP_RANGE_BITS,
    AttentionShape,
    attention_fixed,
)
from .errors import CommitmentMismatch, FixedPointOverflow, ProofFormatError
from .group import (
    DEFAULT_SEED,
    PedersenParams,
    decode_point,
    decode_scalar,
    encode_point,
    encode_scalar,
    pedersen_params,
    random_scalar,
)

BITS = 32  # width of the pre-activation decomposition (rescale remainder + value + sign)
MAX_WEIGHT = 1 << 15  # |w| < 2**15
MAX_DIM = 1 << 14
ACTIVATIONS = ("relu", "identity", "gelu", "silu", "swiglu", "geglu", "rmsnorm", "attention")
#: RMSNorm y = x g / sqrt(mean(x^2) + eps) (`rmsnorm_fixed`): the weight is g as (1, d), no
#: bias; eps is a layer's `eps` times 2**-32 (RMS_EPS_DEFAULT: 2**-16; Llama checkpoints use
#: about 1e-5 or 1e-6). In fixed point S = sum x^2 + E, R = floor(sqrt(C / S)) with
#: C = d 2**(2f + 2 RMS_R_FRAC), so R is 1 / rms at scale 2**RMS_R_FRAC whatever f is;
#: u = floor(x R / 2**RMS_R_FRAC) and y = floor(u g / 2**f). x R must stay below 2**31, i.e.
#: |x| / rms below 2**(15 - f): RMSNorm layers need f <= MAX_RMS_FRAC_BITS.
RMS_EPS_SCALE_BITS = 32
RMS_EPS_DEFAULT = 1 << 16
#: eps from 2**-30 (so R = floor(sqrt(C / S)) stays below 2**32) to 1
RMS_EPS_MIN, RMS_EPS_MAX = 4, 1 << RMS_EPS_SCALE_BITS
RMS_R_FRAC = 16
MAX_RMS_FRAC_BITS = 12
#: bits of the range checks of an RMSNorm layer: C - R^2 S and (R+1)^2 S - C - 1 (80 each: both
#: stay below 2 S + 2 sqrt(C S) < 2**72), and R (32: R <= 2**(f + 8) or sqrt(C))
RMS_RANGE_BITS = 80
RMS_R_BITS = 32
#: activations proven by a lookup into a public table (`activation_table`)
LOOKUP_ACTIVATIONS = ("gelu", "silu")
#: gated layers y = floor(act(floor(x W_g + b_g) / 2**f) * floor((x W_u + b_u) / 2**f) / 2**f):
#: the name and the lookup activation of the gate. The layer's weight is [W_u | W_g]
#: (d_in, 2 d_out) and its bias [b_u | b_g], committed as one matrix.
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}
#: a lookup table covers q in [-2**(f + LOOKUP_RANGE_BITS - 1), 2**(f + LOOKUP_RANGE_BITS - 1)),
#: i.e. real pre-activations in [-32, 32); lookup layers need frac_bits <= MAX_LOOKUP_FRAC_BITS
LOOKUP_RANGE_BITS = 6
MAX_LOOKUP_FRAC_BITS = 10
MANIFEST_VERSION = 1
#: a manifest with a skip residual is version 2, so that a verifier that predates `skip` (and
#: would read the layer as adding its own input) refuses it instead of misreading it
MANIFEST_VERSION_SKIP = 2
#: a manifest with an attention layer is version 3, refused by verifiers that predate them
MANIFEST_VERSION_ATTENTION = 3
MAX_SKIP = 64


def manifest_version(layers: Sequence[LayerCommitment]) -> int:
    if any(lc.activation == "attention" for lc in layers):
        return MANIFEST_VERSION_ATTENTION
    return MANIFEST_VERSION_SKIP if any(lc.skip for lc in layers) else MANIFEST_VERSION


def log2_exact(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{what} must be a power of two, got {n}")
    return n.bit_length() - 1


def weight_width(activation: str, d_out: int) -> int:
    """Columns of a layer's weight matrix: 2 d_out for a gated layer ([W_u | W_g])."""
    return 2 * d_out if activation in GATED_ACTIVATIONS else d_out


def weight_entries(activation: str, d_in: int, d_out: int) -> int:
    """How many weights a layer commits: d (the gain) for an RMSNorm layer."""
    return d_out if activation == "rmsnorm" else d_in * weight_width(activation, d_out)


def attention_shape(layer: FixedLayer | LayerCommitment) -> AttentionShape:
    return AttentionShape(layer.d_out, layer.heads, layer.kv_heads, layer.rope)


def weight_parts(layer: FixedLayer | LayerCommitment) -> list[tuple[int, int]]:
    """(first column, width) of each separately committed part of a layer's weight: the q, k
    and v projections of an attention layer, the whole matrix otherwise. Each part is a Hyrax
    table of its own; the layer's row commitments (and its bias's) are the parts' in order."""
    if layer.activation == "attention":
        q, k, _ = attention_shape(layer).parts()
        return [(0, q), (q, k), (q + k, k)]
    if layer.activation == "rmsnorm":
        return [(0, layer.d_out)]
    return [(0, weight_width(layer.activation, layer.d_out))]


def part_rows(layer: FixedLayer | LayerCommitment) -> list[tuple[slice, slice]]:
    """Where each weight part's row commitments (and its bias's) lie in the layer's lists."""
    out, w0, b0 = [], 0, 0
    d_rows = 1 if layer.activation == "rmsnorm" else layer.d_in
    for _, width in weight_parts(layer):
        nw = 1 << hyrax_split((d_rows * width).bit_length() - 1)[0]
        nb = 1 << hyrax_split(width.bit_length() - 1)[0]
        out.append((slice(w0, w0 + nw), slice(b0, b0 + nb)))
        w0, b0 = w0 + nw, b0 + nb
    return out


def part_row_counts(layer: FixedLayer | LayerCommitment) -> tuple[int, int]:
    """How many row commitments a layer's weight and its bias have."""
    w, b = part_rows(layer)[-1]
    return w.stop, b.stop


def rms_eps_units(eps: float) -> int:
    """eps as an RMSNorm layer holds it: round(eps 2**32), refused outside [2**-30, 1]."""
    units = round(float(eps) * (1 << RMS_EPS_SCALE_BITS))
    if not RMS_EPS_MIN <= units <= RMS_EPS_MAX:
        raise ValueError(f"an RMSNorm eps must be in [2**-30, 1], got {eps!r}")
    return units


def rms_constants(d: int, frac_bits: int, eps: int = RMS_EPS_DEFAULT) -> tuple[int, int]:
    """(E, C) of an RMSNorm over d features: E = floor(eps 2**-32 d 2**(2f)) (at least 1) and
    C = d 2**(2f + 2 RMS_R_FRAC)."""
    return (max(1, (d * eps << 2 * frac_bits) >> RMS_EPS_SCALE_BITS),
            d << (2 * frac_bits + 2 * RMS_R_FRAC))


def rmsnorm_fixed(x: np.ndarray, gain: np.ndarray, frac_bits: int,
                  eps: int = RMS_EPS_DEFAULT) -> dict[str, np.ndarray]:
    """RMSNorm of integer rows x (scale 2**f) with integer gain (scale 2**f) and eps in units of
    2**-32: the output y and every intermediate a proof needs (S, R, w = x R, u, v = u g)."""
    f = frac_bits
    if not 1 <= f <= MAX_RMS_FRAC_BITS:
        raise ValueError(f"RMSNorm layers need frac_bits in 1..{MAX_RMS_FRAC_BITS}")
    if type(eps) is not int or not RMS_EPS_MIN <= eps <= RMS_EPS_MAX:
        raise ValueError("an RMSNorm eps (in units of 2**-32) must be an int in [4, 2**32]")
    d = x.shape[1]
    e, c = rms_constants(d, f, eps)
    if np.abs(x).max(initial=0) >= 1 << (BITS - 8):
        raise FixedPointOverflow("an RMSNorm input is outside (-2**24, 2**24)")
    s = [int(v) + e for v in (x.astype(object) ** 2).sum(axis=1)]
    r = np.array([isqrt(c // v) for v in s], dtype=np.int64)
    w = x * r[:, None]
    half = 1 << (BITS - 1)
    if w.min(initial=0) < -half or w.max(initial=0) >= half:
        raise FixedPointOverflow("an RMSNorm product x R is outside [-2**31, 2**31)")
    u = w >> RMS_R_FRAC
    v = u * gain.reshape(1, -1)
    if v.min(initial=0) < -half or v.max(initial=0) >= half:
        raise FixedPointOverflow("an RMSNorm product u g is outside [-2**31, 2**31)")
    return {"s": np.array(s, dtype=np.int64), "r": r, "w": w, "u": u, "v": v, "y": v >> f}


def uses_table(activation: str) -> bool:
    """Whether a layer of this activation is proven with a lookup table (attention: exp)."""
    return (activation in LOOKUP_ACTIVATIONS or activation in GATED_ACTIVATIONS
            or activation == "attention")


def hyrax_split(num_vars: int, min_col_vars: int = 0) -> tuple[int, int]:
    """(row variables, column variables) of a table with 2**num_vars entries."""
    col = max((num_vars + 1) // 2, min(min_col_vars, num_vars))
    return num_vars - col, col


@dataclass(frozen=True)
class FixedLayer:
    """One integer layer: y = act(floor((x W + b) / 2**f)) (+ x if residual); act is ReLU,
    the identity, or GELU or SiLU by table (`activation_table`). A gated layer (SwiGLU, GeGLU:
    GATED_ACTIVATIONS) holds [W_u | W_g] and [b_u | b_g] and computes
    y = floor(G(floor((x W_g + b_g) / 2**f)) * floor((x W_u + b_u) / 2**f) / 2**f) (+ x)."""

    weight: np.ndarray  # int64 (d_in, d_out) or (d_in, 2 d_out) when gated, scale 2**f
    bias: np.ndarray | None  # int64 (d_out,) or (2 d_out,) when gated, scale 2**(2f)
    activation: str = "relu"
    residual: bool = False
    #: a residual adds the input of the layer `skip` layers before this one (0: its own input),
    #: as a transformer block adds its input after two or more layers
    skip: int = 0
    #: an attention layer's shape (attention.py): query heads, kv heads, rope theta (0: none)
    heads: int = 0
    kv_heads: int = 0
    rope: int = 0
    #: an RMSNorm layer's eps in units of 2**-32
    eps: int = RMS_EPS_DEFAULT

    def __post_init__(self) -> None:
        w = np.asarray(self.weight)
        if w.ndim != 2 or w.dtype.kind not in "iu":
            raise ValueError("weight must be a 2-D integer array")
        d_in, d_out = w.shape
        if self.activation == "attention":
            if self.residual or self.skip:
                raise ValueError("an attention layer has no residual (the output projection "
                                 "after it adds one)")
            problem = AttentionShape(d_in, self.heads, self.kv_heads, self.rope).check()
            if problem:
                raise ValueError(problem)
            if d_out != sum(AttentionShape(d_in, self.heads, self.kv_heads, 0).parts()):
                raise ValueError("an attention layer's weight is [W_q | W_k | W_v]: (d, d + 2 "
                                 "kv_heads d / heads)")
            d_out = d_in
        elif self.heads or self.kv_heads or self.rope:
            raise ValueError("heads, kv_heads and rope belong to attention layers")
        if self.activation == "rmsnorm":
            if d_in != 1 or self.bias is not None or self.residual:
                raise ValueError("an RMSNorm layer holds its gain as a (1, d) weight, without "
                                 "bias or residual")
            if type(self.eps) is not int or not RMS_EPS_MIN <= self.eps <= RMS_EPS_MAX:
                raise ValueError("an RMSNorm eps (in units of 2**-32) must be an int in "
                                 "[4, 2**32]")
            d_in = d_out
        elif self.eps != RMS_EPS_DEFAULT:
            raise ValueError("eps belongs to RMSNorm layers")
        if self.activation in GATED_ACTIVATIONS:
            if d_out % 2:
                raise ValueError("a gated layer's weight is [W_u | W_g]: an even width")
            d_out //= 2
        log2_exact(d_in, "d_in")
        log2_exact(d_out, "d_out")
        if d_in > MAX_DIM or d_out > MAX_DIM:
            raise ValueError(f"layer dimensions above {MAX_DIM}")
        if np.abs(w).max(initial=0) >= MAX_WEIGHT:
            raise FixedPointOverflow("a weight is outside (-2**15, 2**15)")
        if self.bias is not None:
            b = np.asarray(self.bias)
            if b.shape != (w.shape[1],) or b.dtype.kind not in "iu":
                raise ValueError("bias must be an integer vector as wide as the weight")
            if np.abs(b).max(initial=0) >= 1 << (BITS - 2):
                raise FixedPointOverflow("a bias is outside (-2**30, 2**30)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}")
        if self.residual and not self.skip and d_in != d_out:
            raise ValueError("a residual layer needs d_in == d_out")
        if type(self.skip) is not int or not 0 <= self.skip <= MAX_SKIP or (
                self.skip and not self.residual):
            raise ValueError(f"skip must be in 0..{MAX_SKIP}, and non-zero only with residual")
        object.__setattr__(self, "weight", w.astype(np.int64))
        if self.bias is not None:
            object.__setattr__(self, "bias", np.asarray(self.bias).astype(np.int64))

    @property
    def d_in(self) -> int:
        if self.activation == "rmsnorm":
            return int(self.weight.shape[1])
        return int(self.weight.shape[0])

    @property
    def d_out(self) -> int:
        if self.activation == "attention":
            return int(self.weight.shape[0])
        return int(self.weight.shape[1]) // (2 if self.gated else 1)

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS


def _quantize(w: np.ndarray, b: np.ndarray | None, frac_bits: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """W to 2**-f and b to 2**-2f steps (plus 2**(f-1): the rescale rounds to nearest), both
    zero-padded to power-of-two widths."""
    wf = np.asarray(w, dtype=np.float64)
    if wf.ndim != 2:
        raise ValueError("a weight must be a 2-D (d_in, d_out) array")
    d_in, d_out = (1 << (d - 1).bit_length() for d in wf.shape)
    wq = np.zeros((d_in, d_out), dtype=np.int64)
    wq[: wf.shape[0], : wf.shape[1]] = np.rint(wf * (1 << frac_bits))
    bf = np.zeros(d_out)
    if b is not None:
        bf[: wf.shape[1]] = np.asarray(b, dtype=np.float64)
    return wq, np.rint(bf * (1 << 2 * frac_bits)).astype(np.int64) + (1 << (frac_bits - 1))


def _attention_from_float(parts: Sequence, residual: bool, skip: int,
                          frac_bits: int) -> FixedLayer:
    if len(parts) != 7 or not isinstance(parts[6], AttentionShape):
        raise ValueError("an attention layer takes (W_q, b_q, W_k, b_k, W_v, b_v, "
                         "AttentionShape)")
    shape = parts[6]
    scale = 1.0 / np.sqrt(shape.head_dim)
    b_q = None if parts[1] is None else np.asarray(parts[1], dtype=np.float64) * scale
    pairs = [(np.asarray(parts[0], dtype=np.float64) * scale, b_q), (parts[2], parts[3]),
             (parts[4], parts[5])]
    quantized = [_quantize(w, b, frac_bits) for w, b in pairs]
    if [q[0].shape for q in quantized] != [(shape.d, w) for w in shape.parts()] or any(
            np.shape(w) != q[0].shape for (w, _), q in zip(pairs, quantized)):
        raise ValueError(f"an attention layer of {shape} takes W_q, W_k, W_v of shapes "
                         f"{[(shape.d, w) for w in shape.parts()]}")
    return FixedLayer(np.concatenate([q[0] for q in quantized], axis=1),
                      np.concatenate([q[1] for q in quantized]), "attention", residual, skip,
                      shape.heads, shape.kv_heads, shape.rope)


def _matmul_exact(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    bound = int(np.abs(a).max(initial=0)) * int(np.abs(w).max(initial=0)) * a.shape[1]
    if bound < 1 << 53:
        return (a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    if bound >= 1 << 62:
        raise FixedPointOverflow("a matrix product could leave int64")
    return a @ w


@dataclass(frozen=True)
class LayerTrace:
    """What the prover needs from one layer: its input and its pre-activation (for a gated
    layer: the product of gate and up values, and in `zw` the matrix product [z_u | z_g])."""

    a: np.ndarray
    z: np.ndarray
    out: np.ndarray
    zw: np.ndarray | None = None


class ProvableMlp:
    """A span of MLP layers executed in fixed point, ready to be committed and proven."""

    def __init__(self, layers: Sequence[FixedLayer], frac_bits: int = 8) -> None:
        if not layers:
            raise ValueError("a shard needs at least one layer")
        if not 1 <= frac_bits <= 16:
            raise ValueError("frac_bits must be in 1..16")
        for prev, nxt in pairwise(layers):
            if prev.d_out != nxt.d_in:
                raise ValueError("consecutive layers do not chain (d_out != next d_in)")
        for k, layer in enumerate(layers):
            if k - layer.skip < 0:
                raise ValueError("a residual reaches back before the shard's first layer")
            if layer.residual and layer.d_out != layers[k - layer.skip].d_in:
                raise ValueError("a skip residual's source has another width")
        if frac_bits > MAX_RMS_FRAC_BITS and any(la.activation == "rmsnorm" for la in layers):
            raise ValueError(f"RMSNorm layers need frac_bits <= {MAX_RMS_FRAC_BITS}")
        if frac_bits > MAX_LOOKUP_FRAC_BITS and any(uses_table(la.activation)
                                                    for la in layers):
            raise ValueError(f"GELU, SiLU, gated and attention layers need frac_bits <= "
                             f"{MAX_LOOKUP_FRAC_BITS}")
        self.layers = tuple(layers)
        self.frac_bits = frac_bits
        self.in_features = self.layers[0].d_in  # widths before padding (from_float)
        self.out_features = self.layers[-1].d_out

    @classmethod
    def from_float(
        cls,
        layers: Sequence[tuple[np.ndarray, np.ndarray | None]],
        *,
        activations: Sequence[str] | str = "relu",
        residual: Sequence[bool] | bool = False,
        skip: Sequence[int] | int = 0,
        frac_bits: int = 8,
    ) -> ProvableMlp:
        """Quantize float (W (d_in, d_out), b) pairs: W, x to 2**-f and b to 2**-2f steps.

        A gated layer (`swiglu`, `geglu`) takes (W_u, b_u, W_g, b_g) instead of a pair, an
        attention layer (W_q, b_q, W_k, b_k, W_v, b_v, AttentionShape) (W_q and b_q are scaled
        by 1/sqrt(head width) here; widths must be the shape's, unpadded). The
        bias also carries 2**(f-1), so the floor in the rescale rounds to nearest. Widths that
        are not powers of two are padded with zero weights; padded features are exactly 0
        through every layer, and `pad_features` / `live_features` convert x and y.
        """
        n = len(layers)
        acts = [activations] * n if isinstance(activations, str) else list(activations)
        res = [residual] * n if isinstance(residual, bool) else list(residual)
        skips = [skip] * n if isinstance(skip, int) else list(skip)
        out = []
        for parts, act, r, back in zip(layers, acts, res, skips, strict=True):
            if act == "rmsnorm":  # (gain as (1, d), None[, eps]); d is not padded (it sets the mean)
                gain = np.rint(np.asarray(parts[0], dtype=np.float64) * (1 << frac_bits))
                if (len(parts) not in (2, 3) or parts[1] is not None or gain.ndim != 2
                        or gain.shape[0] != 1):
                    raise ValueError("an RMSNorm layer takes (gain of shape (1, d), None) or "
                                     "(gain, None, eps)")
                eps = rms_eps_units(parts[2]) if len(parts) == 3 else RMS_EPS_DEFAULT
                out.append(FixedLayer(gain.astype(np.int64), None, act, r, back, eps=eps))
                continue
            if act == "attention":
                out.append(_attention_from_float(parts, r, back, frac_bits))
                continue
            if (len(parts) == 4) != (act in GATED_ACTIVATIONS):
                raise ValueError("a gated layer takes (W_u, b_u, W_g, b_g), others (W, b)")
            if len(parts) == 4 and np.shape(parts[0]) != np.shape(parts[2]):
                raise ValueError("a gated layer's W_u and W_g must have one shape")
            halves = [_quantize(parts[k], parts[k + 1], frac_bits)
                      for k in range(0, len(parts), 2)]
            wq = np.concatenate([h[0] for h in halves], axis=1)
            bq = np.concatenate([h[1] for h in halves])
            out.append(FixedLayer(wq, bq, act, r, back))
        shard = cls(out, frac_bits)
        first = np.asarray(layers[0][0])
        shard.in_features = first.shape[1] if acts[0] == "rmsnorm" else first.shape[0]
        shard.out_features = np.asarray(layers[-1][0]).shape[1]
        return shard

    def pad_features(self, x: np.ndarray) -> np.ndarray:
        """x with zero columns up to the (power-of-two) input width of the shard."""
        a = np.asarray(x)
        if a.ndim != 2 or a.shape[1] > self.d_in:
            raise ValueError(f"input must be (tokens, <= {self.d_in})")
        out = np.zeros((a.shape[0], self.d_in), dtype=a.dtype)
        out[:, : a.shape[1]] = a
        return out

    def live_features(self, y: np.ndarray) -> np.ndarray:
        """y without the padding columns added by from_float."""
        return np.asarray(y)[:, : self.out_features]

    @property
    def d_in(self) -> int:
        return self.layers[0].d_in

    @property
    def d_out(self) -> int:
        return self.layers[-1].d_out

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, dtype=np.float64) * (1 << self.frac_bits)).astype(np.int64)

    def dequantize(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) / (1 << self.frac_bits)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x)
        if a.ndim != 2 or a.shape[1] != self.d_in or a.dtype.kind not in "iu":
            raise ValueError(f"input must be an integer array of shape (tokens, {self.d_in})")
        if np.abs(a).max(initial=0) >= 1 << (BITS - 8):
            raise FixedPointOverflow("an input value is outside (-2**24, 2**24)")
        return a.astype(np.int64)

    def trace(self, x: np.ndarray, live: int | None = None) -> list[LayerTrace]:
        """Every layer's input, pre-activation and output; rows from `live` on are a proof's
        padding (attention layers let them attend to themselves only)."""
        a = self.check_input(x)
        f = self.frac_bits
        half = 1 << (BITS - 1)
        out: list[LayerTrace] = []
        for layer in self.layers:
            source = out[len(out) - layer.skip].a if layer.skip else a
            if layer.activation == "rmsnorm":
                norm = rmsnorm_fixed(a, layer.weight, f, layer.eps)
                out.append(LayerTrace(a, norm["v"], norm["y"], norm["w"]))
                a = norm["y"]
                continue
            if layer.activation == "attention":
                att = attention_fixed(a, layer.weight, layer.bias, attention_shape(layer), f,
                                      live)
                out.append(LayerTrace(a, att["z"], att["out"]))
                a = att["out"]
                continue
            z = _matmul_exact(a, layer.weight)
            if layer.bias is not None:
                z = z + layer.bias
            if z.min(initial=0) < -half or z.max(initial=0) >= half:
                raise FixedPointOverflow("a pre-activation is outside [-2**31, 2**31)")
            q = z >> f
            zw = None
            if layer.gated:
                d = layer.d_out
                gate = lookup_activation(q[:, d:], GATED_ACTIVATIONS[layer.activation], f)
                zw, z = z, gate * q[:, :d]
                if z.min(initial=0) < -half or z.max(initial=0) >= half:
                    raise FixedPointOverflow("a gated product is outside [-2**31, 2**31)")
                y = z >> f
            elif layer.activation == "relu":
                y = np.maximum(q, 0)
            elif layer.activation in LOOKUP_ACTIVATIONS:
                y = lookup_activation(q, layer.activation, f)
            else:
                y = q
            if layer.residual:
                y = y + source
                if np.abs(y).max(initial=0) >= 1 << (BITS - 8):
                    raise FixedPointOverflow("a residual sum is outside (-2**24, 2**24)")
            out.append(LayerTrace(a, z, y, zw))
            a = y
        return out

    def forward_fixed(self, x: np.ndarray) -> np.ndarray:
        """Deterministic integer forward pass: int64 (tokens, d_in) -> int64 (tokens, d_out)."""
        return self.trace(x)[-1].out

    def weights_digest(self) -> bytes:
        h = hashlib.sha256(b"p2pinfer-zk-v1/weights")
        h.update(self.frac_bits.to_bytes(1, "little"))
        for layer in self.layers:
            h.update(msgpack.packb([layer.d_in, layer.d_out, layer.activation, layer.residual]
                                   + ([layer.skip] if layer.skip else [])
                                   + ([layer.heads, layer.kv_heads, layer.rope]
                                      if layer.activation == "attention" else [])
                                   + ([layer.eps] if layer.eps != RMS_EPS_DEFAULT else [])))
            h.update(np.ascontiguousarray(layer.weight, dtype="<i8").tobytes())
            h.update(b"\x01" if layer.bias is not None else b"\x00")
            if layer.bias is not None:
                h.update(np.ascontiguousarray(layer.bias, dtype="<i8").tobytes())
        return h.digest()


_LOOKUP_NAMES = {"gelu": "GELU", "silu": "SiLU"}


def activation_table(activation: str, frac_bits: int) -> np.ndarray:
    """The public lookup table of a lookup activation (`gelu_table`, `silu_table`)."""
    if activation == "gelu":
        return gelu_table(frac_bits)
    if activation == "silu":
        return silu_table(frac_bits)
    raise ValueError(f"{activation!r} is not a lookup activation")


def lookup_activation(q: np.ndarray, activation: str, frac_bits: int) -> np.ndarray:
    """A lookup activation of fixed-point values by table; FixedPointOverflow outside the
    table's range."""
    table = activation_table(activation, frac_bits)
    lo = len(table) // 2
    if q.size and (q.min() < -lo or q.max() >= lo):
        raise FixedPointOverflow(f"a {_LOOKUP_NAMES[activation]} input is outside the table's range "
                                 f"[-{lo}, {lo}) (real [-{lo >> frac_bits}, {lo >> frac_bits}))")
    return table[q + lo]


_GELU_TABLES: dict[int, np.ndarray] = {}
_SILU_TABLES: dict[int, np.ndarray] = {}


def silu_table(frac_bits: int) -> np.ndarray:
    """S[t + 2**(K-1)] = round(t / (1 + exp(-t / 2**f))) for t in [-2**(K-1), 2**(K-1)),
    K = f + 6: exact SiLU x sigmoid(x) of x = t / 2**f, rounded half up to 2**-f (read-only
    int64 array).

    exp comes from the decimal module at 40 significant digits: the General Decimal Arithmetic
    specification makes it correctly rounded, so every machine derives the same table bit for
    bit, with no dependence on the platform's libm. An entry could differ from the exactly
    rounded value only if t * sigmoid(x), irrational for t != 0, lay within about 10**-35 of a
    rounding tie; `tests/zk/test_silu.py` checks every table (f = 1..10) against float64.
    """
    if not 1 <= frac_bits <= MAX_LOOKUP_FRAC_BITS:
        raise ValueError(f"SiLU tables exist for frac_bits 1..{MAX_LOOKUP_FRAC_BITS}")
    cached = _SILU_TABLES.get(frac_bits)
    if cached is not None:
        return cached
    half, scale = 1 << (frac_bits + LOOKUP_RANGE_BITS - 1), 1 << frac_bits
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN, Emin=-999, Emax=999,
                          traps=[])
    one, point_five = decimal.Decimal(1), decimal.Decimal("0.5")
    out = np.zeros(2 * half, dtype=np.int64)
    with decimal.localcontext(ctx):  # whatever the process's own decimal settings are
        for t in range(-half, 0):
            d = decimal.Decimal(t)
            sig = ctx.divide(d, ctx.add(one, ctx.exp(ctx.divide(ctx.minus(d), scale))))
            out[t + half] = int(ctx.add(sig, point_five).to_integral_value(decimal.ROUND_FLOOR))
    # SiLU(x) = x + SiLU(-x), and t is an integer, so rounding commutes with adding it
    pos = np.arange(1, half, dtype=np.int64)
    out[half + 1:] = pos + out[half - pos]
    out.setflags(write=False)
    _SILU_TABLES[frac_bits] = out
    return out


def gelu_table(frac_bits: int) -> np.ndarray:
    """G[t + 2**(K-1)] = round(t * Phi(t / 2**f)) for t in [-2**(K-1), 2**(K-1)), K = f + 6:
    exact GELU x Phi(x) of x = t / 2**f, rounded half up to 2**-f (read-only int64 array).

    Computed in 128-bit integer arithmetic (pi by Machin's formula, erf by its Taylor series),
    so every machine derives the same table bit for bit, with no dependence on the platform's
    libm. For |x| >= 8 the table holds x and 0: GELU differs from them by < 2**-50 there.
    """
    if not 1 <= frac_bits <= MAX_LOOKUP_FRAC_BITS:
        raise ValueError(f"GELU tables exist for frac_bits 1..{MAX_LOOKUP_FRAC_BITS}")
    cached = _GELU_TABLES.get(frac_bits)
    if cached is not None:
        return cached
    k = frac_bits + LOOKUP_RANGE_BITS
    half, scale = 1 << (k - 1), 1 << frac_bits
    one = 1 << 128
    pi = 16 * _atan_inv(5, one) - 4 * _atan_inv(239, one)
    sqrt2 = isqrt(2 * one * one)
    sqrt_pi = isqrt(pi * one)
    t = np.arange(-half, half, dtype=np.int64)
    out = np.where(t > 0, t, 0)
    for ti in range(-8 * scale + 1, 8 * scale):
        u = ti * one * one // (scale * sqrt2)  # x / sqrt(2), fixed point
        term, total, n = u, u, 0
        while term:
            term = -term * u // one * u // one // (n + 1)
            n += 1
            total += term // (2 * n + 1)
        erf = 2 * total * one // sqrt_pi
        out[ti + half] = (ti * (one + erf) + one) // (2 * one)
    out.setflags(write=False)
    _GELU_TABLES[frac_bits] = out
    return out


def _atan_inv(n: int, one: int) -> int:
    """atan(1 / n) in fixed point with `one` = 1."""
    x = total = one // n
    k, sign, n2 = 1, -1, n * n
    while x:
        x //= n2
        total += sign * (x // (2 * k + 1))
        sign, k = -sign, k + 1
    return total


# --------------------------------------------------------------------------------------------
# Public commitments


@dataclass(frozen=True)
class LayerCommitment:
    d_in: int
    d_out: int
    activation: str
    residual: bool
    weight_rows: tuple[bytes, ...]
    bias_rows: tuple[bytes, ...] | None
    skip: int = 0  # the residual's source: the input of the layer `skip` before this one
    heads: int = 0  # attention layers only (FixedLayer)
    kv_heads: int = 0
    rope: int = 0
    eps: int = RMS_EPS_DEFAULT  # RMSNorm layers only, in units of 2**-32

    def decoded_rows(self) -> tuple[list, list | None]:
        """(weight, bias) row commitments as group elements, decoded once and kept."""
        cached = self.__dict__.get("_decoded")
        if cached is None:
            w = [decode_point(p) for p in self.weight_rows]
            b = None if self.bias_rows is None else [decode_point(p) for p in self.bias_rows]
            cached = (w, b)
            object.__setattr__(self, "_decoded", cached)
        return cached

    def to_wire(self) -> dict:
        wire = {
            "d_in": self.d_in,
            "d_out": self.d_out,
            "act": self.activation,
            "res": self.residual,
            "w": list(self.weight_rows),
            "b": None if self.bias_rows is None else list(self.bias_rows),
        }
        if self.skip:  # absent when 0, so earlier manifests keep their bytes and digests
            wire["skip"] = self.skip
        if self.activation == "attention":
            wire.update(heads=self.heads, kv_heads=self.kv_heads, rope=self.rope)
        if self.eps != RMS_EPS_DEFAULT:  # absent at the default, so earlier bytes stay
            wire["eps"] = self.eps
        return wire

    @classmethod
    def from_wire(cls, m: object) -> LayerCommitment:
        if not isinstance(m, dict):
            raise ProofFormatError("a layer commitment is not a map")
        try:
            d_in, d_out, act, res = m["d_in"], m["d_out"], m["act"], m["res"]
            w, b = m["w"], m["b"]
        except KeyError as exc:
            raise ProofFormatError(f"a layer commitment lacks {exc}") from None
        if not (isinstance(d_in, int) and isinstance(d_out, int) and 1 <= d_in <= MAX_DIM
                and 1 <= d_out <= MAX_DIM and not d_in & (d_in - 1) and not d_out & (d_out - 1)):
            raise ProofFormatError("bad layer dimensions")
        if act not in ACTIVATIONS or not isinstance(res, bool):
            raise ProofFormatError("bad activation or residual flag")
        skip = m.get("skip", 0)
        if "skip" in m and (type(skip) is not int or not 1 <= skip <= MAX_SKIP or not res):
            raise ProofFormatError(f"skip must be in 1..{MAX_SKIP} and needs res")
        shape_keys = {"heads", "kv_heads", "rope"}
        allowed = {"d_in", "d_out", "act", "res", "w", "b", "skip"}
        own = shape_keys if act == "attention" else {"eps"} if act == "rmsnorm" else set()
        if set(m) - allowed - own:
            raise ProofFormatError("a layer commitment has unknown fields")
        eps = m.get("eps", RMS_EPS_DEFAULT)
        if "eps" in m and (type(eps) is not int or not RMS_EPS_MIN <= eps <= RMS_EPS_MAX
                           or eps == RMS_EPS_DEFAULT):
            raise ProofFormatError("an RMSNorm eps is an int in [4, 2**32], present only when "
                                   "it is not the default 2**16")
        if res and not skip and d_in != d_out:
            raise ProofFormatError("a residual layer needs d_in == d_out")
        if act == "rmsnorm" and (d_in != d_out or res or b is not None):
            raise ProofFormatError("an RMSNorm layer maps d to d, without bias or residual")
        heads = kv_heads = rope = 0
        if act == "attention":
            if not shape_keys <= set(m):
                raise ProofFormatError("an attention layer needs heads, kv_heads and rope")
            heads, kv_heads, rope = m["heads"], m["kv_heads"], m["rope"]
            problem = AttentionShape(d_in, heads, kv_heads, rope).check()
            if problem or d_in != d_out or res:
                raise ProofFormatError(problem or "an attention layer maps d to d, without "
                                                  "residual")
        lc = cls(d_in, d_out, act, res, (), None, skip, heads, kv_heads, rope, eps)
        rows_w, rows_b = part_row_counts(lc)
        if not _points_list(w, rows_w):
            raise ProofFormatError("weight commitment has the wrong shape")
        if b is not None and not _points_list(b, rows_b):
            raise ProofFormatError("bias commitment has the wrong shape")
        return cls(d_in, d_out, act, res, tuple(w), None if b is None else tuple(b), skip,
                   heads, kv_heads, rope, eps)


def _points_list(v: object, n: int) -> bool:
    return (isinstance(v, list) and len(v) == n
            and all(isinstance(p, bytes) and len(p) == 48 for p in v))


@dataclass(frozen=True)
class ShardCommitment:
    """The public part a verifier checks a shard proof against (a slice of the manifest)."""

    model_id: str
    first_layer: int
    frac_bits: int
    generator_seed: bytes
    layers: tuple[LayerCommitment, ...]

    def to_wire(self) -> dict:
        return {
            "model": self.model_id,
            "first": self.first_layer,
            "f": self.frac_bits,
            "seed": self.generator_seed,
            "layers": [lc.to_wire() for lc in self.layers],
        }

    def digest(self) -> bytes:
        return hashlib.sha256(b"p2pinfer-zk-v1/shard" + msgpack.packb(self.to_wire())).digest()


@dataclass(frozen=True)
class ModelManifest:
    """Per-layer weight commitments published by a model owner. Verifiers pin `digest()`."""

    model_id: str
    frac_bits: int
    generator_seed: bytes
    layers: tuple[LayerCommitment, ...]

    def shard(self, start: int, stop: int) -> ShardCommitment:
        if not 0 <= start < stop <= len(self.layers):
            raise ValueError("layer span outside the manifest")
        return ShardCommitment(self.model_id, start, self.frac_bits, self.generator_seed,
                               self.layers[start:stop])

    def blocks(self) -> list[tuple[int, int]]:
        """The layers grouped into blocks [start, stop): a block ends where no later layer's
        residual reaches back into it, so a shard of whole blocks never cuts a skip. Without
        skips every layer is a block of its own."""
        n = len(self.layers)
        lowest, reach = [n] * (n + 1), n
        for k in range(n - 1, -1, -1):
            reach = min(reach, k - self.layers[k].skip)
            lowest[k] = reach
        bounds = [j for j in range(n) if lowest[j] >= j]
        return list(zip(bounds, [*bounds[1:], n], strict=True))

    def block_shard(self, start: int, stop: int) -> ShardCommitment:
        """The shard of blocks [start, stop) (see `blocks`): a model's layers as its config
        counts them, when one config layer is several proven layers."""
        blocks = self.blocks()
        if not 0 <= start < stop <= len(blocks):
            raise ValueError("block span outside the manifest")
        return self.shard(blocks[start][0], blocks[stop - 1][1])

    def to_bytes(self) -> bytes:
        return msgpack.packb({
            "v": manifest_version(self.layers),
            "t": "zk-manifest",
            "model": self.model_id,
            "f": self.frac_bits,
            "seed": self.generator_seed,
            "layers": [lc.to_wire() for lc in self.layers],
        })

    def digest(self) -> bytes:
        return hashlib.sha256(b"p2pinfer-zk-v1/manifest" + self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes, max_size: int = 64 << 20) -> ModelManifest:
        m = _unpack(data, max_size, "zk-manifest",
                    (MANIFEST_VERSION, MANIFEST_VERSION_SKIP, MANIFEST_VERSION_ATTENTION))
        model, f, seed, layers = m.get("model"), m.get("f"), m.get("seed"), m.get("layers")
        if not isinstance(model, str) or len(model) > 256:
            raise ProofFormatError("bad model id")
        if not isinstance(f, int) or not 1 <= f <= 16:
            raise ProofFormatError("bad frac_bits")
        if not isinstance(seed, bytes) or len(seed) > 64:
            raise ProofFormatError("bad generator seed")
        if not isinstance(layers, list) or not 1 <= len(layers) <= 4096:
            raise ProofFormatError("bad layer list")
        decoded = tuple(LayerCommitment.from_wire(lc) for lc in layers)
        if m["v"] != manifest_version(decoded):
            raise ProofFormatError("a manifest is version 3 exactly when a layer is attention, "
                                   "else version 2 exactly when a layer has a skip")
        if f > MAX_RMS_FRAC_BITS and any(lc.activation == "rmsnorm" for lc in decoded):
            raise ProofFormatError(f"RMSNorm layers need frac_bits <= {MAX_RMS_FRAC_BITS}")
        if f > MAX_LOOKUP_FRAC_BITS and any(uses_table(lc.activation) for lc in decoded):
            raise ProofFormatError(f"GELU, SiLU, gated and attention layers need frac_bits <= "
                                   f"{MAX_LOOKUP_FRAC_BITS}")
        return cls(model, f, seed, decoded)

    @classmethod
    def from_shards(cls, model_id: str, shards: Sequence[CommittedShard]) -> ModelManifest:
        """A manifest from committed consecutive shards (the model owner's step)."""
        if not shards:
            raise ValueError("no shards")
        f, seed = shards[0].commitment.frac_bits, shards[0].commitment.generator_seed
        layers: list[LayerCommitment] = []
        for s in shards:
            c = s.commitment
            if c.frac_bits != f or c.generator_seed != seed:
                raise ValueError("shards were committed with different parameters")
            layers.extend(c.layers)
        return cls(model_id, f, seed, tuple(layers))


def _unpack(data: object, max_size: int, t: str, version: int | tuple[int, ...]) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProofFormatError("expected bytes")
    if len(data) > max_size:
        raise ProofFormatError(f"{t} of {len(data)} bytes is above the {max_size}-byte limit")
    try:
        m = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True,
                            max_bin_len=max_size, max_str_len=1 << 16,
                            max_array_len=1 << 22, max_map_len=64)
    except Exception as exc:
        raise ProofFormatError(f"{t} does not decode as msgpack") from exc
    if not isinstance(m, dict):
        raise ProofFormatError(f"{t} is not a map")
    versions = version if isinstance(version, tuple) else (version,)
    if type(m.get("v")) is not int or m.get("v") not in versions:
        raise ProofFormatError(f"{t} has unsupported version {m.get('v')!r}")
    if m.get("t") != t:
        raise ProofFormatError(f"expected a {t}, got {m.get('t')!r}")
    return m


# --------------------------------------------------------------------------------------------
# Committing a shard (the weight owner / prover side)


@dataclass
class CommittedShard:
    """A provable shard together with its public commitment and the private row blindings."""

    shard: ProvableMlp
    commitment: ShardCommitment
    weight_blinds: list[list[int]] = field(repr=False)
    bias_blinds: list[list[int] | None] = field(repr=False)

    def forward_fixed(self, x: np.ndarray) -> np.ndarray:
        return self.shard.forward_fixed(x)

    def bind_to(self, entry: ShardCommitment) -> CommittedShard:
        """The same shard, proving against `entry` (a manifest slice with the same layers)."""
        if (entry.layers != self.commitment.layers or entry.frac_bits != self.commitment.frac_bits
                or entry.generator_seed != self.commitment.generator_seed):
            raise CommitmentMismatch("the manifest entry does not hold this shard's commitments")
        return CommittedShard(self.shard, entry, self.weight_blinds, self.bias_blinds)


def generator_count_for(layers: Sequence[FixedLayer | LayerCommitment], tokens: int) -> int:
    """Vector generators needed to commit these layers and prove `tokens` tokens (0: commit)."""
    need = 1
    for layer in layers:
        if layer.activation == "attention":
            for _, width in weight_parts(layer):
                need = max(need, 1 << hyrax_split((layer.d_in * width).bit_length() - 1)[1])
            if tokens:
                need = max(need, *attention_columns(layer, tokens))
            continue
        nw = weight_entries(layer.activation, layer.d_in, layer.d_out).bit_length() - 1
        need = max(need, 1 << hyrax_split(nw)[1])
        if tokens and layer.activation == "rmsnorm":  # the range bits: 256 columns
            need = max(need, 256, 1 << hyrax_split((tokens - 1).bit_length())[1])
        if tokens:
            nb = (tokens * layer.d_out * BITS).bit_length() - 1
            need = max(need, 1 << hyrax_split(nb, 5)[1])
            if uses_table(layer.activation):  # the lookup table's rows
                need = max(need, 1 << hyrax_split(MAX_LOOKUP_FRAC_BITS + LOOKUP_RANGE_BITS)[1])
    return need


def attention_columns(layer: FixedLayer | LayerCommitment, tokens: int) -> list[int]:
    """Hyrax row widths of the tables an attention layer's proof commits (attention_proof.py):
    the rescale bits of q, k, v; the division bits (4 parts of 32 per output element); the
    softmax bits (32 per score); the scores' tables; the row maxima; the exp table."""
    nt = (tokens - 1).bit_length()
    shape = attention_shape(layer)
    nd, nh = layer.d_out.bit_length() - 1, shape.heads.bit_length() - 1
    n_s = 2 * nt + nh
    sizes = [hyrax_split(nt + (w.bit_length() - 1) + 5, 5) for w in shape.parts()]
    sizes += [hyrax_split(nt + nd + 2 + 5, 5), hyrax_split(n_s + 5, 5), hyrax_split(n_s),
              hyrax_split(nt + nh), hyrax_split(MAX_LOOKUP_FRAC_BITS + EXP_RANGE_BITS)]
    return [1 << c for _, c in sizes]


def params_for(size: int, seed: bytes) -> PedersenParams:
    return pedersen_params(max(64, 1 << (size - 1).bit_length()), seed)


def _layer_matrix(values: np.ndarray) -> np.ndarray:
    n = values.size.bit_length() - 1
    rows, cols = hyrax_split(n)
    return values.reshape(1 << rows, 1 << cols)


def _commit_rows(pp: PedersenParams, mat: np.ndarray) -> tuple[list[bytes], list[int]]:
    blinds = [random_scalar() for _ in range(mat.shape[0])]
    rows = [encode_point(pp.commit_small_ints(r, s)) for r, s in zip(mat, blinds)]
    return rows, blinds


def commit_shard(
    shard: ProvableMlp | Sequence[FixedLayer],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    model_id: str = "",
    first_layer: int = 0,
    generator_seed: bytes = DEFAULT_SEED,
) -> CommittedShard:
    """One-time Hyrax commitment of a shard's weights, cached on disk when cache_dir is given.

    The cache file (msgpack, mode 0600: it holds the secret blindings) is keyed by a digest of
    the weights and the generator seed, so changed weights never reuse a stale commitment.
    """
    if not isinstance(shard, ProvableMlp):
        shard = ProvableMlp(list(shard))
    key = hashlib.sha256(shard.weights_digest() + generator_seed).hexdigest()
    path = Path(cache_dir) / f"zk-commit-{key}.msgpack" if cache_dir is not None else None
    cached = _read_cache(path, key, shard) if path is not None and path.exists() else None
    if cached is None:
        pp = params_for(generator_count_for(shard.layers, 0), generator_seed)
        cached = []
        for layer in shard.layers:
            w_rows, w_blinds, b_rows, b_blinds = [], [], [], []
            for col0, width in weight_parts(layer):
                rows, blinds = _commit_rows(
                    pp, _layer_matrix(layer.weight[:, col0:col0 + width].reshape(-1)))
                w_rows += rows
                w_blinds += blinds
                if layer.bias is not None:
                    rows, blinds = _commit_rows(pp, _layer_matrix(layer.bias[col0:col0 + width]))
                    b_rows += rows
                    b_blinds += blinds
            if layer.bias is None:
                b_rows = b_blinds = None
            cached.append((w_rows, w_blinds, b_rows, b_blinds))
        if path is not None:
            _write_cache(path, key, cached)
    layers = tuple(
        LayerCommitment(l.d_in, l.d_out, l.activation, l.residual, tuple(w),
                        None if b is None else tuple(b), l.skip, l.heads, l.kv_heads, l.rope,
                        l.eps)
        for l, (w, _, b, _) in zip(shard.layers, cached)
    )
    commitment = ShardCommitment(model_id, first_layer, shard.frac_bits, generator_seed, layers)
    return CommittedShard(shard, commitment, [c[1] for c in cached], [c[3] for c in cached])


def _write_cache(path: Path, key: str, cached: list) -> None:
    body = msgpack.packb({
        "v": 1,
        "t": "zk-commitment-cache",
        "key": key,
        "layers": [
            {"w": w, "wb": [encode_scalar(s) for s in wb], "b": b,
             "bb": None if bb is None else [encode_scalar(s) for s in bb]}
            for w, wb, b, bb in cached
        ],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
    os.replace(tmp, path)


def _read_cache(path: Path, key: str, shard: ProvableMlp) -> list | None:
    m = _unpack(path.read_bytes(), 1 << 30, "zk-commitment-cache", 1)
    if m.get("key") != key:
        raise CommitmentMismatch(f"cache file {path} belongs to other weights")
    layers = m.get("layers")
    if not isinstance(layers, list) or len(layers) != len(shard.layers):
        raise ProofFormatError("cache file has the wrong number of layers")
    out = []
    for layer, c in zip(shard.layers, layers):
        if not isinstance(c, dict):
            raise ProofFormatError("cache layer is not a map")
        nrow_w, nrow_b = part_row_counts(layer)
        w, wb, b, bb = c.get("w"), c.get("wb"), c.get("b"), c.get("bb")
        if not _points_list(w, nrow_w) or not isinstance(wb, list) or len(wb) != nrow_w:
            raise ProofFormatError("cache weight rows have the wrong shape")
        if (layer.bias is None) != (b is None):
            raise ProofFormatError("cache bias presence does not match the shard")
        if b is not None and (not _points_list(b, nrow_b) or not isinstance(bb, list)
                              or len(bb) != nrow_b):
            raise ProofFormatError("cache bias rows have the wrong shape")
        out.append((w, [decode_scalar(s) for s in wb], b,
                    None if bb is None else [decode_scalar(s) for s in bb]))
    return out
