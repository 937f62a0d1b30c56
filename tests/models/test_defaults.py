"""The shipped models: metadata, the deterministic random decoder, its tokenizer."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from p2pinfer.models import (
    LLAMA_108M,
    MINILM,
    SMOLLM2,
    TINY_LLAMA,
    LocalModel,
    ModelError,
    Tokenizer,
    default_model_path,
    default_models,
    load_model_info,
    minilm_path,
)
from p2pinfer.models.defaults import SMOLLM2_ZK, SMOLLM2_ZK_BLOCK0

# The tiny decoder's weights (names, dtypes, shapes, bytes): identical on every machine.
TINY_WEIGHTS_SHA256 = "5a9055b65debb8ccd6fc3ea660e49949e7402aa781ccfe21394a259b859fe84a"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return default_model_path(TINY_LLAMA, home=tmp_path_factory.mktemp("home"))


def test_default_models_say_which_weights_are_random():
    models = {m.name: m for m in default_models()}
    assert set(models) == {MINILM, SMOLLM2, TINY_LLAMA, LLAMA_108M, "p2pinfer-zk-mlp",
                           "p2pinfer-zk-llama", SMOLLM2_ZK, SMOLLM2_ZK_BLOCK0}
    assert models[SMOLLM2_ZK].random_weights is False and models[SMOLLM2_ZK].task == "critical"
    assert models[SMOLLM2].random_weights is False and models[SMOLLM2].task == "generation"
    assert models[MINILM].random_weights is False and models[MINILM].task == "embedding"
    assert models[TINY_LLAMA].random_weights is True and models[TINY_LLAMA].task == "generation"
    assert models[LLAMA_108M].random_weights is True
    assert models[LLAMA_108M].num_params >= 100_000_000


def test_metadata_parameter_counts_match_the_checkpoints(tiny):
    models = {m.name: m for m in default_models()}
    assert load_model_info(tiny).total_params == models[TINY_LLAMA].num_params
    assert load_model_info(minilm_path()).total_params == models[MINILM].num_params


@pytest.mark.parametrize("name", ["p2pinfer-zk-mlp", "p2pinfer-zk-llama", SMOLLM2_ZK])
def test_a_provable_builtin_is_listed_but_written_by_zk(tmp_path, name):
    """models lists the provable built-ins; their directory holds a committed manifest, which
    p2pinfer.zk.builtins writes (tests/critical/test_mlp_model.py), so models refuses them."""
    assert {m.name: m for m in default_models()}[name].task == "critical"
    with pytest.raises(ModelError, match="p2pinfer.zk.builtins.builtin_model_path"):
        default_model_path(name, home=tmp_path)
    assert not (tmp_path / name).exists()


def test_tiny_decoder_weights_are_pinned(tiny):
    from safetensors.numpy import load_file

    from p2pinfer.models.defaults import weights_digest

    assert weights_digest(load_file(str(tiny / "model.safetensors"))) == TINY_WEIGHTS_SHA256
    stamp = json.loads((tiny / "p2pinfer_default.json").read_text())
    assert stamp["random_weights"] is True
    assert stamp["weights_sha256"] == TINY_WEIGHTS_SHA256
    file_digest = hashlib.sha256((tiny / "model.safetensors").read_bytes()).hexdigest()
    assert stamp["sha256"]["model.safetensors"] == file_digest


def test_home_comes_from_the_environment(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("P2PINFER_HOME", str(tmp_path))
    path = default_model_path(TINY_LLAMA)
    assert path == tmp_path / "models" / TINY_LLAMA
    assert (path / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert default_model_path(TINY_LLAMA) == path  # second call reuses it


def test_tiny_decoder_info(tiny):
    info = load_model_info(tiny)
    assert info.name == TINY_LLAMA and info.model_id.startswith(TINY_LLAMA + "-")
    assert (info.num_layers, info.hidden_size, info.num_kv_heads) == (8, 256, 2)


def test_tiny_decoder_matches_transformers(tiny):
    transformers = pytest.importorskip("transformers")
    ref = transformers.LlamaForCausalLM.from_pretrained(tiny).eval()
    prompt = Tokenizer.load(tiny).encode("the quick brown fox jumps")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref_logits = ref(ids).logits
        ref_gen = ref.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    model = LocalModel.load(tiny)
    assert torch.allclose(model.forward(ids), ref_logits, atol=1e-4, rtol=0)
    assert model.generate(prompt, 6) == ref_gen[0, len(prompt) :].tolist()


def test_decoder_tokenizer_adds_no_special_tokens(tiny):
    tok = Tokenizer.load(tiny)
    ids = tok.encode("hello world")
    assert ids == [7592, 2088]
    assert tok.decode(ids) == "hello world"
    assert tok.eos_ids == (102,)


def test_unknown_default_model_is_a_model_error():
    with pytest.raises(ModelError, match="unknown default model"):
        default_model_path("gpt-5")


def test_minilm_path_is_inside_the_package():
    path = minilm_path()
    assert (path / "model.safetensors").is_file() and path.name == "model"
    assert default_model_path(MINILM) == path
