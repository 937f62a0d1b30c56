"""GPT-2 decoders (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners").

Pre-norm transformer with LayerNorm, learned absolute positions, multi-head attention and a
GELU MLP; the LM head is tied to the token embeddings. Hugging Face stores GPT-2's projections
as `Conv1D` weights of shape [in, out]; we transpose them once at load time into the
[out, in] layout of a linear map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from p2pinfer.models.cache import KVCache
from p2pinfer.models.errors import ModelError
from p2pinfer.models.family import ArchConfig, Family, Shapes, Weights, eos_ids, field
from p2pinfer.models.layers import (
    LayerNorm,
    Linear,
    causal_attention,
    merge_heads,
    split_heads,
)

_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


@dataclass(frozen=True, kw_only=True)
class GPT2Config(ArchConfig):
    inner_size: int
    layer_norm_eps: float
    activation: str
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any]) -> GPT2Config:
        hidden = field(raw, "n_embd", "hidden_size")
        heads = field(raw, "n_head", "num_attention_heads")
        if heads <= 0 or hidden % heads:
            raise ModelError(f"hidden size {hidden} is not divisible by {heads} heads")
        act = raw.get("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            raise ModelError(f"activation {act!r} is not supported for gpt2")
        if raw.get("add_cross_attention"):
            raise ModelError("GPT-2 with cross-attention is not supported")
        return cls(
            model_type="gpt2",
            num_layers=field(raw, "n_layer", "num_hidden_layers"),
            hidden_size=hidden,
            vocab_size=field(raw, "vocab_size"),
            max_positions=field(raw, "n_positions", "max_position_embeddings", default=1024),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            eos_token_id=eos_ids(raw),
            inner_size=field(raw, "n_inner", default=4 * hidden),
            layer_norm_eps=field(raw, "layer_norm_epsilon", default=1e-5, kind=float),
            activation=act,
            scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(raw.get("scale_attn_by_inverse_layer_idx", False)),
        )


def conv1d(w: Weights, name: str) -> Linear:
    """A Hugging Face Conv1D ([in, out] weight) as a linear map ([out, in])."""
    return Linear(w[f"{name}.weight"].t().contiguous(), w[f"{name}.bias"])


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int, w: Weights) -> None:
        super().__init__()
        self.heads, self.hidden = cfg.num_heads, cfg.hidden_size
        self.c_attn = conv1d(w, "attn.c_attn")
        self.c_proj = conv1d(w, "attn.c_proj")
        scale = cfg.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= layer + 1
        self.scale = scale

    def forward(
        self, x: torch.Tensor, cache: KVCache | None, slot: int, start: int
    ) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(self.hidden, dim=2)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        if cache is not None:
            k, v = cache.write(slot, start, k, v)
        y = causal_attention(q, k, v, start, self.scale)
        return self.c_proj(merge_heads(y))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int, w: Weights) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(w["ln_1.weight"], w["ln_1.bias"], cfg.layer_norm_eps)
        self.attn = Attention(cfg, layer, w)
        self.ln_2 = LayerNorm(w["ln_2.weight"], w["ln_2.bias"], cfg.layer_norm_eps)
        self.c_fc = conv1d(w, "mlp.c_fc")
        self.c_proj = conv1d(w, "mlp.c_proj")
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(
        self, x: torch.Tensor, cache: KVCache | None, slot: int, start: int
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, slot, start)
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


class Embeddings(nn.Module):
    def __init__(self, cfg: GPT2Config, w: Weights) -> None:
        super().__init__()
        self.register_buffer("wte", w["wte.weight"])
        self.register_buffer("wpe", w["wpe.weight"])

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return F.embedding(tokens, self.wte) + self.wpe[start : start + tokens.shape[1]]


class LMHead(nn.Module):
    def __init__(self, cfg: GPT2Config, w: Weights) -> None:
        super().__init__()
        self.ln_f = LayerNorm(w["ln_f.weight"], w["ln_f.bias"], cfg.layer_norm_eps)
        self.lm_head = Linear(w["lm_head.weight"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))


def embedding_shapes(cfg: GPT2Config) -> Shapes:
    return {
        "wte.weight": (cfg.vocab_size, cfg.hidden_size),
        "wpe.weight": (cfg.max_positions, cfg.hidden_size),
    }


def layer_shapes(cfg: GPT2Config, layer: int = 0) -> Shapes:
    h, i = cfg.hidden_size, cfg.inner_size
    return {
        "ln_1.weight": (h,),
        "ln_1.bias": (h,),
        "attn.c_attn.weight": (h, 3 * h),
        "attn.c_attn.bias": (3 * h,),
        "attn.c_proj.weight": (h, h),
        "attn.c_proj.bias": (h,),
        "ln_2.weight": (h,),
        "ln_2.bias": (h,),
        "mlp.c_fc.weight": (h, i),
        "mlp.c_fc.bias": (i,),
        "mlp.c_proj.weight": (i, h),
        "mlp.c_proj.bias": (h,),
    }


def output_shapes(cfg: GPT2Config) -> Shapes:
    return {"ln_f.weight": (cfg.hidden_size,), "ln_f.bias": (cfg.hidden_size,)}


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    is_decoder=True,
    base_prefixes=("transformer.", ""),
    probe_key="wte.weight",
    parse_config=GPT2Config.from_hf,
    embedding_shapes=embedding_shapes,
    layer_prefix=lambda i: f"h.{i}.",
    layer_shapes=layer_shapes,
    output_shapes=output_shapes,
    tied_key="wte.weight",
    build_embeddings=Embeddings,
    build_block=Block,
    build_output=LMHead,
)
