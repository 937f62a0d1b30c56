"""Checkpoint reading: model info, per-span loading, and clear errors for broken directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from p2pinfer.models import ClientHead, ClientTail, LayerSpan, ModelError, load_model_info
from p2pinfer.models import checkpoint as checkpoint_module
from tests.models.tiny_checkpoints import FAMILIES, random_ids, reference_output


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name", FAMILIES)
def test_model_info_describes_the_checkpoint(checkpoints, name):
    path, model = checkpoints[name]
    info = load_model_info(path)
    assert info.num_layers == 4
    assert info.hidden_size == 64
    assert info.vocab_size == 128
    assert info.max_positions == 128 or name == "llama3-rope"
    assert info.dtype == "float32"
    assert info.is_decoder == (name != "bert")
    assert len(info.layer_params) == 4 and len(set(info.layer_params)) == 1
    # The parameter count agrees with transformers' (minus BERT's unused pooler).
    ref = sum(p.numel() for n, p in model.named_parameters() if "pooler" not in n)
    assert info.total_params == ref


def test_model_id_is_stable_and_tracks_config(checkpoints, tmp_path):
    path, _ = checkpoints["llama"]
    first = load_model_info(path).model_id
    assert first == load_model_info(path).model_id
    assert first.startswith("llama-") and len(first.split("-")[-1]) == 12
    copy = _copy(path, tmp_path / "elsewhere")
    assert load_model_info(copy).model_id == first  # independent of the directory
    _edit_config(copy, rms_norm_eps=1e-5)
    assert load_model_info(copy).model_id != first


def test_sharded_checkpoint_loads_and_matches(sharded_llama, checkpoints):
    _, model = checkpoints["llama"]
    ids = random_ids(6)
    hidden = ClientHead.load(sharded_llama, 2).forward(ids)
    out = ClientTail.load(sharded_llama, 2).forward(hidden)
    assert torch.allclose(out, reference_output(model, ids), atol=1e-4, rtol=0)


def test_span_reads_only_its_own_layers(checkpoints, monkeypatch):
    path, _ = checkpoints["llama"]
    read: list[str] = []
    real_safe_open = checkpoint_module.safe_open

    class SpyOpen:
        def __init__(self, *args, **kwargs):
            self._inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self._f = self._inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def keys(self):
            return self._f.keys()

        def get_slice(self, key):
            return self._f.get_slice(key)

        def get_tensor(self, key):
            read.append(key)
            return self._f.get_tensor(key)

    monkeypatch.setattr(checkpoint_module, "safe_open", SpyOpen)
    span = LayerSpan.load(path, 2, 3)
    assert read and all(k.startswith("model.layers.2.") for k in read)
    assert sorted(read) == sorted(span.loaded_keys)


def test_param_bytes_grow_with_the_span(checkpoints):
    path, _ = checkpoints["gpt2"]
    info = load_model_info(path)
    one, three = LayerSpan.load(path, 0, 1), LayerSpan.load(path, 0, 3)
    assert one.param_bytes == 4 * info.layer_params[0]
    assert three.param_bytes == 3 * one.param_bytes
    assert LayerSpan.load(path, 0, 1, dtype=torch.float16).param_bytes == one.param_bytes // 2
    head = ClientHead.load(path, 0)
    assert head.param_bytes == 4 * info.embedding_params


def test_tied_lm_head_uses_the_embeddings(checkpoints):
    path, _ = checkpoints["qwen2"]
    tail = ClientTail.load(path, 0)
    assert "model.embed_tokens.weight" in tail.loaded_keys


def test_kv_bytes_per_token_counts_keys_and_values(checkpoints):
    info = load_model_info(checkpoints["llama"][0])
    assert info.kv_bytes_per_token(num_layers=3) == 3 * 2 * 2 * 16 * 4
    assert load_model_info(checkpoints["bert"][0]).kv_bytes_per_token(4) == 0


# -- bad input ---------------------------------------------------------------------------------


def test_missing_directory_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model_info(tmp_path / "nope")


def test_missing_config_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["llama"][0], tmp_path / "m")
    (copy / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json is missing"):
        load_model_info(copy)


def test_unreadable_config_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["llama"][0], tmp_path / "m")
    (copy / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        load_model_info(copy)


def test_missing_weights_are_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["llama"][0], tmp_path / "m")
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(ModelError, match="no \\*.safetensors weights"):
        load_model_info(copy)


def test_missing_shard_is_a_model_error(sharded_llama, tmp_path):
    copy = _copy(sharded_llama, tmp_path / "m")
    next(copy.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ModelError, match="is missing"):
        load_model_info(copy)


def test_unknown_family_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["llama"][0], tmp_path / "m")
    _edit_config(copy, model_type="mamba")
    with pytest.raises(ModelError, match="'mamba' is not supported"):
        load_model_info(copy)


def test_config_hidden_size_not_matching_weights_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["gpt2"][0], tmp_path / "m")
    _edit_config(copy, n_embd=32)
    with pytest.raises(ModelError, match="does not match the weights"):
        load_model_info(copy)


def test_config_with_fewer_layers_than_weights_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["bert"][0], tmp_path / "m")
    _edit_config(copy, num_hidden_layers=3)
    with pytest.raises(ModelError, match="says 3 layers"):
        load_model_info(copy)


def test_config_with_more_layers_than_weights_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["qwen2"][0], tmp_path / "m")
    _edit_config(copy, num_hidden_layers=5)
    with pytest.raises(ModelError, match="model.layers.4.* is missing"):
        load_model_info(copy)


def test_missing_tensor_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["llama"][0], tmp_path / "m")
    tensors = load_file(copy / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, copy / "model.safetensors")
    with pytest.raises(ModelError, match="lm_head.weight is missing"):
        load_model_info(copy)


def test_corrupt_weight_file_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["gpt2"][0], tmp_path / "m")
    (copy / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model_info(copy)


def test_unsupported_rope_type_is_a_model_error(checkpoints, tmp_path):
    copy = _copy(checkpoints["llama"][0], tmp_path / "m")
    _edit_config(copy, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(ModelError, match="yarn"):
        load_model_info(copy)


@pytest.mark.parametrize("start, end", [(-1, 2), (2, 2), (3, 5), (3, 1)])
def test_span_outside_the_model_is_a_model_error(checkpoints, start, end):
    with pytest.raises(ModelError):
        LayerSpan.load(checkpoints["llama"][0], start, end)


def test_head_and_tail_bounds_are_checked(checkpoints):
    path = checkpoints["llama"][0]
    with pytest.raises(ModelError):
        ClientHead.load(path, 5)
    with pytest.raises(ModelError):
        ClientTail.load(path, -1)


def test_unsupported_dtype_is_a_model_error(checkpoints):
    with pytest.raises(ModelError, match="dtype"):
        LayerSpan.load(checkpoints["llama"][0], 0, 1, dtype=torch.int8)


def test_slice_of_a_span_shares_weights_and_computes_its_layers(checkpoints):
    path, _ = checkpoints["llama"]
    span = LayerSpan.load(path, 0, 4)
    part = span.slice(1, 3)
    assert (part.start, part.end, part.num_layers) == (1, 3, 2)
    assert part.blocks[0] is span.blocks[1]
    x = torch.randn(1, 5, 64)
    expected = LayerSpan.load(path, 1, 3).forward(x)
    assert torch.allclose(part.forward(x, part.new_cache(), 0), expected, atol=1e-6, rtol=0)
    assert span.slice(0, 4) is span
    with pytest.raises(ModelError):
        span.slice(2, 5)


def test_span_params_sum_the_layers(checkpoints):
    info = load_model_info(checkpoints["mistral"][0])
    assert info.span_params(1, 3) == 2 * info.layer_params[0]


def test_missing_tokenizer_is_a_model_error(checkpoints):
    from p2pinfer.models import Tokenizer

    with pytest.raises(ModelError, match="tokenizer.json is missing"):
        Tokenizer.load(checkpoints["llama"][0])


def test_generation_needs_a_decoder(checkpoints):
    from p2pinfer.models import LocalModel

    with pytest.raises(ModelError, match="decoder"):
        LocalModel.load(checkpoints["bert"][0]).generate([1, 2], 3)


def test_weights_digest_tracks_a_spans_stored_weights(checkpoints, tmp_path):
    from p2pinfer.models import weights_digest

    path, _ = checkpoints["llama"]
    digest = weights_digest(path, 1, 3)
    assert digest.startswith("sha256:") and digest == weights_digest(path, 1, 3)
    assert digest != weights_digest(path, 1, 2) and digest != weights_digest(path, 0, 2)
    copy = _copy(path, tmp_path / "copy")
    tensors = load_file(copy / "model.safetensors")
    tensors["model.layers.2.mlp.up_proj.weight"][0, 0] += 1.0
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    assert weights_digest(copy, 1, 2) == weights_digest(path, 1, 2)  # layer 1 untouched
    assert weights_digest(copy, 1, 3) != digest
    with pytest.raises(ModelError):
        weights_digest(path, 2, 9)
