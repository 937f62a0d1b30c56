"""Public weight commitments: a layer's, a shard's and the model manifest an owner publishes.

Spec: protocols/zk-proof.md, "Model manifest" (the msgpack bytes, the versions, the digests
verifiers pin). The row commitments follow the Hyrax layout of layout.py; the blindings behind
them stay with the weight owner and the provers (commitment.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import msgpack

from .attention import AttentionShape
from .errors import ProofFormatError
from .fixed import (
    ACTIVATIONS,
    GATED_ACTIVATIONS,
    MAX_DIM,
    MAX_RMS_FRAC_BITS,
    MAX_SKIP,
    RMS_EPS_DEFAULT,
    RMS_EPS_MAX,
    RMS_EPS_MIN,
    uses_table,
)
from .group import decode_point
from .layout import part_row_counts
from .tables import (
    LOOKUP_ACTIVATIONS,
    LOOKUP_RANGE_BITS,
    MAX_LOOKUP_FRAC_BITS,
    MAX_LOOKUP_RANGE_BITS,
)

MANIFEST_VERSION = 1
#: a manifest with a skip residual is version 2, so that a verifier that predates `skip` (and
#: would read the layer as adding its own input) refuses it instead of misreading it
MANIFEST_VERSION_SKIP = 2
#: a manifest with an attention layer is version 3, refused by verifiers that predate them
MANIFEST_VERSION_ATTENTION = 3
#: a manifest with a lookup table wider than the default is version 4, so a verifier that
#: predates `range` (and would check the lookup against the narrower table) refuses it
MANIFEST_VERSION_RANGE = 4
MANIFEST_VERSIONS = (MANIFEST_VERSION, MANIFEST_VERSION_SKIP, MANIFEST_VERSION_ATTENTION,
                     MANIFEST_VERSION_RANGE)


def manifest_version(layers: Sequence[LayerCommitment]) -> int:
    if any(lc.lookup_range != LOOKUP_RANGE_BITS for lc in layers):
        return MANIFEST_VERSION_RANGE
    if any(lc.activation == "attention" for lc in layers):
        return MANIFEST_VERSION_ATTENTION
    return MANIFEST_VERSION_SKIP if any(lc.skip for lc in layers) else MANIFEST_VERSION


class HasCommitment(Protocol):
    """A committed shard, as far as a manifest needs it (commitment.CommittedShard)."""

    @property
    def commitment(self) -> ShardCommitment: ...


@dataclass(frozen=True)
class LayerCommitment:
    d_in: int
    d_out: int
    activation: str
    residual: bool
    weight_rows: tuple[bytes, ...]
    bias_rows: tuple[bytes, ...] | None
    skip: int = 0  # the residual's source: the input of the layer `skip` before this one
    heads: int = 0  # attention layers only (FixedLayer)
    kv_heads: int = 0
    rope: int = 0
    eps: int = RMS_EPS_DEFAULT  # RMSNorm layers only, in units of 2**-32
    lookup_range: int = LOOKUP_RANGE_BITS  # GELU, SiLU and gated layers: the table's range

    def decoded_rows(self) -> tuple[list, list | None]:
        """(weight, bias) row commitments as group elements, decoded once and kept."""
        cached = self.__dict__.get("_decoded")
        if cached is None:
            w = [decode_point(p) for p in self.weight_rows]
            b = None if self.bias_rows is None else [decode_point(p) for p in self.bias_rows]
            cached = (w, b)
            object.__setattr__(self, "_decoded", cached)
        return cached

    def to_wire(self) -> dict:
        wire = {
            "d_in": self.d_in,
            "d_out": self.d_out,
            "act": self.activation,
            "res": self.residual,
            "w": list(self.weight_rows),
            "b": None if self.bias_rows is None else list(self.bias_rows),
        }
        if self.skip:  # absent when 0, so earlier manifests keep their bytes and digests
            wire["skip"] = self.skip
        if self.activation == "attention":
            wire.update(heads=self.heads, kv_heads=self.kv_heads, rope=self.rope)
        if self.eps != RMS_EPS_DEFAULT:  # absent at the default, so earlier bytes stay
            wire["eps"] = self.eps
        if self.lookup_range != LOOKUP_RANGE_BITS:  # likewise
            wire["range"] = self.lookup_range
        return wire

    @classmethod
    def from_wire(cls, m: object) -> LayerCommitment:
        if not isinstance(m, dict):
            raise ProofFormatError("a layer commitment is not a map")
        try:
            d_in, d_out, act, res = m["d_in"], m["d_out"], m["act"], m["res"]
            w, b = m["w"], m["b"]
        except KeyError as exc:
            raise ProofFormatError(f"a layer commitment lacks {exc}") from None
        if not (isinstance(d_in, int) and isinstance(d_out, int) and 1 <= d_in <= MAX_DIM
                and 1 <= d_out <= MAX_DIM and not d_in & (d_in - 1) and not d_out & (d_out - 1)):
            raise ProofFormatError("bad layer dimensions")
        if act not in ACTIVATIONS or not isinstance(res, bool):
            raise ProofFormatError("bad activation or residual flag")
        skip = m.get("skip", 0)
        if "skip" in m and (type(skip) is not int or not 1 <= skip <= MAX_SKIP or not res):
            raise ProofFormatError(f"skip must be in 1..{MAX_SKIP} and needs res")
        shape_keys = {"heads", "kv_heads", "rope"}
        allowed = {"d_in", "d_out", "act", "res", "w", "b", "skip"}
        tabled = act in LOOKUP_ACTIVATIONS or act in GATED_ACTIVATIONS
        own = (shape_keys if act == "attention" else {"eps"} if act == "rmsnorm"
               else {"range"} if tabled else set())
        if set(m) - allowed - own:
            raise ProofFormatError("a layer commitment has unknown fields")
        eps = m.get("eps", RMS_EPS_DEFAULT)
        if "eps" in m and (type(eps) is not int or not RMS_EPS_MIN <= eps <= RMS_EPS_MAX
                           or eps == RMS_EPS_DEFAULT):
            raise ProofFormatError("an RMSNorm eps is an int in [4, 2**32], present only when "
                                   "it is not the default 2**16")
        lookup_range = m.get("range", LOOKUP_RANGE_BITS)
        if "range" in m and (type(lookup_range) is not int or lookup_range == LOOKUP_RANGE_BITS
                             or not LOOKUP_RANGE_BITS < lookup_range <= MAX_LOOKUP_RANGE_BITS):
            raise ProofFormatError(f"a table range is an int in {LOOKUP_RANGE_BITS + 1}.."
                                   f"{MAX_LOOKUP_RANGE_BITS}, present only when not the default "
                                   f"{LOOKUP_RANGE_BITS}")
        if res and not skip and d_in != d_out:
            raise ProofFormatError("a residual layer needs d_in == d_out")
        if act == "rmsnorm" and (d_in != d_out or res or b is not None):
            raise ProofFormatError("an RMSNorm layer maps d to d, without bias or residual")
        heads = kv_heads = rope = 0
        if act == "attention":
            if not shape_keys <= set(m):
                raise ProofFormatError("an attention layer needs heads, kv_heads and rope")
            heads, kv_heads, rope = m["heads"], m["kv_heads"], m["rope"]
            problem = AttentionShape(d_in, heads, kv_heads, rope).check()
            if problem or d_in != d_out or res:
                raise ProofFormatError(problem or "an attention layer maps d to d, without "
                                                  "residual")
        lc = cls(d_in, d_out, act, res, (), None, skip, heads, kv_heads, rope, eps, lookup_range)
        rows_w, rows_b = part_row_counts(lc)
        if not is_point_list(w, rows_w):
            raise ProofFormatError("weight commitment has the wrong shape")
        if b is not None and not is_point_list(b, rows_b):
            raise ProofFormatError("bias commitment has the wrong shape")
        return cls(d_in, d_out, act, res, tuple(w), None if b is None else tuple(b), skip,
                   heads, kv_heads, rope, eps, lookup_range)


def is_point_list(v: object, n: int) -> bool:
    return (isinstance(v, list) and len(v) == n
            and all(isinstance(p, bytes) and len(p) == 48 for p in v))


@dataclass(frozen=True)
class ShardCommitment:
    """The public part a verifier checks a shard proof against (a slice of the manifest)."""

    model_id: str
    first_layer: int
    frac_bits: int
    generator_seed: bytes
    layers: tuple[LayerCommitment, ...]

    def to_wire(self) -> dict:
        return {
            "model": self.model_id,
            "first": self.first_layer,
            "f": self.frac_bits,
            "seed": self.generator_seed,
            "layers": [lc.to_wire() for lc in self.layers],
        }

    def digest(self) -> bytes:
        return hashlib.sha256(b"p2pinfer-zk-v1/shard" + msgpack.packb(self.to_wire())).digest()


@dataclass(frozen=True)
class ModelManifest:
    """Per-layer weight commitments published by a model owner. Verifiers pin `digest()`."""

    model_id: str
    frac_bits: int
    generator_seed: bytes
    layers: tuple[LayerCommitment, ...]

    def shard(self, start: int, stop: int) -> ShardCommitment:
        if not 0 <= start < stop <= len(self.layers):
            raise ValueError("layer span outside the manifest")
        return ShardCommitment(self.model_id, start, self.frac_bits, self.generator_seed,
                               self.layers[start:stop])

    def blocks(self) -> list[tuple[int, int]]:
        """The layers grouped into blocks [start, stop): a block ends where no later layer's
        residual reaches back into it, so a shard of whole blocks never cuts a skip. Without
        skips every layer is a block of its own."""
        n = len(self.layers)
        lowest, reach = [n] * (n + 1), n
        for k in range(n - 1, -1, -1):
            reach = min(reach, k - self.layers[k].skip)
            lowest[k] = reach
        bounds = [j for j in range(n) if lowest[j] >= j]
        return list(zip(bounds, [*bounds[1:], n], strict=True))

    def block_shard(self, start: int, stop: int) -> ShardCommitment:
        """The shard of blocks [start, stop) (see `blocks`): a model's layers as its config
        counts them, when one config layer is several proven layers."""
        blocks = self.blocks()
        if not 0 <= start < stop <= len(blocks):
            raise ValueError("block span outside the manifest")
        return self.shard(blocks[start][0], blocks[stop - 1][1])

    def to_bytes(self) -> bytes:
        return msgpack.packb({
            "v": manifest_version(self.layers),
            "t": "zk-manifest",
            "model": self.model_id,
            "f": self.frac_bits,
            "seed": self.generator_seed,
            "layers": [lc.to_wire() for lc in self.layers],
        })

    def digest(self) -> bytes:
        return hashlib.sha256(b"p2pinfer-zk-v1/manifest" + self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes, max_size: int = 64 << 20) -> ModelManifest:
        m = unpack_map(data, max_size, "zk-manifest", MANIFEST_VERSIONS)
        model, f, seed, layers = m.get("model"), m.get("f"), m.get("seed"), m.get("layers")
        if not isinstance(model, str) or len(model) > 256:
            raise ProofFormatError("bad model id")
        if not isinstance(f, int) or not 1 <= f <= 16:
            raise ProofFormatError("bad frac_bits")
        if not isinstance(seed, bytes) or len(seed) > 64:
            raise ProofFormatError("bad generator seed")
        if not isinstance(layers, list) or not 1 <= len(layers) <= 4096:
            raise ProofFormatError("bad layer list")
        decoded = tuple(LayerCommitment.from_wire(lc) for lc in layers)
        if m["v"] != manifest_version(decoded):
            raise ProofFormatError("a manifest is version 3 exactly when a layer is attention, "
                                   "else version 2 exactly when a layer has a skip (version 4 "
                                   "instead of either when a layer has a table range)")
        if f > MAX_RMS_FRAC_BITS and any(lc.activation == "rmsnorm" for lc in decoded):
            raise ProofFormatError(f"RMSNorm layers need frac_bits <= {MAX_RMS_FRAC_BITS}")
        if f > MAX_LOOKUP_FRAC_BITS and any(uses_table(lc.activation) for lc in decoded):
            raise ProofFormatError(f"GELU, SiLU, gated and attention layers need frac_bits <= "
                                   f"{MAX_LOOKUP_FRAC_BITS}")
        return cls(model, f, seed, decoded)

    @classmethod
    def from_shards(cls, model_id: str, shards: Sequence[HasCommitment]) -> ModelManifest:
        """A manifest from committed consecutive shards (the model owner's step)."""
        if not shards:
            raise ValueError("no shards")
        f, seed = shards[0].commitment.frac_bits, shards[0].commitment.generator_seed
        layers: list[LayerCommitment] = []
        for s in shards:
            c = s.commitment
            if c.frac_bits != f or c.generator_seed != seed:
                raise ValueError("shards were committed with different parameters")
            layers.extend(c.layers)
        return cls(model_id, f, seed, tuple(layers))


def unpack_map(data: object, max_size: int, t: str, version: int | tuple[int, ...]) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProofFormatError("expected bytes")
    if len(data) > max_size:
        raise ProofFormatError(f"{t} of {len(data)} bytes is above the {max_size}-byte limit")
    try:
        m = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True,
                            max_bin_len=max_size, max_str_len=1 << 16,
                            max_array_len=1 << 22, max_map_len=64)
    except Exception as exc:
        raise ProofFormatError(f"{t} does not decode as msgpack") from exc
    if not isinstance(m, dict):
        raise ProofFormatError(f"{t} is not a map")
    versions = version if isinstance(version, tuple) else (version,)
    if type(m.get("v")) is not int or m.get("v") not in versions:
        raise ProofFormatError(f"{t} has unsupported version {m.get('v')!r}")
    if m.get("t") != t:
        raise ProofFormatError(f"expected a {t}, got {m.get('t')!r}")
    return m
