"""Runnable pieces of a model: the requester's head and tail, and the layer spans peers serve.

U-shaped split learning (Vepakomma et al. 2018, "Split learning for health", U-shaped
configuration): the requester keeps the embeddings and first k layers (`ClientHead`) and the
last k' layers with the final norm and LM head or pooling (`ClientTail`); peers serve
`LayerSpan`s covering [k, L - k'). Head + spans + tail compute exactly the full model.

Pieces hold weights only, never session state: one span serves many sessions at once (from
several threads too), each with its own cache. Everything here is batch 1: activations are
[1, T, hidden]. Decoders take a `KVCache` per piece and session and a `start_pos` equal to the
cache length; T > 1 is a prefill, T == 1 a decode step. Encoders take the whole sequence at once
with no cache.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from p2pinfer.models.cache import KVCache
from p2pinfer.models.checkpoint import AnyCheckpoint, open_checkpoint
from p2pinfer.models.errors import CacheError, ModelError, SpanInputError
from p2pinfer.models.info import ModelInfo, dtype_name
from p2pinfer.models.sampling import Sampler, generate
from p2pinfer.wire import ACTIVATION_DTYPES as WIRE_ACTIVATION_DTYPES
from p2pinfer.wire import DTYPES

#: activation dtypes a span takes from the wire (cast to its own compute dtype)
ACTIVATION_DTYPES = tuple(DTYPES[name] for name in WIRE_ACTIVATION_DTYPES)


class _Layers:
    """Layers [start, end) of one model, their cache and the checks shared by every piece."""

    def __init__(self, ckpt: AnyCheckpoint, start: int, end: int, dtype: torch.dtype) -> None:
        dtype_name(dtype)
        self.info: ModelInfo = ckpt.info()
        self.start, self.end, self.dtype = start, end, dtype
        self._config = ckpt.config
        self.blocks = nn.ModuleList(
            ckpt.family.build_block(ckpt.config, i, ckpt.load(ckpt.layer_keys(i), dtype))
            for i in range(start, end)
        )

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    def new_cache(self) -> KVCache | None:
        """A fresh cache for one session of this piece (None for encoders)."""
        if not self.info.is_decoder:
            return None
        return KVCache(
            self.num_layers,
            self.info.num_kv_heads,
            self.info.head_dim,
            self.info.max_positions,
            self.dtype,
        )

    def check_position(self, length: int, cache: KVCache | None, start_pos: object) -> int:
        if not isinstance(start_pos, int) or isinstance(start_pos, bool) or start_pos < 0:
            raise SpanInputError(f"start_pos must be a non-negative int, got {start_pos!r}")
        if start_pos + length > self.info.max_positions:
            raise SpanInputError(
                f"positions up to {start_pos + length} exceed the model maximum "
                f"{self.info.max_positions}"
            )
        if not self.info.is_decoder:
            if cache is not None or start_pos != 0:
                raise SpanInputError("encoders take the whole sequence: no cache, start_pos 0")
            return start_pos
        if cache is None:
            if start_pos != 0:
                raise CacheError("start_pos > 0 needs the session's KV cache")
            return start_pos
        if not isinstance(cache, KVCache):
            raise CacheError(f"cache must be a KVCache, got {type(cache).__name__}")
        if (cache.num_layers, cache.num_kv_heads, cache.head_dim, cache.dtype) != (
            self.num_layers,
            self.info.num_kv_heads,
            self.info.head_dim,
            self.dtype,
        ):
            raise CacheError("the KV cache was made for a different span or dtype")
        if cache.length != start_pos:
            raise CacheError(
                f"start_pos {start_pos} does not follow the cache length {cache.length}; "
                "truncate the cache to replay"
            )
        return start_pos

    def run(self, x: torch.Tensor, cache: KVCache | None, start_pos: int) -> torch.Tensor:
        end_pos = start_pos + x.shape[1]
        if cache is not None and self.num_layers:
            cache.reserve(end_pos)
        with torch.no_grad():
            for slot, block in enumerate(self.blocks):
                x = block(x, cache, slot, start_pos)
        if cache is not None:
            cache.commit(end_pos)
        return x

    def check_hidden(self, hidden: object) -> torch.Tensor:
        if not isinstance(hidden, torch.Tensor):
            raise SpanInputError(f"hidden states must be a tensor, got {type(hidden).__name__}")
        h = self.info.hidden_size
        if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[2] != h or hidden.shape[1] < 1:
            raise SpanInputError(
                f"hidden states must have shape [1, T>=1, {h}], got {list(hidden.shape)}"
            )
        if hidden.dtype not in ACTIVATION_DTYPES:
            raise SpanInputError(
                f"hidden states must be {dtype_name(self.dtype)} (or another of "
                f"{', '.join(dtype_name(d) for d in ACTIVATION_DTYPES)}), got {hidden.dtype}"
            )
        if not bool(torch.isfinite(hidden).all()):
            raise SpanInputError("hidden states contain NaN or infinity")
        # a route may mix precisions: an upstream bfloat16 replica feeds a float32 one
        return hidden if hidden.dtype == self.dtype else hidden.to(self.dtype)

    @property
    def param_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._modules_buffers())

    def _modules_buffers(self) -> list[torch.Tensor]:
        return list(self.blocks.buffers())


def _open(path: str | Path) -> AnyCheckpoint:
    return open_checkpoint(path)


def _check_range(info: ModelInfo, start: int, end: int, what: str) -> None:
    if not (isinstance(start, int) and isinstance(end, int)):
        raise ModelError(f"{what} bounds must be ints")
    if not 0 <= start <= end <= info.num_layers:
        raise ModelError(f"{what} [{start}, {end}) is outside the model's {info.num_layers} layers")


class LayerSpan(_Layers):
    """Layers [start, end) of a model, as a peer serves them. Reads only those tensors."""

    def __init__(self, ckpt: AnyCheckpoint, start: int, end: int, dtype: torch.dtype) -> None:
        _check_range(ckpt.info(), start, end, "layer span")
        if start == end:
            raise ModelError("a layer span needs at least one layer")
        super().__init__(ckpt, start, end, dtype)
        self.loaded_keys = tuple(ckpt.loaded_keys)

    @classmethod
    def load(
        cls, path: str | Path, start: int, end: int, dtype: torch.dtype = torch.float32
    ) -> LayerSpan:
        return cls(_open(path), start, end, dtype)

    def __repr__(self) -> str:
        return f"LayerSpan({self.info.model_id}, [{self.start}, {self.end}), {self.dtype})"

    def slice(self, start: int, end: int) -> LayerSpan:
        """Layers [start, end) of this span as a span of their own, sharing the weights."""
        if (start, end) == (self.start, self.end):
            return self
        if not (isinstance(start, int) and isinstance(end, int)) or not (
            self.start <= start < end <= self.end
        ):
            raise ModelError(f"[{start}, {end}) is not inside the span [{self.start}, {self.end})")
        view = copy.copy(self)
        view.blocks = nn.ModuleList(list(self.blocks)[start - self.start : end - self.start])
        view.start, view.end = start, end
        return view

    def forward(
        self, hidden: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0
    ) -> torch.Tensor:
        """hidden [1, T, H] at positions [start_pos, start_pos+T) -> [1, T, H].

        Decoders append the T positions to `cache` (which must hold exactly start_pos).
        """
        hidden = self.check_hidden(hidden)
        start_pos = self.check_position(hidden.shape[1], cache, start_pos)
        return self.run(hidden, cache, start_pos)


class ClientHead(_Layers):
    """Token embeddings and the first k layers (k may be 0), kept by the requester."""

    def __init__(self, ckpt: AnyCheckpoint, k: int, dtype: torch.dtype) -> None:
        _check_range(ckpt.info(), 0, k, "head")
        super().__init__(ckpt, 0, k, dtype)
        self.embeddings = ckpt.family.build_embeddings(
            ckpt.config, ckpt.load(ckpt.embedding_keys(), dtype)
        )
        self.loaded_keys = tuple(ckpt.loaded_keys)

    @classmethod
    def load(cls, path: str | Path, k: int, dtype: torch.dtype = torch.float32) -> ClientHead:
        return cls(_open(path), k, dtype)

    def __repr__(self) -> str:
        return f"ClientHead({self.info.model_id}, k={self.end}, {self.dtype})"

    def _modules_buffers(self) -> list[torch.Tensor]:
        return [*self.blocks.buffers(), *self.embeddings.buffers()]

    def check_tokens(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        if not self.info.vocab_size:  # a token-free model (p2pinfer-mlp) takes features
            return self.check_hidden(tokens)
        if isinstance(tokens, torch.Tensor):
            if tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
                raise SpanInputError("tokens must be an integer tensor of shape [1, T]")
            ids = tokens.to(torch.int64)
        else:
            if isinstance(tokens, (str, bytes)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in tokens
            ):
                raise SpanInputError("tokens must be a sequence of ints")
            ids = torch.tensor([list(tokens)], dtype=torch.int64).reshape(1, -1)
        if ids.shape[0] != 1 or ids.shape[1] < 1:
            raise SpanInputError(f"tokens must have shape [1, T>=1], got {list(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.info.vocab_size:
            raise SpanInputError(f"token ids must lie in [0, {self.info.vocab_size})")
        return ids

    def embed(self, tokens: torch.Tensor | Sequence[int], start_pos: int = 0) -> torch.Tensor:
        """The embedding layer alone: tokens -> [1, T, H] (what k = 0 sends)."""
        ids = self.check_tokens(tokens)
        with torch.no_grad():
            return self.embeddings(ids, start_pos)

    def forward(
        self,
        tokens: torch.Tensor | Sequence[int],
        cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """Tokens at positions [start_pos, start_pos+T) -> boundary activation [1, T, H]."""
        ids = self.check_tokens(tokens)
        start_pos = self.check_position(ids.shape[1], cache, start_pos)
        with torch.no_grad():
            x = self.embeddings(ids, start_pos)
        return self.run(x, cache, start_pos)


class ClientTail(_Layers):
    """The last k' layers (k' may be 0) and the output: logits, or a sentence embedding."""

    def __init__(self, ckpt: AnyCheckpoint, k_tail: int, dtype: torch.dtype) -> None:
        info = ckpt.info()
        if not isinstance(k_tail, int) or not 0 <= k_tail <= info.num_layers:
            raise ModelError(f"tail of {k_tail} layers is outside the model's {info.num_layers}")
        super().__init__(ckpt, info.num_layers - k_tail, info.num_layers, dtype)
        self.output = ckpt.family.build_output(ckpt.config, ckpt.load(ckpt.output_keys(), dtype))
        self.loaded_keys = tuple(ckpt.loaded_keys)

    @classmethod
    def load(cls, path: str | Path, k_tail: int, dtype: torch.dtype = torch.float32) -> ClientTail:
        return cls(_open(path), k_tail, dtype)

    def __repr__(self) -> str:
        return f"ClientTail({self.info.model_id}, k_tail={self.num_layers}, {self.dtype})"

    def _modules_buffers(self) -> list[torch.Tensor]:
        return [*self.blocks.buffers(), *self.output.buffers()]

    def forward(
        self,
        hidden: torch.Tensor,
        cache: KVCache | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Decoders: logits [1, T, vocab] ([1, 1, vocab] with `last_only`) in float32.

        Encoders: the sentence embedding [1, H] (pooled, normalised if the checkpoint says so).
        """
        hidden = self.check_hidden(hidden)
        start_pos = self.check_position(hidden.shape[1], cache, start_pos)
        x = self.run(hidden, cache, start_pos)
        if last_only and self.info.is_decoder:
            x = x[:, -1:]
        with torch.no_grad():
            return self.output(x).float()


