"""A p2pinfer-mlp checkpoint (p2pinfer.models.mlp) as provable fixed-point layers, its owner's
manifest, and the built-in provable models.

Spec: protocols/critical.md (what a critical-mode stage proves, and the manifest's blocks: one
config layer is one block of one to three proven layers) and protocols/zk-proof.md, "Model
manifest". Beside `config.json` and `model.safetensors` a model directory holds the owner's
published manifest `zk-manifest.bin` (ModelManifest bytes: per-layer Hyrax weight commitments)
and, on serving peers, `zk/`, the owner's commitment caches with the secret row blindings
(mode 0600); a requester needs only config.json and the manifest.

The built-ins `p2pinfer-zk-mlp` and `p2pinfer-zk-llama` are written with seeded random weights
(the same on every machine) and committed on first use into `$P2PINFER_HOME/models/<name>`. The
commitments' blindings come from the OS CSPRNG, so each machine that writes the model publishes
its own manifest (peers of one network share the directory, as they would share a real owner's
release).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from p2pinfer.models.checkpoint import Checkpoint
from p2pinfer.models.defaults import PROVABLE, STAMP_FILE, default_model_path, write_once
from p2pinfer.models.errors import ModelError
from p2pinfer.models.mlp import (
    ATTENTION,
    BLOCKS,
    GATES,
    MODEL_TYPE,
    NORMED,
    ZK_LLAMA,
    MlpConfig,
    write_random_mlp,
    zk_llama_config,
    zk_mlp_config,
)

from .attention import AttentionShape
from .commitment import CommittedShard, commit_shard
from .fixed import FixedLayer, ProvableMlp
from .manifest import ModelManifest, ShardCommitment

MANIFEST_FILE = "zk-manifest.bin"
COMMIT_DIR = "zk"
MAX_MANIFEST_BYTES = 64 << 20
_FORMAT_VERSION = 1  # of the built-ins' directories (their stamp file)


def is_provable(path: str | Path) -> bool:
    """Whether `path` holds a p2pinfer-mlp model (config only; nothing is loaded)."""
    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("model_type") == MODEL_TYPE


def load_manifest_bytes(path: str | Path) -> bytes:
    """The owner's published manifest of the model at `path` (raw bytes)."""
    file = Path(path) / MANIFEST_FILE
    try:
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{file} is larger than {MAX_MANIFEST_BYTES} bytes")
        return file.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: no {MANIFEST_FILE}: the model owner's manifest is missing "
                         "(critical mode needs it)") from None


def _config(path: Path) -> MlpConfig:
    cfg = Checkpoint(path).config
    if not isinstance(cfg, MlpConfig):
        raise ModelError(f"{path} is not a {MODEL_TYPE} model")
    return cfg


def fixed_layers(path: str | Path, start: int, end: int) -> ProvableMlp:
    """Layers [start, end) of the model at `path` as a fixed-point ProvableMlp."""

    ckpt = Checkpoint(path)
    cfg = ckpt.config
    if not isinstance(cfg, MlpConfig):
        raise ModelError(f"{path} is not a {MODEL_TYPE} model")
    if not 0 <= start < end <= cfg.num_layers:
        raise ModelError(f"layers [{start}, {end}) are outside the model's {cfg.num_layers}")
    pairs: list[tuple] = []
    acts: list[str] = []
    res: list[bool] = []
    skip: list[int] = []
    for i in range(start, end):
        w = ckpt.load(ckpt.layer_keys(i), torch.float64)
        act = cfg.activations[i]
        if act == ATTENTION:  # the norm, the attention (q | k | v), then o with skip 2
            shape = AttentionShape(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                                   cfg.rope_theta)
            h, kv = cfg.hidden_size, shape.kv_width
            weight, bias = w["weight"].numpy().T, w["bias"].numpy()
            pairs += [(w["norm.weight"].numpy()[None], None, cfg.rms_norm_eps),
                      (weight[:, :h], bias[:h], weight[:, h:h + kv], bias[h:h + kv],
                       weight[:, h + kv:], bias[h + kv:], shape),
                      (w["o.weight"].numpy().T, w["o.bias"].numpy())]
            acts += ["rmsnorm", "attention", "identity"]
            res += [False, False, True]
            skip += [0, 0, 2]
            continue
        if act in BLOCKS:  # (W_u, b_u, W_g, b_g), then the down projection with skip 1
            ff = cfg.intermediate_size
            weight, bias = w["weight"].numpy().T, w["bias"].numpy()
            normed = act in NORMED
            if normed:  # the RMSNorm first; from_float sees its gain as a (1, h) "weight"
                pairs.append((w["norm.weight"].numpy()[None], None, cfg.rms_norm_eps))
                acts.append("rmsnorm")
                res.append(False)
                skip.append(0)
            pairs += [(weight[:, :ff], bias[:ff], weight[:, ff:], bias[ff:]),
                      (w["down.weight"].numpy().T, w["down.bias"].numpy())]
            acts += [BLOCKS[act], "identity"]
            res += [False, True]
            skip += [0, 2 if normed else 1]
            continue
        weight, bias = w["weight"].numpy().T, w["bias"].numpy()
        if act in GATES:  # (W_u, b_u, W_g, b_g)
            h = cfg.hidden_size
            pairs.append((weight[:, :h], bias[:h], weight[:, h:], bias[h:]))
        else:
            pairs.append((weight, bias))
        acts.append(act)
        res.append(cfg.residual[i])
        skip.append(0)
    return ProvableMlp.from_float(pairs, activations=acts, residual=res, skip=skip,
                                  frac_bits=cfg.frac_bits, lookup_range=cfg.lookup_range_bits)


