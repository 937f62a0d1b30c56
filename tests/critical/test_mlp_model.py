"""The provable MLP model format: float spans, fixed-point layers, the owner's manifest."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from p2pinfer.models import (
    MINILM,
    ClientHead,
    ClientTail,
    LayerSpan,
    LocalModel,
    ModelError,
    default_models,
    load_model_info,
    minilm_path,
    mlp,
)
from p2pinfer.models.mlp import ZK_LLAMA, ZK_MLP, zk_mlp_config
from p2pinfer.zk import CommitmentMismatch, ModelManifest, ProofBinding, prove, verify
from p2pinfer.zk.attention import AttentionShape
from p2pinfer.zk.checkpoint import (
    MANIFEST_FILE,
    builtin_model_path,
    commit_layers,
    fixed_layers,
    is_provable,
    load_manifest_bytes,
    write_committed_mlp,
)
from p2pinfer.zk.fixed import (
    ACTIVATIONS,
    RMS_EPS_MAX,
    RMS_EPS_MIN,
    RMS_EPS_SCALE_BITS,
    rms_eps_units,
    uses_table,
)
from p2pinfer.zk.tables import LOOKUP_RANGE_BITS, MAX_LOOKUP_FRAC_BITS, MAX_LOOKUP_RANGE_BITS

from .conftest import small_mlp


def test_head_spans_and_tail_compose_to_the_whole_model(mlp_dir):
    x = torch.randn(1, 3, 32)
    whole = LocalModel.load(mlp_dir).forward(x)
    h = ClientHead.load(mlp_dir, 1).forward(x)
    h = LayerSpan.load(mlp_dir, 1, 3).forward(h)
    h = LayerSpan.load(mlp_dir, 3, 5).forward(h)
    out = ClientTail.load(mlp_dir, 1).forward(h)
    assert torch.allclose(out, whole, atol=1e-5)
    assert out.shape == (1, 3, 32)


def test_head_refuses_token_ids_for_a_feature_model(mlp_dir):
    with pytest.raises(ModelError):
        ClientHead.load(mlp_dir, 1).forward([1, 2, 3])


def test_fixed_point_forward_tracks_the_float_model(mlp_dir):
    x = np.random.default_rng(1).normal(size=(4, 32))
    fixed = fixed_layers(mlp_dir, 0, 6)
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(x)))
    ref = LocalModel.load(mlp_dir).forward(torch.from_numpy(x).float()[None])[0].numpy()
    assert np.abs(y - ref).max() < 0.1 * max(1.0, np.abs(ref).max())


def test_any_sub_span_binds_to_the_manifest_and_proves(mlp_dir):
    manifest = ModelManifest.from_bytes(load_manifest_bytes(mlp_dir))
    shard = commit_layers(mlp_dir, 2, 5)
    x = fixed_layers(mlp_dir, 0, 2).forward_fixed(
        fixed_layers(mlp_dir, 0, 1).quantize(np.ones((2, 32))))
    y = shard.forward_fixed(x)
    binding = ProofBinding(b"\x01" * 16, manifest.digest())
    verify(manifest.shard(2, 5), x, y, prove(shard, x, y, binding), binding)


def test_weights_of_another_owner_do_not_bind_to_the_manifest(mlp_dir, other_mlp_dir, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(mlp_dir, mixed)
    (mixed / MANIFEST_FILE).write_bytes((other_mlp_dir / MANIFEST_FILE).read_bytes())
    with pytest.raises(CommitmentMismatch):
        commit_layers(mixed, 0, 2)


def test_a_missing_manifest_is_a_model_error(mlp_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(mlp_dir, bare)
    (bare / MANIFEST_FILE).unlink()
    with pytest.raises(ModelError, match="manifest"):
        load_manifest_bytes(bare)


@pytest.mark.parametrize("act", ["gelu", "silu", "swiglu", "geglu"])
def test_a_lookup_activation_model_runs_in_float_and_in_fixed_point_alike(tmp_path, act):
    model = tmp_path / act
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-mlp-gelu-model", layers=6, hidden=32,
                                             activation=act))
    x = np.random.default_rng(2).normal(size=(4, 32))
    fixed = fixed_layers(model, 0, 6)
    assert [layer.activation for layer in fixed.layers] == [act] * 5 + ["identity"]
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(x)))
    ref = LocalModel.load(model).forward(torch.from_numpy(x).float()[None])[0].numpy()
    assert np.abs(y - ref).max() < 0.1 * max(1.0, np.abs(ref).max())
    relu = LocalModel.load(small_mlp(tmp_path / "relu", name="zk-mlp-gelu-model"))
    assert not np.allclose(relu.forward(torch.from_numpy(x).float()[None])[0].numpy(), ref)
    cfg = json.loads((model / "config.json").read_text())
    cfg["frac_bits"] = 12  # no lookup table that fine
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="frac_bits <= 10"):
        LayerSpan.load(model, 0, 1)


def test_a_llama_mlp_block_model_is_two_proven_layers_per_config_layer(tmp_path):
    model = tmp_path / "block"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-mlp-block", layers=4, hidden=32,
                                             activation="swiglu-mlp", intermediate=64))
    x = np.random.default_rng(2).normal(size=(3, 32))
    fixed = fixed_layers(model, 0, 4)
    assert [(la.activation, la.skip) for la in fixed.layers] == [
        ("swiglu", 0), ("identity", 1)] * 3 + [("identity", 0)]
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(x)))
    ref = LocalModel.load(model).forward(torch.from_numpy(x).float()[None])[0].numpy()
    assert np.abs(y - ref).max() < 0.1 * max(1.0, np.abs(ref).max())
    manifest = ModelManifest.from_bytes((model / MANIFEST_FILE).read_bytes())
    assert manifest.blocks() == [(0, 2), (2, 4), (4, 6), (6, 7)]
    shard = commit_layers(model, 1, 3)  # config layers 1..2: proven layers 2..5
    assert shard.commitment.first_layer == 2 and len(shard.commitment.layers) == 4
    assert shard.commitment == manifest.block_shard(1, 3)
    cfg = json.loads((model / "config.json").read_text())
    cfg["residual"] = [True, False, False, False]
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="adds its input itself"):
        LayerSpan.load(model, 0, 1)


def test_a_llama_mlp_half_is_norm_gated_and_down_with_the_residual_over_all_three(tmp_path):
    model = tmp_path / "llama-mlp"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-llama-mlp", layers=3, hidden=32,
                                             activation="llama-mlp", intermediate=64))
    x = np.random.default_rng(3).normal(size=(3, 32))
    fixed = fixed_layers(model, 0, 3)
    assert [(la.activation, la.skip) for la in fixed.layers] == [
        ("rmsnorm", 0), ("swiglu", 0), ("identity", 2)] * 2 + [("identity", 0)]
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(x)))
    ref = LocalModel.load(model).forward(torch.from_numpy(x).float()[None])[0].numpy()
    assert np.abs(y - ref).max() < 0.1 * max(1.0, np.abs(ref).max())
    manifest = ModelManifest.from_bytes((model / MANIFEST_FILE).read_bytes())
    assert manifest.blocks() == [(0, 3), (3, 6), (6, 7)]
    shard = commit_layers(model, 1, 3)
    assert shard.commitment == manifest.block_shard(1, 3)
    xq = fixed.quantize(x)
    binding = ProofBinding(b"t", manifest.digest())
    inner = fixed_layers(model, 0, 1).forward_fixed(xq)
    out = shard.forward_fixed(inner)
    verify(manifest.block_shard(1, 3), inner, out, prove(shard, inner, out, binding), binding)


def test_a_llama_model_is_attention_and_mlp_halves_of_three_proven_layers_each(tmp_path):
    model = tmp_path / "llama"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-llama", layers=5, hidden=32, activation="llama",
                                             intermediate=64, heads=4, kv_heads=2))
    fixed = fixed_layers(model, 0, 5)
    assert [(la.activation, la.skip) for la in fixed.layers] == [
        ("rmsnorm", 0), ("attention", 0), ("identity", 2),
        ("rmsnorm", 0), ("swiglu", 0), ("identity", 2)] * 2 + [("identity", 0)]
    attn = fixed.layers[1]
    assert (attn.heads, attn.kv_heads, attn.rope) == (4, 2, 10000)
    x = np.random.default_rng(5).normal(size=(6, 32))
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(x)))
    ref = LocalModel.load(model).forward(torch.from_numpy(x).float()[None])[0].numpy()
    assert np.abs(y - ref).max() < 0.1 * max(1.0, np.abs(ref).max())
    # causal: the float model's first tokens do not see the later ones
    x2 = x.copy()
    x2[4:] += 1.0
    ref2 = LocalModel.load(model).forward(torch.from_numpy(x2).float()[None])[0].numpy()
    assert np.allclose(ref2[:4], ref[:4], atol=1e-5)
    manifest = ModelManifest.from_bytes((model / MANIFEST_FILE).read_bytes())
    assert manifest.blocks() == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 13)]
    shard = commit_layers(model, 2, 4)  # an attention half, then an MLP half
    assert shard.commitment == manifest.block_shard(2, 4)
    xq = fixed.quantize(x)
    inner = fixed_layers(model, 0, 2).forward_fixed(xq)
    out = shard.forward_fixed(inner)
    binding = ProofBinding(b"t", manifest.digest())
    verify(manifest.block_shard(2, 4), inner, out, prove(shard, inner, out, binding), binding)


def test_a_llama_model_takes_its_rms_norm_eps_in_float_and_in_fixed_point(tmp_path):
    model = tmp_path / "llama-eps"
    model.mkdir()
    write_committed_mlp(model, {**zk_mlp_config("zk-llama-eps", layers=3, hidden=32,
                                                activation="llama", intermediate=64),
                                "rms_norm_eps": 1e-5})
    fixed = fixed_layers(model, 0, 3)
    assert [la.eps for la in fixed.layers if la.activation == "rmsnorm"] == [42950, 42950]
    manifest = ModelManifest.from_bytes((model / MANIFEST_FILE).read_bytes())
    assert manifest.layers[0].eps == 42950
    x = np.random.default_rng(6).normal(size=(4, 32))
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(x)))
    ref = LocalModel.load(model).forward(torch.from_numpy(x).float()[None])[0].numpy()
    assert np.abs(y - ref).max() < 0.1 * max(1.0, np.abs(ref).max())
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-12}))
    with pytest.raises(ModelError, match="rms_norm_eps"):
        LayerSpan.load(model, 0, 1)


@pytest.mark.parametrize("change, match", [({"num_attention_heads": 3}, "powers of two"),
                                           ({"num_key_value_heads": 8}, "dividing"),
                                           ({"rope_theta": 1.5}, "whole number"),
                                           ({"rope_theta": 1}, "rope")])
def test_a_llama_config_with_an_unprovable_attention_shape_is_refused(tmp_path, change, match):
    model = tmp_path / "llama"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-llama-bad", layers=2, hidden=16,
                                             activation="llama", heads=4))
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ModelError, match=match):
        LayerSpan.load(model, 0, 1)


def test_a_gated_layer_needs_its_double_width_weight(tmp_path):
    """A config that turns a square layer into a gated one no longer matches the weights."""
    model = small_mlp(tmp_path / "square", name="zk-mlp-square")
    cfg = json.loads((model / "config.json").read_text())
    cfg["activations"] = ["swiglu"] * 5 + ["identity"]
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not match the weights"):
        LayerSpan.load(model, 0, 1)


def test_a_config_with_the_wrong_number_of_activations_is_refused(mlp_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(mlp_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["activations"] = ["relu"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="activations"):
        LayerSpan.load(bad, 0, 1)


def test_is_provable_tells_mlp_models_from_others(mlp_dir, tmp_path):
    assert is_provable(mlp_dir)
    assert not is_provable(tmp_path)


def test_the_provable_llama_is_written_once_with_its_parameter_count(tmp_path):
    models = {m.name: m for m in default_models()}
    path = builtin_model_path(ZK_LLAMA, home=tmp_path)
    assert load_model_info(path).total_params == models[ZK_LLAMA].num_params
    assert models[ZK_LLAMA].task == "critical"
    manifest = (path / MANIFEST_FILE).read_bytes()
    assert builtin_model_path(ZK_LLAMA, home=tmp_path) == path
    assert (path / MANIFEST_FILE).read_bytes() == manifest  # not committed again


def test_other_builtins_resolve_as_models_resolves_them():
    assert builtin_model_path(MINILM) == minilm_path()
    with pytest.raises(ModelError, match="unknown default model"):
        builtin_model_path("gpt-5")


def test_the_model_formats_fixed_point_limits_are_zks():
    """models/mlp.py refuses on load what zk cannot prove, with its own copy of zk's limits."""
    assert mlp.TABLE_MAX_FRAC_BITS == MAX_LOOKUP_FRAC_BITS
    assert (mlp.TABLE_RANGE_BITS_DEFAULT, mlp.TABLE_RANGE_BITS_MAX) == (
        LOOKUP_RANGE_BITS, MAX_LOOKUP_RANGE_BITS)
    assert {a for a in mlp.TABLE_ACTIVATIONS if a != mlp.ATTENTION} == {
        a for a in ACTIVATIONS if uses_table(a) and a != "attention"}
    assert (mlp.RMS_EPS_UNITS_BITS, mlp.RMS_EPS_UNITS_MIN, mlp.RMS_EPS_UNITS_MAX) == (
        RMS_EPS_SCALE_BITS, RMS_EPS_MIN, RMS_EPS_MAX)
    for eps in (2.0 ** -31, 2.0 ** -30, 1e-6, 1.0, 1.5):
        try:
            rms_eps_units(eps)
            ok = True
        except ValueError:
            ok = False
        units = round(eps * (1 << mlp.RMS_EPS_UNITS_BITS))
        assert ok == (mlp.RMS_EPS_UNITS_MIN <= units <= mlp.RMS_EPS_UNITS_MAX)
    for d, heads, kv, theta in itertools.product((1, 2, 12, 16), (1, 2, 3, 4, 32), (1, 2, 4),
                                                (0, 1, 2, 10000, 1 << 32)):
        assert mlp.attention_shape_problem(d, heads, kv, theta) == AttentionShape(
            d, heads, kv, theta).check()


