"""Per-session key/value caches for decoder spans.

One `KVCache` holds the keys and values of every layer of one span (or head, or tail) for one
session, batch 1. Storage is preallocated and grows by doubling up to the model's maximum
length, so a one-token decode step costs no reallocation. `erase()` overwrites the tensors with
zeros before dropping them: a session's activations are data the requester wants gone.

Layout per layer: keys and values as [1, num_kv_heads, capacity, head_dim].
"""

from __future__ import annotations

import torch

from p2pinfer.models.errors import CacheError

_INITIAL_CAPACITY = 64


class KVCache:
    """Keys and values of `num_layers` decoder layers for one sequence (batch 1)."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_layers < 0 or num_kv_heads <= 0 or head_dim <= 0 or max_length <= 0:
            raise CacheError("cache dimensions must be positive")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.max_length = max_length
        self.dtype = dtype
        self._length = 0
        self._capacity = 0
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={self.num_layers}, length={self._length}, "
            f"capacity={self._capacity}, nbytes={self.nbytes})"
        )

    @property
    def length(self) -> int:
        """Number of positions held (the next token's position)."""
        return self._length

    @property
    def nbytes(self) -> int:
        """Bytes of tensor storage currently allocated (capacity, not just length)."""
        return sum(t.numel() * t.element_size() for t in (*self._keys, *self._values))

    def reserve(self, new_length: int) -> None:
        """Make room for `new_length` positions; raises `CacheError` past `max_length`."""
        if new_length > self.max_length:
            raise CacheError(
                f"sequence of {new_length} positions exceeds the model maximum {self.max_length}"
            )
        if new_length <= self._capacity:
            return
        capacity = max(_INITIAL_CAPACITY, self._capacity)
        while capacity < new_length:
            capacity *= 2
        capacity = min(capacity, self.max_length)
        shape = (1, self.num_kv_heads, capacity, self.head_dim)
        for store in (self._keys, self._values):
            for i in range(self.num_layers):
                grown = torch.zeros(shape, dtype=self.dtype)
                if store and i < len(store):
                    grown[:, :, : self._length] = store[i][:, :, : self._length]
                    store[i].zero_()
                    store[i] = grown
                else:
                    store.append(grown)
        self._capacity = capacity

    def write(
        self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `keys`/`values` [1, kv_heads, T, head_dim] at `start`; return views of [0, start+T).

        Used by the layers during a forward pass; the new length takes effect with `commit`.
        """
        end = start + keys.shape[2]
        if end > self._capacity:
            raise CacheError("cache.reserve() was not called before write()")
        self._keys[layer][:, :, start:end] = keys
        self._values[layer][:, :, start:end] = values
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of layer `layer`'s keys and values for the committed positions."""
        if not 0 <= layer < self.num_layers:
            raise CacheError(f"no layer {layer} in this cache")
        if not self._keys:
            empty = torch.zeros((1, self.num_kv_heads, 0, self.head_dim), dtype=self.dtype)
            return empty, empty
        end = self._length
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def commit(self, new_length: int) -> None:
        """Record that positions [0, new_length) now hold valid keys and values."""
        self._length = new_length

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (zeroing them), e.g. to replay after a failure."""
        if not 0 <= length <= self._length:
            raise CacheError(f"cannot truncate a cache of length {self._length} to {length}")
        for t in (*self._keys, *self._values):
            t[:, :, length : self._length].zero_()
        self._length = length

    def reset(self) -> None:
        """Forget every position, keeping the allocated storage."""
        self.truncate(0)

    def erase(self) -> None:
        """Zero every tensor, then free them. The cache is empty and reusable afterwards."""
        for t in (*self._keys, *self._values):
            t.zero_()
        self._keys.clear()
        self._values.clear()
        self._length = 0
        self._capacity = 0
