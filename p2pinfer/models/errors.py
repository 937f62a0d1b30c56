"""Errors raised by `p2pinfer.models`.

`ModelError` covers everything about a checkpoint on disk (missing directory, weights, unknown
family, config that disagrees with the weights). `SpanInputError` is raised when a caller (often
on behalf of a remote peer) hands a span a tensor of the wrong shape, dtype or position, and
`CacheError` when a KV cache does not belong to the span or is out of step with the position.
"""

from __future__ import annotations

from p2pinfer.errors import P2PInferError


class ModelError(P2PInferError):
    """A model directory, config or weight file is missing, unsupported or inconsistent."""


class SpanInputError(ModelError):
    """An input to a head, span or tail has the wrong type, shape, dtype, length or position."""


class CacheError(ModelError):
    """A KV cache does not fit the span it is used with, or is out of step with `start_pos`."""
