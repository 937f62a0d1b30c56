"""Provable MLP models (`model_type: "p2pinfer-mlp"`), the models critical mode runs.

A directory holds `config.json` and the weights in `model.safetensors` (`layers.{i}.weight`
of shape [out, in] as a linear map, `layers.{i}.bias`); for critical mode also the owner's
published manifest and commitment caches, which p2pinfer.zk.checkpoint reads and writes (this
module is the float model only and does not import p2pinfer.zk). Every layer maps
hidden_size -> hidden_size: y = act(x W^T + b) (+ x when residual), act in {relu, identity,
gelu, silu}; a gated layer (swiglu, geglu) holds `layers.{i}.weight` of shape [2h, h] (the up
rows, then the gate rows) and a bias of 2h, and computes act(x W_g^T + b_g) * (x W_u^T + b_u).
A `swiglu-mlp` layer is a Llama MLP block through `intermediate_size` ff: `weight` [2ff, h] and
`bias` [2ff] (up, then gate), `down.weight` [h, ff] and `down.bias` [h]; it computes
down(silu(gate) * up) + x and is proven as two layers (see `BLOCKS`). A `llama-mlp` layer
adds `norm.weight` [h] and computes x + down(silu(gate(n)) * up(n)) with n = RMSNorm(x) g (eps
`rms_norm_eps`, default 2**-16, in [2**-30, 1]): the MLP half of a Llama block, proven as three layers. A `llama-attn` layer is the
attention half: `norm.weight` [h], `weight` [h + 2 kv, h] (the q rows, then k, then v; kv =
num_key_value_heads * h / num_attention_heads), `bias` [h + 2 kv], `o.weight` [h, h] and
`o.bias` [h]; it
computes x + o(attention(RMSNorm(x) g)) with causal multi-head attention, rotary positions in
the rotate-half layout when `rope_theta` > 0, and query head i reading kv head
i // (heads / kv_heads); proven as three layers (norm, attention, o with skip 2). A Llama
model is llama-attn and llama-mlp layers in turn.

There are no tokens: the "embedding" is the identity on features [1, T, hidden_size] and the
output is the last hidden state. In general mode the layers run in float; in critical mode in
fixed point (`frac_bits` fractional bits, p2pinfer.zk.fixed), bit-for-bit on every machine.
The config refuses what fixed point cannot represent (TABLE_MAX_FRAC_BITS and the limits
after it).

The built-ins `p2pinfer-zk-mlp` (6 layers of 256, ReLU but the last) and `p2pinfer-zk-llama`
have seeded random weights (`zk_mlp_config`, `zk_llama_config`, `write_random_mlp`), the same on
every machine; p2pinfer.zk.checkpoint writes them with their manifest on first use.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from torch import nn

from p2pinfer.models.defaults import random_uniform
from p2pinfer.models.errors import ModelError
from p2pinfer.models.family import ArchConfig, Family, Shapes, Weights, field

MODEL_TYPE = "p2pinfer-mlp"
ZK_MLP = "p2pinfer-zk-mlp"
#: the built-in provable transformer: two Llama blocks (attention and MLP halves) of width
#: 128, 4 heads, 2 kv heads, rotary positions, ff 256, then an identity layer
ZK_LLAMA = "p2pinfer-zk-llama"
_ACTIVATIONS = ("relu", "identity", "gelu", "silu", "swiglu", "geglu", "swiglu-mlp",
                "llama-mlp", "llama-attn")
GATES = {"swiglu": F.silu, "geglu": F.gelu}
#: a Llama MLP block in one layer: down(silu(x W_g^T + b_g) * (x W_u^T + b_u)) + x, through
#: `intermediate_size`; in fixed point a gated layer and a down projection whose residual
#: reaches back to the block's input (skip 1), so a layer span never cuts a block
BLOCKS = {"swiglu-mlp": "swiglu", "llama-mlp": "swiglu"}
#: `llama-mlp` is the MLP half of a Llama block: x + MLP(RMSNorm(x) g), eps `rms_norm_eps`
#: (default 2**-16), with the gain g in `norm.weight` [h]; proven as three layers (norm,
#: gated, down with skip 2)
NORMED = ("llama-mlp",)
#: the attention half of a Llama block: x + o(attention(RMSNorm(x) g)); in fixed point an
#: RMSNorm, an attention layer (W_q | W_k | W_v) and o with skip 2 back to the block's input
ATTENTION = "llama-attn"
_RMS_EPS = 2.0 ** -16  # the default `rms_norm_eps`
#: What fixed point can represent, so a config that no proof could check is refused on load
#: (pure numbers; p2pinfer.zk holds the same limits, and tests/critical checks they agree):
#: layers proven with a lookup table (GELU, SiLU, the gated gate, attention's exp) need
#: frac_bits <= TABLE_MAX_FRAC_BITS (the table has 2**(frac_bits + 6) entries)
TABLE_MAX_FRAC_BITS = 10
#: `lookup_range_bits` R: the GELU and SiLU tables (the gated layers' gates included) cover
#: real inputs in [-2**(R-1), 2**(R-1)); 6 ([-32, 32)) unless the config widens them, up to 9
TABLE_RANGE_BITS_DEFAULT, TABLE_RANGE_BITS_MAX = 6, 9
TABLE_ACTIVATIONS = ("gelu", "silu", "swiglu", "geglu", ATTENTION)
#: rms_norm_eps in [2**-30, 1] after rounding to a multiple of 2**-32 (RMS_EPS_UNITS_BITS)
RMS_EPS_UNITS_BITS = 32
RMS_EPS_UNITS_MIN, RMS_EPS_UNITS_MAX = 4, 1 << RMS_EPS_UNITS_BITS
#: a rope theta is 0 (none) or an integer in [2, MAX_ROPE_THETA)
MAX_ROPE_THETA = 1 << 32


@dataclass(frozen=True, kw_only=True)
class MlpConfig(ArchConfig):
    activations: tuple[str, ...]
    residual: tuple[bool, ...]
    frac_bits: int
    intermediate_size: int
    rope_theta: int = 0
    rms_norm_eps: float = _RMS_EPS
    lookup_range_bits: int = TABLE_RANGE_BITS_DEFAULT

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any]) -> MlpConfig:
        layers = field(raw, "num_layers", "num_hidden_layers")
        hidden = field(raw, "hidden_size")
        if not 1 <= layers <= 4096 or not 1 <= hidden <= 1 << 14:
            raise ModelError("num_layers must be in 1..4096 and hidden_size in 1..16384")
        acts = raw.get("activations", "relu")
        acts = [acts] * layers if isinstance(acts, str) else acts
        if not isinstance(acts, list) or len(acts) != layers or any(
                a not in _ACTIVATIONS for a in acts):
            raise ModelError(f"activations must be one of {_ACTIVATIONS} or a list of "
                             f"{layers} of them")
        res = raw.get("residual", False)
        res = [res] * layers if isinstance(res, bool) else res
        if not isinstance(res, list) or len(res) != layers or any(
                not isinstance(r, bool) for r in res):
            raise ModelError(f"residual must be a bool or a list of {layers} bools")
        if any(r and a in BLOCKS for a, r in zip(acts, res, strict=True)):
            raise ModelError("a swiglu-mlp layer adds its input itself: residual must be false")
        ff = field(raw, "intermediate_size", default=hidden)
        if not 1 <= ff <= 1 << 14:
            raise ModelError("intermediate_size must be in 1..16384")
        frac = field(raw, "frac_bits", default=8)
        if not 1 <= frac <= 16:
            raise ModelError("frac_bits must be in 1..16")
        if frac > TABLE_MAX_FRAC_BITS and any(a in TABLE_ACTIVATIONS for a in acts):
            raise ModelError(f"GELU, SiLU, gated and attention layers need frac_bits <= "
                             f"{TABLE_MAX_FRAC_BITS} (the size of their lookup table)")
        eps = field(raw, "rms_norm_eps", default=_RMS_EPS, kind=float)
        units = round(float(eps) * (1 << RMS_EPS_UNITS_BITS))
        if not RMS_EPS_UNITS_MIN <= units <= RMS_EPS_UNITS_MAX:
            raise ModelError(f"rms_norm_eps: an RMSNorm eps must be in [2**-30, 1], got {eps!r}")
        lut = field(raw, "lookup_range_bits", default=TABLE_RANGE_BITS_DEFAULT)
        if not TABLE_RANGE_BITS_DEFAULT <= lut <= TABLE_RANGE_BITS_MAX:
            raise ModelError(f"lookup_range_bits must be in {TABLE_RANGE_BITS_DEFAULT}.."
                             f"{TABLE_RANGE_BITS_MAX}")
        heads = field(raw, "num_attention_heads", default=1)
        kv_heads = field(raw, "num_key_value_heads", default=heads)
        theta = field(raw, "rope_theta", default=0.0, kind=float)
        if isinstance(theta, float) and not theta.is_integer():
            raise ModelError("rope_theta must be a whole number (0 for no rotary positions)")
        theta = int(theta)
        if ATTENTION in acts:
            problem = attention_shape_problem(hidden, heads, kv_heads, theta)
            if problem:
                raise ModelError(f"llama-attn layers: {problem} (hidden_size {hidden}, "
                                 f"{heads} heads, {kv_heads} kv heads, rope_theta {theta})")
        return cls(
            model_type=MODEL_TYPE, num_layers=layers, hidden_size=hidden, vocab_size=0,
            max_positions=field(raw, "max_positions", default=1024), num_heads=heads,
            num_kv_heads=kv_heads, head_dim=hidden // heads if hidden % heads == 0 else hidden,
            tie_word_embeddings=False, activations=tuple(acts), residual=tuple(res),
            frac_bits=frac, intermediate_size=ff, rope_theta=theta, rms_norm_eps=eps,
            lookup_range_bits=lut,
        )


def attention_shape_problem(d: int, heads: int, kv_heads: int, theta: int) -> str | None:
    """What keeps attention of this shape from fixed point, or None: width, heads and kv heads
    powers of two, heads <= d, kv_heads dividing heads, theta 0 or in [2, 2**32), and heads of
    width 2 or more with rotary positions."""
    def pow2(n: int) -> bool:
        return type(n) is int and n >= 1 and not n & (n - 1)

    if not (pow2(d) and pow2(heads) and pow2(kv_heads)):
        return "an attention layer's width, heads and kv_heads must be powers of two"
    if heads > d or heads % kv_heads:
        return "an attention layer needs heads <= d and kv_heads dividing heads"
    if type(theta) is not int or not (theta == 0 or 2 <= theta < MAX_ROPE_THETA):
        return f"rope must be 0 (none) or a theta in [2, {MAX_ROPE_THETA})"
    if theta and d // heads < 2:
        return "rotary positions need heads of width 2 or more"
    return None


class Features(nn.Module):
    """The identity "embedding": a provable MLP takes features, not tokens."""

    def __init__(self, cfg: MlpConfig, w: Weights) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        return x


class Output(nn.Module):
    def __init__(self, cfg: MlpConfig, w: Weights) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def rope_angles(theta: int, head_dim: int, tokens: int) -> torch.Tensor:
    """[tokens, head_dim / 2] float64 angles t theta**(-2i / head_dim)."""
    inv = float(theta) ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return torch.arange(tokens, dtype=torch.float64)[:, None] * inv[None, :]


class Attention(nn.Module):
    """x + o(causal attention(RMSNorm(x) g)): the attention half of a Llama block, over every
    position of the request at once (no cache: a p2pinfer-mlp request is one step)."""

    def __init__(self, cfg: MlpConfig, w: Weights) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.theta = cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta
        self.eps = cfg.rms_norm_eps
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.kv_width = cfg.num_kv_heads * self.head_dim
        for name in ("norm.weight", "weight", "bias", "o.weight", "o.bias"):
            self.register_buffer(name.replace(".", "_"), w[name])

    def _rotate(self, z: torch.Tensor) -> torch.Tensor:
        ang = rope_angles(self.theta, self.head_dim, z.shape[2]).to(z.dtype)
        cos, sin = ang.cos(), ang.sin()
        z1, z2 = z.chunk(2, dim=-1)
        return torch.cat([z1 * cos - z2 * sin, z2 * cos + z1 * sin], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
        q, k, v = F.linear(n, self.weight, self.bias).split([h, self.kv_width, self.kv_width], -1)
        q = q.reshape(b, t, self.heads, -1).transpose(1, 2)
        k = k.reshape(b, t, self.kv_heads, -1).transpose(1, 2)
        v = v.reshape(b, t, self.kv_heads, -1).transpose(1, 2)
        if self.theta:
            q, k = self._rotate(q), self._rotate(k)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + F.linear(o.transpose(1, 2).reshape(b, t, h), self.o_weight, self.o_bias)


class Block(nn.Module):
    """One float layer y = act(x W^T + b) (+ x); cache and positions are ignored."""

    def __init__(self, cfg: MlpConfig, index: int, w: Weights) -> None:
        super().__init__()
        self.act = cfg.activations[index]
        self.residual = cfg.residual[index]
        if self.act == ATTENTION:
            self.attention = Attention(cfg, w)
            return
        self.register_buffer("weight", w["weight"])
        self.register_buffer("bias", w["bias"])
        if self.act in BLOCKS:
            self.register_buffer("down_weight", w["down.weight"])
            self.register_buffer("down_bias", w["down.bias"])
        if self.act in NORMED:
            self.register_buffer("norm_weight", w["norm.weight"])
            self.eps = cfg.rms_norm_eps

    def forward(self, x: torch.Tensor, cache: Any, slot: int, start_pos: int) -> torch.Tensor:
        if self.act == ATTENTION:
            return self.attention(x)
        h = x
        if self.act in NORMED:
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
        y = F.linear(h, self.weight, self.bias)
        if self.act in BLOCKS:
            up, g = y.chunk(2, dim=-1)
            return F.linear(F.silu(g) * up, self.down_weight, self.down_bias) + x
        gate = GATES.get(self.act)
        if gate is not None:
            up, g = y.chunk(2, dim=-1)
            y = gate(g) * up
        elif self.act == "relu":
            y = F.relu(y)
        elif self.act == "gelu":
            y = F.gelu(y)  # exact (erf) GELU, which the fixed-point table rounds
        elif self.act == "silu":
            y = F.silu(y)
        return y + x if self.residual else y


def layer_shapes(cfg: MlpConfig, layer: int = 0) -> Shapes:
    h = cfg.hidden_size
    if cfg.activations[layer] == ATTENTION:
        kv = cfg.num_kv_heads * (h // cfg.num_heads)
        return {"norm.weight": (h,), "weight": (h + 2 * kv, h), "bias": (h + 2 * kv,),
                "o.weight": (h, h), "o.bias": (h,)}
    if cfg.activations[layer] in BLOCKS:
        ff = cfg.intermediate_size
        shapes = {"weight": (2 * ff, h), "bias": (2 * ff,),  # [up; gate] rows
                  "down.weight": (h, ff), "down.bias": (h,)}
        if cfg.activations[layer] in NORMED:
            shapes["norm.weight"] = (h,)
        return shapes
    width = 2 * h if cfg.activations[layer] in GATES else h
    return {"weight": (width, h), "bias": (width,)}


FAMILY = Family(
    name="mlp",
    model_types=(MODEL_TYPE,),
    is_decoder=False,
    base_prefixes=("",),
    probe_key="layers.0.weight",
    parse_config=MlpConfig.from_hf,
    embedding_shapes=lambda cfg: {},
    layer_prefix=lambda i: f"layers.{i}.",
    layer_shapes=layer_shapes,
    output_shapes=lambda cfg: {},
    tied_key=None,
    build_embeddings=Features,
    build_block=Block,
    build_output=Output,
)


# -- the built-in model -----------------------------------------------------------------------
def zk_mlp_config(name: str = ZK_MLP, layers: int = 6, hidden: int = 256,
                  frac_bits: int = 8, activation: str = "relu",
                  intermediate: int | None = None, heads: int = 4, kv_heads: int | None = None,
                  rope_theta: int = 10000) -> dict[str, Any]:
    """A config of `layers` layers, the last an identity; `activation` "llama" makes the others
    llama-attn and llama-mlp in turn (a Llama decoder without embeddings and head)."""
    extra: dict[str, Any] = {"intermediate_size": intermediate} if intermediate else {}
    acts = [activation] * (layers - 1)
    if activation == "llama":
        acts = [ATTENTION if i % 2 == 0 else "llama-mlp" for i in range(layers - 1)]
    if ATTENTION in acts:
        extra.update(num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                     rope_theta=rope_theta)
    return {**extra,
        "model_type": MODEL_TYPE,
        "p2pinfer_name": name,
        "p2pinfer_random_weights": True,
        "num_layers": layers,
        "hidden_size": hidden,
        "activations": acts + ["identity"],
        "residual": False,
        "frac_bits": frac_bits,
        "max_positions": 1024,
        "dtype": "float32",
    }


def write_random_mlp(directory: str | Path, config: dict[str, Any]) -> None:
    """Config and seeded random weights (He-scaled, so activations keep their size through ReLU
    layers; gated layers at std 1/sqrt(h)) into `directory`: the float checkpoint, without a
    manifest (p2pinfer.zk.checkpoint.publish_manifest commits it)."""
    directory = Path(directory)
    h, n = int(config["hidden_size"]), int(config["num_layers"])
    seed = int.from_bytes(hashlib.sha256(config["p2pinfer_name"].encode()).digest()[:16], "little")
    rng = np.random.Generator(np.random.PCG64(seed))
    tensors: dict[str, np.ndarray] = {}
    acts = config.get("activations", "relu")
    acts = acts if isinstance(acts, list) else [acts] * n
    gated = [a in GATES for a in acts]
    ff = int(config.get("intermediate_size", h))
    heads = int(config.get("num_attention_heads", 1))
    kv = int(config.get("num_key_value_heads", heads)) * (h // heads)
    for i in range(n):
        if acts[i] == ATTENTION:  # q, k, v at unit gain, o at a quarter, as the MLP blocks
            tensors[f"layers.{i}.weight"] = random_uniform(rng, (h + 2 * kv, h),
                                                            math.sqrt(1.0 / h))
            tensors[f"layers.{i}.bias"] = random_uniform(rng, (h + 2 * kv,), 0.05)
            tensors[f"layers.{i}.o.weight"] = random_uniform(rng, (h, h), 0.25 * math.sqrt(1 / h))
            tensors[f"layers.{i}.o.bias"] = random_uniform(rng, (h,), 0.05)
            tensors[f"layers.{i}.norm.weight"] = 1.0 + random_uniform(rng, (h,), 0.1)
            continue
        if acts[i] in BLOCKS:
            # the down projection at a quarter of unit gain, so the residual stream grows slowly
            tensors[f"layers.{i}.weight"] = random_uniform(rng, (2 * ff, h), math.sqrt(1.0 / h))
            tensors[f"layers.{i}.bias"] = random_uniform(rng, (2 * ff,), 0.05)
            tensors[f"layers.{i}.down.weight"] = random_uniform(rng, (h, ff),
                                                                  0.25 * math.sqrt(1.0 / ff))
            tensors[f"layers.{i}.down.bias"] = random_uniform(rng, (h,), 0.05)
            if acts[i] in NORMED:
                tensors[f"layers.{i}.norm.weight"] = 1.0 + random_uniform(rng, (h,), 0.1)
            continue
        width = 2 * h if gated[i] else h
        # a gated layer multiplies two pre-activations, so its output grows with their square:
        # at std 1/sqrt(h) they stay near unit size and the product shrinks a little per layer
        std = math.sqrt((1.0 if gated[i] else 2.0) / h)
        tensors[f"layers.{i}.weight"] = random_uniform(rng, (width, h), std)
        tensors[f"layers.{i}.bias"] = random_uniform(rng, (width,), 0.05)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def zk_llama_config(name: str = ZK_LLAMA) -> dict[str, Any]:
    return zk_mlp_config(name, layers=5, hidden=128, activation="llama", intermediate=256,
                         heads=4, kv_heads=2, rope_theta=10000)