class LocalModel:
    """The whole model in one process: the single-machine reference for a distributed run."""

    def __init__(self, head: ClientHead, tail: ClientTail) -> None:
        self.head, self.tail = head, tail
        self.info = head.info

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> LocalModel:
        ckpt = _open(path)
        head = ClientHead(ckpt, ckpt.config.num_layers, dtype)
        return cls(head, ClientTail(ckpt, 0, dtype))

    def new_cache(self) -> KVCache | None:
        return self.head.new_cache()

    def forward(
        self,
        tokens: torch.Tensor | Sequence[int],
        cache: KVCache | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits [1, T, vocab] for decoders, a sentence embedding [1, H] for encoders."""
        hidden = self.head.forward(tokens, cache, start_pos)
        if last_only and self.info.is_decoder:
            hidden = hidden[:, -1:]
        with torch.no_grad():
            return self.tail.output(hidden).float()

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        sampler: Sampler | None = None,
        stop_ids: Sequence[int] = (),
    ) -> list[int]:
        """Generate with a KV cache (decoders only); returns the new token ids."""
        if not self.info.is_decoder:
            raise ModelError("generation needs a decoder model")
        cache = self.new_cache()

        def step(tokens: Sequence[int], pos: int) -> torch.Tensor:
            return self.forward(tokens, cache, pos, last_only=True)

        try:
            return generate(step, prompt, max_new_tokens, sampler, stop_ids)
        finally:
            if cache is not None:
                cache.erase()


def full_forward(
    path: str | Path, tokens: torch.Tensor | Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Load the whole model at `path` and run `tokens` through it (no cache)."""
    return LocalModel.load(path, dtype).forward(tokens)
