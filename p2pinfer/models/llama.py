"""Llama-style decoders: Llama (1-3), Mistral, Qwen2.

Pre-norm transformer with RMSNorm, rotary position embeddings (RoPE, Su et al. 2021,
"RoFormer", eq. 34, in the rotate-half form of the Hugging Face checkpoints), grouped-query
attention (Ainslie et al. 2023) and a SwiGLU MLP (Shazeer 2020). Qwen2 adds biases to the q/k/v
projections; Mistral and some Qwen2 layers use a sliding attention window. Weights follow the
Hugging Face layout `model.layers.{i}.self_attn.q_proj.weight` etc.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from p2pinfer.models.cache import KVCache
from p2pinfer.models.errors import ModelError
from p2pinfer.models.family import (
    ArchConfig,
    Family,
    Shapes,
    Weights,
    eos_ids,
    field,
)
from p2pinfer.models.layers import Linear, RMSNorm, causal_attention, merge_heads, split_heads


@dataclass(frozen=True, kw_only=True)
class LlamaConfig(ArchConfig):
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    sliding_windows: tuple[int | None, ...] = ()

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any]) -> LlamaConfig:
        model_type = raw["model_type"]
        hidden = field(raw, "hidden_size")
        heads = field(raw, "num_attention_heads")
        kv_heads = field(raw, "num_key_value_heads", default=heads)
        layers = field(raw, "num_hidden_layers")
        head_dim = field(raw, "head_dim", default=hidden // heads if heads else 0)
        if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
            raise ModelError(f"{heads} attention heads cannot be grouped over {kv_heads} kv heads")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ModelError(f"activation {act!r} is not supported for {model_type} (only silu)")
        if raw.get("partial_rotary_factor", 1.0) != 1.0:
            raise ModelError("partial rotary embeddings are not supported")
        rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ModelError(f"RoPE type {rope_type!r} is not supported")
        rope["rope_type"] = rope_type
        rope.pop("type", None)
        windows: list[int | None] = [None] * layers
        window = raw.get("sliding_window")
        if model_type == "mistral" and window is not None:
            windows = [int(window)] * layers
        elif model_type == "qwen2":
            kinds = raw.get("layer_types")
            if kinds and len(kinds) == layers:
                windows = [int(window) if k == "sliding_attention" else None for k in kinds]
            elif raw.get("use_sliding_window") and window is not None:
                first = int(raw.get("max_window_layers", layers))
                windows = [int(window) if i >= first else None for i in range(layers)]
        return cls(
            model_type=model_type,
            num_layers=layers,
            hidden_size=hidden,
            vocab_size=field(raw, "vocab_size"),
            max_positions=field(raw, "max_position_embeddings", default=2048),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            eos_token_id=eos_ids(raw),
            intermediate_size=field(raw, "intermediate_size"),
            rms_norm_eps=field(raw, "rms_norm_eps", default=1e-6, kind=float),
            rope_theta=theta,
            rope_scaling=tuple(sorted(rope.items())),
            attention_bias=bool(raw.get("attention_bias", False)),
            qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_windows=tuple(windows),
        )


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Rotary frequencies theta^(-2i/d), with the checkpoint's scaling applied."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = dict(cfg.rope_scaling)
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, blended, scaled)
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg))

    def forward(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        pos = torch.arange(start, start + length, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int, w: Weights) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.window = cfg.sliding_windows[layer] if cfg.sliding_windows else None
        self.q_proj = Linear(w["self_attn.q_proj.weight"], w.get("self_attn.q_proj.bias"))
        self.k_proj = Linear(w["self_attn.k_proj.weight"], w.get("self_attn.k_proj.bias"))
        self.v_proj = Linear(w["self_attn.v_proj.weight"], w.get("self_attn.v_proj.bias"))
        self.o_proj = Linear(w["self_attn.o_proj.weight"], w.get("self_attn.o_proj.bias"))
        self.rotary = Rotary(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None, slot: int, start: int
    ) -> torch.Tensor:
        t = x.shape[1]
        q = split_heads(self.q_proj(x), self.heads)
        k = split_heads(self.k_proj(x), self.kv_heads)
        v = split_heads(self.v_proj(x), self.kv_heads)
        cos, sin = self.rotary(start, t, x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.write(slot, start, k, v)
        y = causal_attention(q, k, v, start, self.head_dim**-0.5, self.window)
        return self.o_proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, w: Weights) -> None:
        super().__init__()
        self.gate_proj = Linear(w["mlp.gate_proj.weight"], w.get("mlp.gate_proj.bias"))
        self.up_proj = Linear(w["mlp.up_proj.weight"], w.get("mlp.up_proj.bias"))
        self.down_proj = Linear(w["mlp.down_proj.weight"], w.get("mlp.down_proj.bias"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int, w: Weights) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(w["input_layernorm.weight"], cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer, w)
        self.post_attention_layernorm = RMSNorm(
            w["post_attention_layernorm.weight"], cfg.rms_norm_eps
        )
        self.mlp = MLP(w)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None, slot: int, start: int
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, slot, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: LlamaConfig, w: Weights) -> None:
        super().__init__()
        self.register_buffer("weight", w["embed_tokens.weight"])

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


class LMHead(nn.Module):
    """Final RMSNorm and the vocabulary projection (tied to the embeddings or not)."""

    def __init__(self, cfg: LlamaConfig, w: Weights) -> None:
        super().__init__()
        self.norm = RMSNorm(w["norm.weight"], cfg.rms_norm_eps)
        self.lm_head = Linear(w["lm_head.weight"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))


def embedding_shapes(cfg: LlamaConfig) -> Shapes:
    return {"embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size)}


def layer_shapes(cfg: LlamaConfig, layer: int = 0) -> Shapes:
    h, q, kv, i = (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    )
    shapes: Shapes = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (i, h),
        "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }
    if cfg.qkv_bias:
        shapes |= {
            "self_attn.q_proj.bias": (q,),
            "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.bias": (kv,),
        }
    if cfg.attention_bias:
        shapes["self_attn.o_proj.bias"] = (h,)
    if cfg.mlp_bias:
        shapes |= {"mlp.gate_proj.bias": (i,), "mlp.up_proj.bias": (i,), "mlp.down_proj.bias": (h,)}
    return shapes


def output_shapes(cfg: LlamaConfig) -> Shapes:
    return {"norm.weight": (cfg.hidden_size,)}


FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    is_decoder=True,
    base_prefixes=("model.", ""),
    probe_key="embed_tokens.weight",
    parse_config=LlamaConfig.from_hf,
    embedding_shapes=embedding_shapes,
    layer_prefix=lambda i: f"layers.{i}.",
    layer_shapes=layer_shapes,
    output_shapes=output_shapes,
    tied_key="embed_tokens.weight",
    build_embeddings=Embeddings,
    build_block=Block,
    build_output=LMHead,
)
