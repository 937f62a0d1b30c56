"""What a model family provides to the loader: config parsing, weight layout, module builders.

A family file (llama.py, gpt2.py, bert.py) describes where its tensors live in a Hugging Face
checkpoint, relative to the base model's prefix (`model.`, `transformer.`, `bert.` or none), and
builds our own modules from those tensors. The loader (`checkpoint.py`) checks every shape
against the config before anything is loaded, and reads only the tensors a span needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from p2pinfer.models.errors import ModelError

Shapes = dict[str, tuple[int, ...]]
Weights = Mapping[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class ArchConfig:
    """Fields every family config has; families add their own."""

    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    eos_token_id: int | tuple[int, ...] | None = None


@dataclass(frozen=True)
class Family:
    """A model family: how its checkpoint is laid out and how to build its modules."""

    name: str
    model_types: tuple[str, ...]
    is_decoder: bool
    base_prefixes: tuple[str, ...]
    probe_key: str
    parse_config: Callable[[Mapping[str, Any]], ArchConfig]
    embedding_shapes: Callable[[Any], Shapes]
    layer_prefix: Callable[[int], str]
    #: (config, layer index) -> the layer's tensors and shapes
    layer_shapes: Callable[[Any, int], Shapes]
    output_shapes: Callable[[Any], Shapes]
    tied_key: str | None
    build_embeddings: Callable[[Any, Weights], nn.Module]
    build_block: Callable[[Any, int, Weights], nn.Module]
    build_output: Callable[[Any, Weights], nn.Module]


LM_HEAD_KEY = "lm_head.weight"


def field(raw: Mapping[str, Any], *names: str, default: Any = ..., kind: type = int) -> Any:
    """First present, non-null config field among `names`, type-checked."""
    for name in names:
        value = raw.get(name)
        if value is not None:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if kind is int and isinstance(value, bool) or not isinstance(value, kind):
                raise ModelError(f"config field {name!r} should be {kind.__name__}, got {value!r}")
            return value
    if default is ...:
        raise ModelError(f"config field {names[0]!r} is missing")
    return default


def eos_ids(raw: Mapping[str, Any]) -> int | tuple[int, ...] | None:
    eos = raw.get("eos_token_id")
    if isinstance(eos, list):
        return tuple(int(e) for e in eos)
    return eos if isinstance(eos, int) else None
