"""Building blocks shared by the model families: linear maps, norms, attention masks.

Weights are held as buffers (inference only, no autograd state). Attention uses
`torch.nn.functional.scaled_dot_product_attention` with an explicit boolean mask so that
prefill, cached decode steps and sliding windows share one code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x W^T + b with W stored as [out, in] (Hugging Face `nn.Linear` layout)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LayerNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32 like the reference."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def causal_mask(q_start: int, q_len: int, k_len: int, window: int | None = None) -> torch.Tensor:
    """Boolean [q_len, k_len] mask, True where query may attend to key.

    Queries sit at positions [q_start, q_start + q_len); keys at the k_len positions ending with
    the last query. With a sliding `window` a query sees only the `window` most recent keys,
    itself included.
    """
    q_pos = torch.arange(q_start, q_start + q_len).unsqueeze(1)
    k_pos = torch.arange(q_start + q_len - k_len, q_start + q_len).unsqueeze(0)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """q [1, heads, T, d], k/v [1, kv_heads, S, d] (grouped-query when kv_heads < heads)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_start: int,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of T queries at [q_start, q_start+T) over the S most recent keys.

    Takes the fused paths where the mask is implied: a prefill without a prefix (is_causal) and
    a single query that sees every key (no mask); otherwise an explicit boolean mask.
    """
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if window is None or window >= s:
        if t == s:
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=gqa
            )
        if t == 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    return attention(q, k, v, causal_mask(q_start, t, s, window), scale)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[1, T, heads*d] -> [1, heads, T, d]."""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[1, heads, T, d] -> [1, T, heads*d]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)
