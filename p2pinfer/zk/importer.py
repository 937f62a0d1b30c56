"""Importing a Llama-family checkpoint (Hugging Face safetensors or GGUF) into the provable
layout: a p2pinfer-mlp model directory whose fixed-point layers critical mode commits, serves
and proves (p2pinfer.zk.checkpoint), with the owner's manifest beside it.

Each decoder block becomes two config layers, `llama-attn` (RMSNorm, attention with grouped
query heads and rotary positions at the checkpoint's theta, o projection, residual) and
`llama-mlp` (RMSNorm, SwiGLU, down projection, residual). Embeddings, the final norm and the
head stay with the requester (split learning); the imported model maps hidden states to hidden
states.

Fixed point needs power-of-two widths and head counts, so the import pads, exactly:
- the residual stream to H = a power of two >= hidden_size (features [hidden_size, H) are 0 in
  and out: their norm gains and output rows are zero);
- kv heads to a power of two, and each kv head's group of query heads to a power of two; query
  head i (kv head i // group, r = i % group) sits at padded head (i // group) * group' + r.
  Padding query heads have zero weights and zero o-projection columns, so they add nothing;
- the RMS mean: over H features instead of hidden_size, so the gains are scaled by
  sqrt(hidden_size / H) and eps by hidden_size / H, which leaves every norm's output unchanged;
- the MLP width to a power of two (fixed.py pads it with zero weights).
A requester pads its hidden states with zeros to H and reads the first hidden_size features.

The import is deterministic: the same checkpoint, options and owner blinding key give the same
files and the same manifest bytes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from p2pinfer.models.checkpoint import open_checkpoint
from p2pinfer.models.errors import ModelError
from p2pinfer.models.llama import LlamaConfig
from p2pinfer.models.mlp import (
    ATTENTION,
    MODEL_TYPE,
    TABLE_MAX_FRAC_BITS,
    TABLE_RANGE_BITS_DEFAULT,
    TABLE_RANGE_BITS_MAX,
)

from .checkpoint import COMMIT_DIR, publish_manifest
from .commitment import BLINDING_KEY_BYTES
from .fixed import MAX_RMS_FRAC_BITS

#: the finest fixed-point precision an import may ask for (the lookup tables' and RMSNorm's)
MAX_IMPORT_FRAC_BITS = min(TABLE_MAX_FRAC_BITS, MAX_RMS_FRAC_BITS)
#: the default precision of an import, 2**-8: the 32-bit pre-activations then hold real values
#: below 2**(31 - 16) = 32768 and the residual stream below 2**(24 - 8) = 65536. SmolLM2-135M's
#: residual stream carries a massive activation of about 24900 from block 11 on, written by that
#: block's down projection (tools/zk_ranges.py), beyond f = 9's 8192 and f = 10's 2048
IMPORT_FRAC_BITS = 8
#: the default SiLU table range of an import: real gate inputs in [-128, 128) (`lookup_range_bits`
#: 8). SmolLM2-135M's gates reach 50.2 on varied chat prompts (tools/zk_ranges.py), beyond the
#: narrowest table's [-32, 32)
IMPORT_LOOKUP_RANGE_BITS = 8
#: the largest MLP shift (`mlp_shifts`): a down weight times 2**shift must stay below 2**15 at
#: scale 2**f
MAX_MLP_SHIFT = 4
#: SmolLM2-135M-Instruct's calibrated shifts: none at the default f = 8, where the gated product
#: holds 32768; on 50 varied chat prompts of up to 128 tokens |silu(gate) * up| reaches 3065 in
#: block 11 and 2371 in block 28 (tools/zk_ranges.py), so an import at f = 10 (2048) needs
#: {11: 2, 28: 2}
SMOLLM2_MLP_SHIFTS: dict[int, int] = {}
#: the owner's blinding key inside the imported directory's commitment caches (mode 0600)
OWNER_KEY_FILE = "owner-blinding.key"
#: how the imported directory records its source (config.json "p2pinfer_import")
IMPORT_FORMAT = 1


class CheckpointImportError(ModelError):
    """A checkpoint that cannot be imported: the message names the field or tensor."""


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Padding:
    """How a Llama config maps onto the provable layout's power-of-two shapes."""

    hidden: int  # the checkpoint's hidden_size
    width: int  # H: the padded residual stream, also the padded query width
    head_dim: int
    heads: int  # the checkpoint's
    kv_heads: int
    padded_heads: int
    padded_kv_heads: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def padded_group(self) -> int:
        return self.padded_heads // self.padded_kv_heads

    def head_slot(self, head: int) -> int:
        """Where query head `head` sits among the padded heads."""
        return (head // self.group) * self.padded_group + head % self.group

    @classmethod
    def of(cls, cfg: LlamaConfig) -> Padding:
        d = cfg.head_dim
        if d < 2 or d & (d - 1):
            raise CheckpointImportError(f"head_dim {d}: the provable layout needs a power-of-two head "
                               "width of 2 or more")
        kv = _pow2(cfg.num_kv_heads)
        min_heads = kv * _pow2(cfg.num_heads // cfg.num_kv_heads)
        width = max(_pow2(cfg.hidden_size), min_heads * d)
        return cls(cfg.hidden_size, width, d, cfg.num_heads, cfg.num_kv_heads, width // d, kv)


def _check_config(cfg: Any, source: Path) -> LlamaConfig:
    if not isinstance(cfg, LlamaConfig):
        raise CheckpointImportError(f"{source}: model_type {cfg.model_type!r} is not a Llama-family "
                           "architecture (llama, mistral, qwen2)")
    if dict(cfg.rope_scaling).get("rope_type", "default") != "default":
        raise CheckpointImportError(f"{source}: rope_scaling {dict(cfg.rope_scaling)!r} is not "
                           "supported (plain rotary positions only)")
    if any(w is not None for w in cfg.sliding_windows):
        raise CheckpointImportError(f"{source}: sliding_window attention is not supported")
    if not float(cfg.rope_theta).is_integer() or not 2 <= cfg.rope_theta < 1 << 32:
        raise CheckpointImportError(f"{source}: rope_theta {cfg.rope_theta!r} must be a whole number in "
                           "[2, 2**32)")
    return cfg


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).numpy()


def _block_tensors(w: dict[str, torch.Tensor], pad: Padding, ff: int, shift: int = 0
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One decoder block's tensors as (llama-attn, llama-mlp) p2pinfer-mlp layer tensors; the
    MLP's up projection divided and its down projection multiplied by 2**shift."""
    h, big, d = pad.hidden, pad.width, pad.head_dim
    gain = math.sqrt(h / big)
    kvw = pad.padded_kv_heads * d

    def norm(name: str) -> np.ndarray:
        out = np.zeros(big)
        out[:h] = _np(w[name]) * gain
        return out

    q, k, v, o = (_np(w[f"self_attn.{n}_proj.weight"]) for n in "qkvo")
    qkv = np.zeros((big + 2 * kvw, big))
    qkv_bias = np.zeros(big + 2 * kvw)
    o_pad = np.zeros((big, big))
    for i in range(pad.heads):
        slot = pad.head_slot(i)
        qkv[slot * d:(slot + 1) * d, :h] = q[i * d:(i + 1) * d]
        o_pad[:h, slot * d:(slot + 1) * d] = o[:, i * d:(i + 1) * d]
        if (b := _np(w.get("self_attn.q_proj.bias"))) is not None:
            qkv_bias[slot * d:(slot + 1) * d] = b[i * d:(i + 1) * d]
    for j in range(pad.kv_heads):
        rows = slice(j * d, (j + 1) * d)
        qkv[big + j * d:big + (j + 1) * d, :h] = k[rows]
        qkv[big + kvw + j * d:big + kvw + (j + 1) * d, :h] = v[rows]
        for off, name in ((big, "k"), (big + kvw, "v")):
            if (b := _np(w.get(f"self_attn.{name}_proj.bias"))) is not None:
                qkv_bias[off + j * d:off + (j + 1) * d] = b[rows]
    o_bias = np.zeros(big)
    if (b := _np(w.get("self_attn.o_proj.bias"))) is not None:
        o_bias[:h] = b
    attn = {"norm.weight": norm("input_layernorm.weight"), "weight": qkv, "bias": qkv_bias,
            "o.weight": o_pad, "o.bias": o_bias}

    up_gate = np.zeros((2 * ff, big))
    up_gate[:ff, :h] = _np(w["mlp.up_proj.weight"])
    up_gate[ff:, :h] = _np(w["mlp.gate_proj.weight"])
    ug_bias = np.zeros(2 * ff)
    down = np.zeros((big, ff))
    down[:h] = _np(w["mlp.down_proj.weight"])
    down_bias = np.zeros(big)
    for name, arr, sl in (("up", ug_bias, slice(0, ff)), ("gate", ug_bias, slice(ff, 2 * ff)),
                          ("down", down_bias, slice(0, h))):
        if (b := _np(w.get(f"mlp.{name}_proj.bias"))) is not None:
            arr[sl] = b
    # an exact reparametrisation in float: down(silu(g) * up) = (2**s down)(silu(g) * up / 2**s)
    up_gate[:ff] /= 1 << shift
    ug_bias[:ff] /= 1 << shift
    down *= 1 << shift
    mlp = {"norm.weight": norm("post_attention_layernorm.weight"), "weight": up_gate,
           "bias": ug_bias, "down.weight": down, "down.bias": down_bias}
    return attn, mlp


@dataclass(frozen=True)
class ImportResult:
    directory: Path
    manifest: bytes
    blocks: int  # decoder blocks imported
    padding: Padding


def read_blinding_key(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    if len(data) != BLINDING_KEY_BYTES:
        raise CheckpointImportError(f"{path}: an owner blinding key is {BLINDING_KEY_BYTES} bytes, "
                           f"not {len(data)}")
    return data


def _write_key(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)


def import_checkpoint(source: str | Path, out: str | Path, *, blocks: int | None = None,
                      frac_bits: int = IMPORT_FRAC_BITS, blinding_key: bytes | None = None,
                      model_id: str | None = None, commit: bool = True,
                      lookup_range_bits: int = IMPORT_LOOKUP_RANGE_BITS,
                      mlp_shifts: Mapping[int, int] | None = None) -> ImportResult:
    """Write the provable layout of the Llama-family checkpoint at `source` into `out`.

    `blocks` imports only the first decoder blocks; `blinding_key` (the owner's secret, 32
    bytes) makes the manifest a function of the weights, else a fresh key is drawn; either way
    it is kept in `out/zk/` (mode 0600) beside the commitment caches. `lookup_range_bits` R sets
    the SiLU tables' range, real [-2**(R-1), 2**(R-1)) (recorded in config.json and in the
    manifest, so proofs are bound to it). `mlp_shifts` maps a block to s in 0..MAX_MLP_SHIFT:
    its MLP's up projection is divided and its down projection multiplied by 2**s, the same
    function in float, so that the gated product silu(gate) * up (which fixed point keeps below
    2**(31 - 2f), i.e. 2048 at f = 10) has room for real prompts (calibrated per block, e.g. by
    tools/zk_ranges.py's |g*u| column; SMOLLM2_MLP_SHIFTS for SmolLM2-135M); the committed
    weights carry the choice, so proofs are bound to it. `commit=False` writes the
    float checkpoint only (no manifest). Raises ModelError (CheckpointImportError) naming the field or
    tensor that keeps the checkpoint out.
    """
    source, out = Path(source), Path(out)
    ckpt = open_checkpoint(source)  # ModelError names a missing tensor or a bad field
    cfg = _check_config(ckpt.config, source)
    n = cfg.num_layers if blocks is None else blocks
    if not 1 <= n <= cfg.num_layers:
        raise CheckpointImportError(f"blocks must be in 1..{cfg.num_layers}, got {n}")
    if not 1 <= frac_bits <= MAX_IMPORT_FRAC_BITS:
        raise CheckpointImportError(f"frac_bits must be in 1..{MAX_IMPORT_FRAC_BITS}")
    if not TABLE_RANGE_BITS_DEFAULT <= lookup_range_bits <= TABLE_RANGE_BITS_MAX:
        raise CheckpointImportError(f"lookup_range_bits must be in {TABLE_RANGE_BITS_DEFAULT}.."
                                    f"{TABLE_RANGE_BITS_MAX}")
    shifts = dict(mlp_shifts or {})
    for block, shift in shifts.items():
        if (type(block) is not int or type(shift) is not int
                or not 0 <= block < cfg.num_layers or not 0 <= shift <= MAX_MLP_SHIFT):
            raise CheckpointImportError(f"mlp_shifts: block {block!r} -> {shift!r}: blocks in "
                                        f"0..{cfg.num_layers - 1}, shifts in "
                                        f"0..{MAX_MLP_SHIFT}")
    pad = Padding.of(cfg)
    ff = cfg.intermediate_size
    tensors: dict[str, np.ndarray] = {}
    for i in range(n):
        w = ckpt.load(ckpt.layer_keys(i), torch.float64)
        attn, mlp = _block_tensors(w, pad, ff, shifts.get(i, 0))
        for j, part in ((2 * i, attn), (2 * i + 1, mlp)):
            for name, arr in part.items():
                tensors[f"layers.{j}.{name}"] = np.ascontiguousarray(arr, dtype=np.float32)
    name = model_id or f"{source.stem}-zk"
    config = {
        "model_type": MODEL_TYPE,
        "p2pinfer_name": name,
        "p2pinfer_import": {"format": IMPORT_FORMAT, "source_model_type": cfg.model_type,
                            "hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_heads,
                            "num_key_value_heads": cfg.num_kv_heads, "blocks": n,
                            "head_slots": [pad.head_slot(i) for i in range(cfg.num_heads)],
                            "mlp_shifts": [shifts.get(i, 0) for i in range(n)]},
        "num_layers": 2 * n,
        "hidden_size": pad.width,
        "intermediate_size": ff,
        "activations": [ATTENTION, "llama-mlp"] * n,
        "residual": False,
        "num_attention_heads": pad.padded_heads,
        "num_key_value_heads": pad.padded_kv_heads,
        "rope_theta": int(cfg.rope_theta),
        "rms_norm_eps": cfg.rms_norm_eps * cfg.hidden_size / pad.width,
        "frac_bits": frac_bits,
        "lookup_range_bits": lookup_range_bits,
        "max_positions": cfg.max_positions,
        "dtype": "float32",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    manifest = b""
    if commit:
        key = blinding_key if blinding_key is not None else os.urandom(BLINDING_KEY_BYTES)
        for stale in (out / COMMIT_DIR).glob("zk-commit-*.msgpack"):  # an earlier import's
            stale.unlink()  # blindings, which may come from another key
        _write_key(out / COMMIT_DIR / OWNER_KEY_FILE, key)
        manifest = publish_manifest(out, name, blinding_key=key)
    return ImportResult(out, manifest, n, pad)
