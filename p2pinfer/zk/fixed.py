"""Fixed-point layers: the integer arithmetic a critical-mode stage runs, bit for bit.

Spec: protocols/zk-proof.md, "Tables and Hyrax layout" (fixed point) and the per-layer sections
("Per-layer argument", "GELU and SiLU layers", "Gated layers", "RMSNorm layers", "Attention
layers"); paper section 4 (zkDPS), zkLLM section 5. Activations carry `frac_bits` fractional
bits, weights `frac_bits`, biases 2*frac_bits. A layer computes z = a W + b exactly in integers,
rescales q = floor(z / 2**f) and applies ReLU, the identity, a lookup activation (tables.py), a
gate, RMSNorm or attention (attention.py), then optionally adds a residual. Every
pre-activation z must satisfy -2**31 <= z < 2**31 (the 32-bit decomposition the proof uses):
`FixedPointOverflow` otherwise. Execution is bit-for-bit deterministic (int64 numpy).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import isqrt
from typing import Protocol

import msgpack
import numpy as np

from .attention import AttentionShape, attention_fixed
from .errors import FixedPointOverflow
from .tables import (
    LOOKUP_ACTIVATIONS,
    LOOKUP_RANGE_BITS,
    MAX_LOOKUP_FRAC_BITS,
    check_range_bits,
    lookup_activation,
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
#: gated layers y = floor(act(floor(x W_g + b_g) / 2**f) * floor((x W_u + b_u) / 2**f) / 2**f):
#: the name and the lookup activation of the gate. The layer's weight is [W_u | W_g]
#: (d_in, 2 d_out) and its bias [b_u | b_g], committed as one matrix.
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}
#: a skip residual adds the input of a layer at most MAX_SKIP layers back
MAX_SKIP = 64


class LayerShape(Protocol):
    """What the layout of a layer's tables depends on: a FixedLayer or a LayerCommitment."""

    @property
    def d_in(self) -> int: ...

    @property
    def d_out(self) -> int: ...

    @property
    def activation(self) -> str: ...

    @property
    def heads(self) -> int: ...

    @property
    def kv_heads(self) -> int: ...

    @property
    def rope(self) -> int: ...

    @property
    def lookup_range(self) -> int: ...