def _fixed_groups(mlp: ProvableMlp, cfg: MlpConfig, start: int,
                  end: int) -> list[list[FixedLayer]]:
    """The fixed-point layers of config layers [start, end), one list per config layer."""
    out, k = [], 0
    for i in range(start, end):
        act = cfg.activations[i]
        n = 3 if act in NORMED or act == ATTENTION else 2 if act in BLOCKS else 1
        out.append(list(mlp.layers[k:k + n]))
        k += n
    return out


def commit_layers(path: str | Path, start: int, end: int) -> CommittedShard:
    """Layers [start, end) as a CommittedShard bound to the model's manifest.

    Each layer is committed on its own (so any sub-span can be proven) from the owner's caches
    in `<path>/zk`; layers whose cache is missing are committed afresh, which only matches the
    manifest if the blindings are the owner's (`CommitmentMismatch` otherwise).
    """
    mlp = fixed_layers(path, start, end)
    cfg = _config(Path(path))
    manifest = ModelManifest.from_bytes(load_manifest_bytes(path))
    blocks = manifest.blocks()
    if len(blocks) != cfg.num_layers:
        raise ModelError(f"{path}: the manifest does not describe this model's layers")
    cache = Path(path) / COMMIT_DIR
    parts = [commit_shard(ProvableMlp(group, mlp.frac_bits), cache, model_id=manifest.model_id,
                          first_layer=blocks[i][0])
             for i, group in zip(range(start, end), _fixed_groups(mlp, cfg, start, end),
                                 strict=True)]
    own = ShardCommitment(manifest.model_id, blocks[start][0], mlp.frac_bits,
                          parts[0].commitment.generator_seed,
                          tuple(lc for p in parts for lc in p.commitment.layers))
    joined = CommittedShard(mlp, own, [b for p in parts for b in p.weight_blinds],
                            [b for p in parts for b in p.bias_blinds])
    return joined.bind_to(manifest.block_shard(start, end))


def publish_manifest(path: str | Path, model_id: str | None = None,
                     blinding_key: bytes | None = None) -> bytes:
    """The model owner's step: commit every layer (caches in `<path>/zk`, mode 0600) and write
    `<path>/zk-manifest.bin`. Returns the manifest bytes. With the owner's `blinding_key`
    (commitment.commit_shard) the same weights give the same manifest bytes."""
    path = Path(path)
    cfg = _config(path)
    mlp = fixed_layers(path, 0, cfg.num_layers)
    name = model_id or str(json.loads((path / "config.json").read_text()).get(
        "p2pinfer_name") or path.name)
    parts, first = [], 0
    for group in _fixed_groups(mlp, cfg, 0, cfg.num_layers):
        parts.append(commit_shard(ProvableMlp(group, mlp.frac_bits), path / COMMIT_DIR,
                                  model_id=name, first_layer=first,
                                  blinding_key=blinding_key))
        first += len(group)
    data = ModelManifest.from_shards(name, parts).to_bytes()
    (path / MANIFEST_FILE).write_bytes(data)
    return data


def write_committed_mlp(directory: str | Path, config: dict[str, Any]) -> bytes:
    """A provable model with seeded random weights in `directory`: the float checkpoint
    (p2pinfer.models.mlp.write_random_mlp), then its owner's manifest and commitment caches
    (`publish_manifest`). Returns the manifest bytes."""
    write_random_mlp(directory, config)
    return publish_manifest(directory, config["p2pinfer_name"])


def builtin_model_path(name: str, home: Path | None = None) -> Path:
    """Directory of a built-in model: a provable one (ZK_MLP, ZK_LLAMA) with its weights and
    the manifest committed on first use, any other by p2pinfer.models' default_model_path."""
    if name not in PROVABLE:
        return default_model_path(name, home)

    def write(work: Path) -> None:
        write_committed_mlp(work, zk_llama_config(name) if name == ZK_LLAMA
                            else zk_mlp_config(name))
        (work / STAMP_FILE).write_text(json.dumps(
            {"format_version": _FORMAT_VERSION, "name": name, "random_weights": True}) + "\n")

    return write_once(name, home, _FORMAT_VERSION, write)
