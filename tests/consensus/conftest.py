"""Shared fixtures: Ed25519 identities and tiny random Llama-style stages.

The stages are a few lines of plain torch (RMSNorm, rotary grouped-query attention with a KV
cache, SwiGLU), so the tests do not pay for importing transformers; the calibration tool uses
transformers' Llama instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NETWORK = "testnet"


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests run: on busy shared cores a second OpenMP thread
    mostly waits. The thread-count test sets 2 threads itself. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Peer:
    peer_id: str
    key: Ed25519PrivateKey


def make_peer(index: int) -> Peer:
    seed = bytes([index + 1]) * 32
    return Peer(f"peer-{index}", Ed25519PrivateKey.from_private_bytes(seed))


@pytest.fixture(scope="session")
def peers() -> list[Peer]:
    return [make_peer(i) for i in range(8)]


@pytest.fixture(scope="session")
def keys(peers: list[Peer]) -> dict:
    return {p.peer_id: p.key.public_key() for p in peers}


class Block(torch.nn.Module):
    """One Llama decoder layer: RMSNorm, rotary grouped-query attention, SwiGLU MLP."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, inner: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, hidden // heads
        self.attn_norm = torch.nn.RMSNorm(hidden, eps=1e-5)
        self.q = torch.nn.Linear(hidden, hidden, bias=False)
        self.k = torch.nn.Linear(hidden, kv_heads * self.dim, bias=False)
        self.v = torch.nn.Linear(hidden, kv_heads * self.dim, bias=False)
        self.o = torch.nn.Linear(hidden, hidden, bias=False)
        self.mlp_norm = torch.nn.RMSNorm(hidden, eps=1e-5)
        self.gate = torch.nn.Linear(hidden, inner, bias=False)
        self.up = torch.nn.Linear(hidden, inner, bias=False)
        self.down = torch.nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor, start: int, cache: list | None) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(b, t, self.heads, self.dim).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
        q, k = _rotate(q, start), _rotate(k, start)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / self.dim**0.5
        total = k.shape[2]
        rows = torch.arange(start, start + t).unsqueeze(1)
        scores = scores.masked_fill(torch.arange(total).unsqueeze(0) > rows, float("-inf"))
        attended = (scores.float().softmax(-1).to(v.dtype) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(attended)
        h = self.mlp_norm(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def _rotate(x: torch.Tensor, start: int) -> torch.Tensor:
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(start, start + x.shape[2], dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Stage(torch.nn.Module):
    """Embedding plus decoder layers of a random Llama-style model; output is the residual."""

    def __init__(self, seed: int, hidden: int = 128, layers: int = 4, vocab: int = 256) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.layers = torch.nn.ModuleList(
            [Block(hidden, hidden // 32, 2, hidden * 3) for _ in range(layers)]
        )
        for module in self.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor, start: int = 0, caches: list | None = None):
        x = self.embed(ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, start, caches[index] if caches is not None else None)
        return x


def build_stage(seed: int) -> Stage:
    return Stage(seed).eval()


def keep_layers(model: Stage, keep: list[int]) -> Stage:
    clone = copy.deepcopy(model)
    clone.layers = torch.nn.ModuleList([clone.layers[i] for i in keep])
    return clone


def int8_weights(model: Stage) -> Stage:
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for module in clone.layers.modules():
            if isinstance(module, torch.nn.Linear):
                scale = module.weight.abs().amax(dim=1, keepdim=True) / 127.0
                module.weight.copy_((module.weight / scale).round().clamp(-127, 127) * scale)
    return clone


def run_prefill(model: Stage, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[:1].float()


def run_decode(model: Stage, ids: torch.Tensor) -> torch.Tensor:
    """Prefill half the tokens, then decode the rest one at a time with the KV cache."""
    half = ids.shape[1] // 2
    caches: list = [[] for _ in model.layers]
    with torch.no_grad():
        parts = [model(ids[:, :half], 0, caches)]
        for i in range(half, ids.shape[1]):
            parts.append(model(ids[:, i:i + 1], i, caches))
    return torch.cat(parts, dim=1).float()


@pytest.fixture(scope="package")
def stages() -> dict[int, dict[str, torch.nn.Module]]:
    """Per model seed: the honest stage and its substitutes."""
    result = {}
    for seed in (1, 2, 3):
        base = build_stage(seed)
        result[seed] = {
            "f32": base,
            "bf16": copy.deepcopy(base).to(torch.bfloat16),
            "other": build_stage(seed + 100),
            "skipped": keep_layers(base, [0, 1, 3]),
            "half": keep_layers(base, [0, 1]),
            "int8": int8_weights(base),
        }
    return result
