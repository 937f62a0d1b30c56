"""Tiny random Hugging Face checkpoints written with transformers: the reference for model tests."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)
try:
    transformers.utils.logging.disable_progress_bar()
except AttributeError:  # older transformers
    pass

VOCAB = 128
_COMMON = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}


def _configs() -> dict[str, object]:
    t = transformers
    return {
        "llama": t.LlamaConfig(
            **_COMMON,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            eos_token_id=None,
            bos_token_id=None,
        ),
        "llama3-rope": t.LlamaConfig(
            **_COMMON,
            num_key_value_heads=1,
            intermediate_size=96,
            max_position_embeddings=256,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            tie_word_embeddings=True,
            eos_token_id=None,
            bos_token_id=None,
        ),
        "qwen2": t.Qwen2Config(
            **_COMMON,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            eos_token_id=None,
            bos_token_id=None,
        ),
        "mistral": t.MistralConfig(
            **_COMMON,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=128,
            sliding_window=5,
            eos_token_id=None,
            bos_token_id=None,
        ),
        "gpt2": t.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=4,
            n_head=4,
            n_positions=128,
            eos_token_id=None,
            bos_token_id=None,
        ),
        "bert": t.BertConfig(
            **_COMMON,
            intermediate_size=96,
            max_position_embeddings=128,
        ),
    }


_MODEL_CLASSES = {
    "llama": "LlamaForCausalLM",
    "llama3-rope": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertModel",
}

DECODERS = ("llama", "llama3-rope", "qwen2", "mistral", "gpt2")
FAMILIES = (*DECODERS, "bert")


def build(name: str, root: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(sum(map(ord, name)))
    config = _configs()[name]
    model = getattr(transformers, _MODEL_CLASSES[name])(config).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so the tests see them.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname.lower() or "ln_" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = root / name
    model.save_pretrained(path)
    return path, model


def reference_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM, or the mean-pooled last hidden state of an encoder."""
    with torch.no_grad():
        out = model(ids)
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state.mean(dim=1)


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, n), generator=g)
