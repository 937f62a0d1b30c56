"""BERT encoders (Devlin et al. 2019), including MiniLM and sentence-transformers checkpoints.

Post-norm transformer: embeddings (token + absolute position + segment 0) -> LayerNorm, then
per layer bidirectional self-attention -> add & LayerNorm -> GELU MLP -> add & LayerNorm. The
"output" of an encoder is a sentence embedding: mean (or CLS) pooling over the tokens, L2
normalised when the checkpoint's sentence-transformers `modules.json` lists a Normalize module
(Reimers & Gurevych 2019, "Sentence-BERT", section 3). Batch 1, no padding, so every token
counts in the mean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from p2pinfer.models.cache import KVCache
from p2pinfer.models.errors import ModelError
from p2pinfer.models.family import ArchConfig, Family, Shapes, Weights, eos_ids, field
from p2pinfer.models.layers import LayerNorm, Linear, attention, merge_heads, split_heads

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True, kw_only=True)
class BertConfig(ArchConfig):
    intermediate_size: int
    layer_norm_eps: float
    activation: str
    type_vocab_size: int
    pooling: str = "mean"
    normalize: bool = False

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any]) -> BertConfig:
        hidden = field(raw, "hidden_size")
        heads = field(raw, "num_attention_heads")
        if heads <= 0 or hidden % heads:
            raise ModelError(f"hidden size {hidden} is not divisible by {heads} heads")
        act = raw.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise ModelError(f"activation {act!r} is not supported for bert")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError("only absolute position embeddings are supported for bert")
        if raw.get("is_decoder"):
            raise ModelError("BERT configured as a decoder is not supported")
        pooling = raw.get("p2pinfer_pooling", {})
        return cls(
            model_type="bert",
            num_layers=field(raw, "num_hidden_layers"),
            hidden_size=hidden,
            vocab_size=field(raw, "vocab_size"),
            max_positions=field(raw, "max_position_embeddings", default=512),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            tie_word_embeddings=False,
            eos_token_id=eos_ids(raw),
            intermediate_size=field(raw, "intermediate_size"),
            layer_norm_eps=field(raw, "layer_norm_eps", default=1e-12, kind=float),
            activation=act,
            type_vocab_size=field(raw, "type_vocab_size", default=2),
            pooling=pooling.get("mode", "mean"),
            normalize=bool(pooling.get("normalize", False)),
        )


def read_pooling(path: Path) -> dict[str, Any]:
    """Pooling mode and normalisation from a sentence-transformers layout, if present."""
    mode, normalize = "mean", False
    modules_file = path / "modules.json"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text())
            for module in modules:
                kind = str(module.get("type", ""))
                if kind.endswith("Normalize"):
                    normalize = True
                if kind.endswith("Pooling"):
                    pool_cfg = json.loads((path / module["path"] / "config.json").read_text())
                    if pool_cfg.get("pooling_mode_cls_token"):
                        mode = "cls"
                    elif not pool_cfg.get("pooling_mode_mean_tokens", True):
                        raise ModelError(f"{path}: only mean or CLS pooling is supported")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: unreadable sentence-transformers config: {exc}") from exc
    return {"mode": mode, "normalize": normalize}


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig, w: Weights) -> None:
        super().__init__()
        self.heads, self.scale = cfg.num_heads, cfg.head_dim**-0.5
        p = "attention.self."
        self.query = Linear(w[p + "query.weight"], w[p + "query.bias"])
        self.key = Linear(w[p + "key.weight"], w[p + "key.bias"])
        self.value = Linear(w[p + "value.weight"], w[p + "value.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(f(x), self.heads) for f in (self.query, self.key, self.value))
        return merge_heads(attention(q, k, v, None, self.scale))


class Block(nn.Module):
    def __init__(self, cfg: BertConfig, layer: int, w: Weights) -> None:
        super().__init__()
        eps = cfg.layer_norm_eps
        self.attention = SelfAttention(cfg, w)
        self.attention_out = Linear(
            w["attention.output.dense.weight"], w["attention.output.dense.bias"]
        )
        self.attention_norm = LayerNorm(
            w["attention.output.LayerNorm.weight"], w["attention.output.LayerNorm.bias"], eps
        )
        self.intermediate = Linear(w["intermediate.dense.weight"], w["intermediate.dense.bias"])
        self.output = Linear(w["output.dense.weight"], w["output.dense.bias"])
        self.output_norm = LayerNorm(w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], eps)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(
        self, x: torch.Tensor, cache: KVCache | None, slot: int, start: int
    ) -> torch.Tensor:
        x = self.attention_norm(x + self.attention_out(self.attention(x)))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig, w: Weights) -> None:
        super().__init__()
        self.register_buffer("word", w["embeddings.word_embeddings.weight"])
        self.register_buffer("position", w["embeddings.position_embeddings.weight"])
        self.register_buffer("segment", w["embeddings.token_type_embeddings.weight"][0])
        self.norm = LayerNorm(
            w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.layer_norm_eps
        )

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        pos = self.position[start : start + tokens.shape[1]]
        return self.norm(F.embedding(tokens, self.word) + pos + self.segment)


class Pooler(nn.Module):
    """Token states [1, T, H] -> sentence embedding [1, H]."""

    def __init__(self, cfg: BertConfig, w: Weights) -> None:
        super().__init__()
        self.mode, self.normalize = cfg.pooling, cfg.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x[:, 0] if self.mode == "cls" else x.mean(dim=1)
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled


def embedding_shapes(cfg: BertConfig) -> Shapes:
    h = cfg.hidden_size
    return {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, h),
        "embeddings.position_embeddings.weight": (cfg.max_positions, h),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }


def layer_shapes(cfg: BertConfig, layer: int = 0) -> Shapes:
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes: Shapes = {}
    for name in ("query", "key", "value"):
        shapes |= {f"attention.self.{name}.weight": (h, h), f"attention.self.{name}.bias": (h,)}
    return shapes | {
        "attention.output.dense.weight": (h, h),
        "attention.output.dense.bias": (h,),
        "attention.output.LayerNorm.weight": (h,),
        "attention.output.LayerNorm.bias": (h,),
        "intermediate.dense.weight": (i, h),
        "intermediate.dense.bias": (i,),
        "output.dense.weight": (h, i),
        "output.dense.bias": (h,),
        "output.LayerNorm.weight": (h,),
        "output.LayerNorm.bias": (h,),
    }


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    is_decoder=False,
    base_prefixes=("bert.", ""),
    probe_key="embeddings.word_embeddings.weight",
    parse_config=BertConfig.from_hf,
    embedding_shapes=embedding_shapes,
    layer_prefix=lambda i: f"encoder.layer.{i}.",
    layer_shapes=layer_shapes,
    output_shapes=lambda cfg: {},
    tied_key=None,
    build_embeddings=Embeddings,
    build_block=Block,
    build_output=Pooler,
)
