"""Shared fixtures: Ed25519 identities and tiny random Llama-style stages."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NETWORK = "testnet"


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


def build_stage(seed: int, hidden: int = 128, layers: int = 4) -> torch.nn.Module:
    """A random Llama decoder stack whose output is the residual stream (no final norm)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=hidden * 3,
        num_hidden_layers=layers, num_attention_heads=hidden // 32, num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).model.eval()
    model.norm = torch.nn.Identity()
    return model


def keep_layers(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    clone = copy.deepcopy(model)
    clone.layers = torch.nn.ModuleList([clone.layers[i] for i in keep])
    for index, layer in enumerate(clone.layers):
        layer.self_attn.layer_idx = index
    clone.config.num_hidden_layers = len(keep)
    return clone


def int8_weights(model: torch.nn.Module) -> torch.nn.Module:
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for module in clone.layers.modules():
            if isinstance(module, torch.nn.Linear):
                scale = module.weight.abs().amax(dim=1, keepdim=True) / 127.0
                module.weight.copy_((module.weight / scale).round().clamp(-127, 127) * scale)
    return clone


def run_prefill(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).last_hidden_state[:1].float()


def run_decode(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Prefill half the tokens, then decode the rest one at a time with the KV cache."""
    half = ids.shape[1] // 2
    with torch.no_grad():
        out = model(ids[:, :half], use_cache=True)
        parts, cache = [out.last_hidden_state], out.cache
        for i in range(half, ids.shape[1]):
            out = model(ids[:, i:i + 1], cache=cache, use_cache=True)
            parts.append(out.last_hidden_state)
            cache = out.cache
    return torch.cat(parts, dim=1).float()


@pytest.fixture(scope="session")
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
