"""Committing a shard's weights (the weight owner's and the provers' side).

Spec: protocols/zk-proof.md, "Tables and Hyrax layout" (Wahby et al. 2018, section 6): each
weight part and bias is cut into Hyrax rows (layout.py), and each row gets one Pedersen vector
commitment with its own blinding. The row commitments are public (they go into the manifest,
manifest.py); the blindings stay with the weight owner and the provers, cached on disk in a
file only its owner can read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from .errors import CommitmentMismatch, ProofFormatError
from .fixed import FixedLayer, ProvableMlp
from .group import (
    DEFAULT_SEED,
    P,
    PedersenParams,
    decode_scalar,
    encode_point,
    encode_scalar,
    random_scalar,
)
from .layout import generator_count_for, hyrax_matrix, params_for, part_row_counts, weight_parts
from .manifest import LayerCommitment, ShardCommitment, is_point_list, unpack_map


@dataclass
class CommittedShard:
    """A provable shard together with its public commitment and the private row blindings."""

    shard: ProvableMlp
    commitment: ShardCommitment
    weight_blinds: list[list[int]] = field(repr=False)
    bias_blinds: list[list[int] | None] = field(repr=False)

    def forward_fixed(self, x: np.ndarray) -> np.ndarray:
        return self.shard.forward_fixed(x)

    def bind_to(self, entry: ShardCommitment) -> CommittedShard:
        """The same shard, proving against `entry` (a manifest slice with the same layers)."""
        if (entry.layers != self.commitment.layers or entry.frac_bits != self.commitment.frac_bits
                or entry.generator_seed != self.commitment.generator_seed):
            raise CommitmentMismatch("the manifest entry does not hold this shard's commitments")
        return CommittedShard(self.shard, entry, self.weight_blinds, self.bias_blinds)


#: bytes of an owner's blinding key (commit_shard's `blinding_key`)
BLINDING_KEY_BYTES = 32


def _derived_blind(key: bytes, context: bytes, row: int) -> int:
    """A row blinding from the owner's secret key: HMAC-SHA512 reduced mod the group order
    (512 bits, so the bias of the reduction is below 2**-256)."""
    mac = hmac.new(key, b"p2pinfer-zk-v1/blind" + context + row.to_bytes(4, "little"),
                   hashlib.sha512).digest()
    return int.from_bytes(mac, "little") % P


def _commit_rows(pp: PedersenParams, mat: np.ndarray, key: bytes | None = None,
                 context: bytes = b"") -> tuple[list[bytes], list[int]]:
    blinds = [random_scalar() if key is None else _derived_blind(key, context, j)
              for j in range(mat.shape[0])]
    rows = [encode_point(pp.commit_small_ints(r, s)) for r, s in zip(mat, blinds)]
    return rows, blinds


def commit_shard(
    shard: ProvableMlp | Sequence[FixedLayer],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    model_id: str = "",
    first_layer: int = 0,
    generator_seed: bytes = DEFAULT_SEED,
    blinding_key: bytes | None = None,
) -> CommittedShard:
    """One-time Hyrax commitment of a shard's weights, cached on disk when cache_dir is given.

    The cache file (msgpack, mode 0600: it holds the secret blindings) is keyed by a digest of
    the weights and the generator seed, so changed weights never reuse a stale commitment.
    The row blindings come from the OS CSPRNG, or, given the owner's secret `blinding_key`
    (BLINDING_KEY_BYTES), from HMAC-SHA512 under it over the weights' digest, the seed, the
    first layer and the row's place: then the same weights and key give the same commitments.
    """
    if not isinstance(shard, ProvableMlp):
        shard = ProvableMlp(list(shard))
    if blinding_key is not None and len(blinding_key) != BLINDING_KEY_BYTES:
        raise ValueError(f"a blinding key is {BLINDING_KEY_BYTES} bytes")
    digest = shard.weights_digest()
    key = hashlib.sha256(digest + generator_seed).hexdigest()
    path = Path(cache_dir) / f"zk-commit-{key}.msgpack" if cache_dir is not None else None
    cached = _read_cache(path, key, shard) if path is not None and path.exists() else None
    if cached is None:
        pp = params_for(generator_count_for(shard.layers, 0), generator_seed)
        cached = []
        base = digest + generator_seed + first_layer.to_bytes(4, "little")
        for k, layer in enumerate(shard.layers):
            w_rows, w_blinds, b_rows, b_blinds = [], [], [], []
            for part, (col0, width) in enumerate(weight_parts(layer)):
                ctx = base + bytes([k & 0xFF, k >> 8, part])
                rows, blinds = _commit_rows(
                    pp, hyrax_matrix(layer.weight[:, col0:col0 + width].reshape(-1)),
                    blinding_key, ctx + b"w")
                w_rows += rows
                w_blinds += blinds
                if layer.bias is not None:
                    rows, blinds = _commit_rows(pp, hyrax_matrix(layer.bias[col0:col0 + width]),
                                                blinding_key, ctx + b"b")
                    b_rows += rows
                    b_blinds += blinds
            if layer.bias is None:
                b_rows = b_blinds = None
            cached.append((w_rows, w_blinds, b_rows, b_blinds))
        if path is not None:
            _write_cache(path, key, cached)
    layers = tuple(
        LayerCommitment(l.d_in, l.d_out, l.activation, l.residual, tuple(w),
                        None if b is None else tuple(b), l.skip, l.heads, l.kv_heads, l.rope,
                        l.eps, l.lookup_range)
        for l, (w, _, b, _) in zip(shard.layers, cached)
    )
    commitment = ShardCommitment(model_id, first_layer, shard.frac_bits, generator_seed, layers)
    return CommittedShard(shard, commitment, [c[1] for c in cached], [c[3] for c in cached])


def _write_cache(path: Path, key: str, cached: list) -> None:
    body = msgpack.packb({
        "v": 1,
        "t": "zk-commitment-cache",
        "key": key,
        "layers": [
            {"w": w, "wb": [encode_scalar(s) for s in wb], "b": b,
             "bb": None if bb is None else [encode_scalar(s) for s in bb]}
            for w, wb, b, bb in cached
        ],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
    os.replace(tmp, path)


def _read_cache(path: Path, key: str, shard: ProvableMlp) -> list | None:
    m = unpack_map(path.read_bytes(), 1 << 30, "zk-commitment-cache", 1)
    if m.get("key") != key:
        raise CommitmentMismatch(f"cache file {path} belongs to other weights")
    layers = m.get("layers")
    if not isinstance(layers, list) or len(layers) != len(shard.layers):
        raise ProofFormatError("cache file has the wrong number of layers")
    out = []
    for layer, c in zip(shard.layers, layers):
        if not isinstance(c, dict):
            raise ProofFormatError("cache layer is not a map")
        nrow_w, nrow_b = part_row_counts(layer)
        w, wb, b, bb = c.get("w"), c.get("wb"), c.get("b"), c.get("bb")
        if not is_point_list(w, nrow_w) or not isinstance(wb, list) or len(wb) != nrow_w:
            raise ProofFormatError("cache weight rows have the wrong shape")
        if (layer.bias is None) != (b is None):
            raise ProofFormatError("cache bias presence does not match the shard")
        if b is not None and (not is_point_list(b, nrow_b) or not isinstance(bb, list)
                              or len(bb) != nrow_b):
            raise ProofFormatError("cache bias rows have the wrong shape")
        out.append((w, [decode_scalar(s) for s in wb], b,
                    None if bb is None else [decode_scalar(s) for s in bb]))
    return out