def test_builtin_zk_mlp_is_written_once_with_its_manifest(tmp_path):
    path = builtin_model_path(ZK_MLP, home=tmp_path)
    digest = ModelManifest.from_bytes(load_manifest_bytes(path)).digest()
    assert builtin_model_path(ZK_MLP, home=tmp_path) == path
    assert ModelManifest.from_bytes(load_manifest_bytes(path)).digest() == digest
    span = LayerSpan.load(path, 0, 6)
    assert (span.info.num_layers, span.info.hidden_size) == (6, 256)
    blinds = list((path / "zk").iterdir())
    assert len(blinds) == 6 and all(f.stat().st_mode & 0o077 == 0 for f in blinds)


def test_builtin_weights_are_the_same_on_every_machine(tmp_path):
    a = fixed_layers(small_mlp(tmp_path / "a", name="same"), 0, 6)
    b = fixed_layers(small_mlp(tmp_path / "b", name="same"), 0, 6)
    assert a.weights_digest() == b.weights_digest()


def test_a_stage_without_the_owners_blindings_does_not_serve_critical_tasks(mlp_dir, tmp_path):
    from p2pinfer.inference.critical import CriticalRunner, critical_runner

    bare = tmp_path / "no-blinds"
    shutil.copytree(mlp_dir, bare)
    shutil.rmtree(bare / "zk")
    assert critical_runner(None, LayerSpan.load(bare, 1, 3), bare) is None
    runner = critical_runner(None, LayerSpan.load(mlp_dir, 1, 3), mlp_dir)
    assert isinstance(runner, CriticalRunner) and (runner.start, runner.end) == (1, 3)


def test_a_non_provable_model_gets_no_critical_runner(tmp_path, mlp_dir):
    from p2pinfer.inference.critical import critical_runner

    assert critical_runner(None, LayerSpan.load(mlp_dir, 1, 3), tmp_path) is None