def log2_exact(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{what} must be a power of two, got {n}")
    return n.bit_length() - 1


def attention_shape(layer: LayerShape) -> AttentionShape:
    return AttentionShape(layer.d_out, layer.heads, layer.kv_heads, layer.rope)


def uses_table(activation: str) -> bool:
    """Whether a layer of this activation is proven with a lookup table (attention: exp)."""
    return (activation in LOOKUP_ACTIVATIONS or activation in GATED_ACTIVATIONS
            or activation == "attention")


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
    #: a lookup or gated layer's table range R: its table covers real inputs in
    #: [-2**(R-1), 2**(R-1)) (tables.py)
    lookup_range: int = LOOKUP_RANGE_BITS

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
        check_range_bits(self.lookup_range)
        if self.lookup_range != LOOKUP_RANGE_BITS and not (
                self.activation in LOOKUP_ACTIVATIONS or self.activation in GATED_ACTIVATIONS):
            raise ValueError("a table range belongs to GELU, SiLU and gated layers")
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


def _worst(a: np.ndarray, scale_bits: int) -> str:
    """The value of largest magnitude in `a`, as a real number at scale 2**scale_bits."""
    v = int(a.max()) if a.max() >= -int(a.min()) else int(a.min())
    return f"{v / (1 << scale_bits):g}"


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
        lookup_range: int = LOOKUP_RANGE_BITS,
    ) -> ProvableMlp:
        """Quantize float (W (d_in, d_out), b) pairs: W, x to 2**-f and b to 2**-2f steps.

        A gated layer (`swiglu`, `geglu`) takes (W_u, b_u, W_g, b_g) instead of a pair, an
        attention layer (W_q, b_q, W_k, b_k, W_v, b_v, AttentionShape) (W_q and b_q are scaled
        by 1/sqrt(head width) here; widths must be the shape's, unpadded). GELU, SiLU and gated
        layers get tables of range `lookup_range` (tables.py). The
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
            wide = act in LOOKUP_ACTIVATIONS or act in GATED_ACTIVATIONS
            out.append(FixedLayer(wq, bq, act, r, back,
                                  lookup_range=lookup_range if wide else LOOKUP_RANGE_BITS))
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

    def trace(self, x: np.ndarray, live: int | None = None,
              attention: Callable[[int, FixedLayer, np.ndarray], dict] | None = None
              ) -> list[LayerTrace]:
        """Every layer's input, pre-activation and output; rows from `live` on are a proof's
        padding (attention layers let them attend to themselves only). `attention(k, layer,
        a)`, when given, runs attention layer k instead (a decode step over a KV cache,
        kvcache.py); it returns at least `z` and `out` as attention_fixed does."""
        a = self.check_input(x)
        f = self.frac_bits
        half = 1 << (BITS - 1)
        out: list[LayerTrace] = []
        k = 0
        try:
            for k, layer in enumerate(self.layers):
                source = out[len(out) - layer.skip].a if layer.skip else a
                if layer.activation == "rmsnorm":
                    norm = rmsnorm_fixed(a, layer.weight, f, layer.eps)
                    out.append(LayerTrace(a, norm["v"], norm["y"], norm["w"]))
                    a = norm["y"]
                    continue
                if layer.activation == "attention":
                    att = (attention(k, layer, a) if attention is not None else
                           attention_fixed(a, layer.weight, layer.bias, attention_shape(layer), f,
                                           live))
                    out.append(LayerTrace(a, att["z"], att["out"]))
                    a = att["out"]
                    continue
                z = _matmul_exact(a, layer.weight)
                if layer.bias is not None:
                    z = z + layer.bias
                if z.min(initial=0) < -half or z.max(initial=0) >= half:
                    raise FixedPointOverflow(f"a pre-activation is outside [-2**31, 2**31) "
                                             f"(real {_worst(z, 2 * f)})")
                q = z >> f
                zw = None
                if layer.gated:
                    d = layer.d_out
                    gate = lookup_activation(q[:, d:], GATED_ACTIVATIONS[layer.activation], f,
                                             layer.lookup_range)
                    zw, z = z, gate * q[:, :d]
                    if z.min(initial=0) < -half or z.max(initial=0) >= half:
                        raise FixedPointOverflow(
                            f"a gated product is outside [-2**31, 2**31) (real "
                            f"{_worst(z, 2 * f)}, above {half >> 2 * f}: an importer's MLP "
                            f"shift makes room)")
                    y = z >> f
                elif layer.activation == "relu":
                    y = np.maximum(q, 0)
                elif layer.activation in LOOKUP_ACTIVATIONS:
                    y = lookup_activation(q, layer.activation, f, layer.lookup_range)
                else:
                    y = q
                if layer.residual:
                    y = y + source
                    if np.abs(y).max(initial=0) >= 1 << (BITS - 8):
                        raise FixedPointOverflow(f"a residual sum is outside (-2**24, 2**24) "
                                                 f"(real {_worst(y, f)})")
                out.append(LayerTrace(a, z, y, zw))
                a = y
        except FixedPointOverflow as exc:  # name the layer (of this shard) it happened in
            raise FixedPointOverflow(f"layer {k} ({self.layers[k].activation}): {exc}") from None
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
                                   + ([layer.eps] if layer.eps != RMS_EPS_DEFAULT else [])
                                   + ([["range", layer.lookup_range]]
                                      if layer.lookup_range != LOOKUP_RANGE_BITS else [])))
            h.update(np.ascontiguousarray(layer.weight, dtype="<i8").tobytes())
            h.update(b"\x01" if layer.bias is not None else b"\x00")
            if layer.bias is not None:
                h.update(np.ascontiguousarray(layer.bias, dtype="<i8").tobytes())
        return h.digest()
