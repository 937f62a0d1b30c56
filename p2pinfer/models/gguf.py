"""Reading GGUF checkpoints (llama.cpp's single-file format) one span at a time.

A GGUF file holds metadata (architecture, hyper-parameters, tokenizer, chat template) and
tensors, many of them block-quantized (Q4_1, Q8_0, ...). `GGUFCheckpoint` offers the same calls
as the safetensors `Checkpoint`: it maps the file's tensor names onto the Hugging Face layout of
the Llama family (`blk.3.attn_q.weight` -> `layers.3.self_attn.q_proj.weight`), checks every
shape against the metadata before anything is loaded, and `load` dequantizes exactly the tensors
asked for to the span's compute dtype. The file is memory-mapped: we parse its header here
(skipping the metadata arrays, i.e. the vocabulary), the tensors are views of the map, and
`gguf.quants` dequantizes them, so a span touches its own layers' bytes and nothing else.

llama.cpp stores the rows of `attn_q` and `attn_k` permuted so that its rotary embedding can
rotate adjacent pairs; the Hugging Face layout (and ours, `llama.py`) rotates halves. Within each
head, stored row 2*i + j is original row j * (head_dim/2) + i; `_unpermute` undoes it.

Formats: GGUF v2/v3, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md ; tensor and
key names follow llama.cpp's `gguf-py/gguf/constants.py`. Only the `llama` architecture is
loaded (Llama 1-3 style decoders, SmolLM, Mistral exported as llama); others are refused with
the list of what is supported, as are MoE files and Llama 3.1 `rope_freqs` scaling.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from p2pinfer.models import llama
from p2pinfer.models.errors import ModelError
from p2pinfer.models.family import LM_HEAD_KEY, ArchConfig, Family
from p2pinfer.models.info import ModelInfo, safe_name

SUFFIX = ".gguf"
_GGUF_VERSION = importlib.metadata.version("gguf")
_MAGIC = b"GGUF"
#: GGUF architectures we load, and the family that runs them
ARCHITECTURES: dict[str, Family] = {"llama": llama.FAMILY}
_Q = gguf.GGMLQuantizationType
#: tensor types we dequantize (all have a `gguf.quants` dequantizer, checked in the tests)
SUPPORTED_TYPES = frozenset({
    _Q.F32, _Q.F16, _Q.BF16, _Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1, _Q.Q8_0,
    _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K,
})
#: Hugging Face name (relative to the base model) -> GGUF name, for one layer and the ends
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_EMBED = "token_embd.weight"
_END_NAMES = {
    "embed_tokens.weight": _EMBED,
    "norm.weight": "output_norm.weight",
    LM_HEAD_KEY: "output.weight",
}
_DIGEST_VERSION = "p2pinfer-gguf-weights-v1"

#: local name -> (GGUF tensor name, Hugging Face shape)
Keys = dict[str, tuple[str, tuple[int, ...]]]


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a GGUF file, or a directory holding one GGUF file and no config.json."""
    return gguf_file(Path(path).expanduser()) is not None


def gguf_file(path: Path) -> Path | None:
    if path.is_dir():
        if (path / "config.json").exists():
            return None
        files = sorted(path.glob("*" + SUFFIX))
        return files[0] if len(files) == 1 else None
    if path.suffix == SUFFIX:
        return path
    try:
        with path.open("rb") as f:
            return path if f.read(4) == _MAGIC else None
    except OSError:
        return None


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception as exc:  # a damaged field
        raise ModelError(f"metadata key {field.name} is unreadable: {exc}") from exc


def read_arrays(file: Path, keys: tuple[str, ...]) -> dict[str, list[Any]]:
    """The named metadata arrays of a GGUF file (absent keys are left out)."""
    try:
        reader = gguf.GGUFReader(file)
    except Exception as exc:
        raise ModelError(f"{file}: unreadable GGUF metadata: {type(exc).__name__}: {exc}"
                         ) from exc
    out: dict[str, list[Any]] = {}
    for key in keys:
        field = reader.get_field(key)
        if field is not None:
            value = _field_value(field)
            if not isinstance(value, list):
                raise ModelError(f"{file}: metadata key {key} should be an array")
            out[key] = value
    return out


_V = gguf.GGUFValueType
_SCALARS = {
    _V.UINT8: "<B", _V.INT8: "<b", _V.UINT16: "<H", _V.INT16: "<h", _V.UINT32: "<I",
    _V.INT32: "<i", _V.FLOAT32: "<f", _V.BOOL: "<?", _V.UINT64: "<Q", _V.INT64: "<q",
    _V.FLOAT64: "<d",
}
_U64 = struct.Struct("<Q")
_MAX_COUNT = 1 << 24  # metadata keys, tensors, array elements: far above any real file
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32


class _Truncated(Exception):
    pass


class _Damaged(Exception):
    """A header that cannot be a valid GGUF file (the message names what, not the file)."""


class _HeaderParser:
    """GGUF header (metadata and tensor index) from a memory map, reading no tensor data.

    Arrays in the metadata (a tokenizer's vocabulary and merges) are skipped and recorded by
    length, so opening a file costs milliseconds and no memory beyond its index; the tokenizer
    conversion reads them with `gguf.GGUFReader` once (`read_arrays`).
    """

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.size, self.pos = data, int(data.shape[0]), 0
        self.view = memoryview(data)

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, kind: gguf.GGUFValueType) -> Any:
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, self.view, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str) -> int:
        n = self.scalar(_V.UINT64)
        if n > _MAX_COUNT:
            raise _Damaged(f"{what} count {n} is implausibly large (damaged file)")
        return int(n)

    def string(self) -> str:
        n = self.scalar(_V.UINT64)
        start = self.take(int(n))
        try:
            return bytes(self.data[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Damaged(f"a metadata string at byte {start} is not UTF-8") from None

    def value_kind(self) -> gguf.GGUFValueType:
        raw = self.scalar(_V.UINT32)
        try:
            return _V(raw)
        except ValueError:
            raise _Damaged(f"unknown metadata value type {raw} (damaged file)") from None

    def value(self, kind: gguf.GGUFValueType) -> Any:
        """A scalar or string; an array becomes its length (its elements are skipped)."""
        if kind == _V.STRING:
            return self.string()
        if kind != _V.ARRAY:
            return self.scalar(kind)
        inner = self.value_kind()
        n = self.count("array element")
        if inner in _SCALARS:
            self.take(n * struct.calcsize(_SCALARS[inner]))
        elif inner == _V.STRING:  # the vocabulary: skip 100k strings in a tight loop
            length, buf, pos = _U64.unpack_from, self.view, self.pos
            for _ in range(n):
                if pos + 8 > self.size:
                    raise _Truncated
                pos += 8 + length(buf, pos)[0]
            self.take(pos - self.pos)
        else:
            for _ in range(n):
                self.value(inner)
        return n


def _parse_header(file: Path, data: np.ndarray) -> tuple[dict[str, Any], list[tuple], int]:
    """(metadata, [(name, type, HF shape, absolute offset, bytes)], header length)."""
    p = _HeaderParser(data)
    if bytes(data[:4]) != _MAGIC:
        raise _Damaged("not a GGUF file (bad magic number)")
    p.pos = 4
    version = p.scalar(_V.UINT32)
    if version & 0xFFFF == 0:
        raise _Damaged("big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise _Damaged(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = p.count("tensor"), p.count("metadata key")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = p.string()
        meta[key] = p.value(p.value_kind())
    infos = []
    for _ in range(n_tensors):
        name = p.string()
        n_dims = p.scalar(_V.UINT32)
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Damaged(f"tensor {name} has {n_dims} dimensions")
        dims = [p.scalar(_V.UINT64) for _ in range(n_dims)]
        raw = p.scalar(_V.UINT32)
        offset = p.scalar(_V.UINT64)
        try:
            kind = gguf.GGMLQuantizationType(raw)
        except ValueError:
            raise _Damaged(
                f"tensor {name} has unknown tensor type {raw} (a damaged file, or a "
                f"GGUF type newer than gguf {_GGUF_VERSION})"
            ) from None
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        if dims[0] % block:
            raise _Damaged(f"tensor {name} has shape {dims[::-1]}, impossible for "
                             f"type {kind.name}")
        n_bytes = math.prod(dims) // block * type_size
        infos.append((name, kind, tuple(int(d) for d in reversed(dims)), offset, n_bytes))
    alignment = meta.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Damaged(f"general.alignment {alignment!r} is not a power of two")
    header = -(-p.pos // alignment) * alignment
    return meta, [(n, k, s, header + o, b) for n, k, s, o, b in infos], header


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file: its GGUF name, type and shape in Hugging Face order."""

    name: str
    kind: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray  # memory-mapped raw bytes (or elements for float types)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class GGUFCheckpoint:
    """An opened GGUF file: config, family, tensor index. Loads (dequantizes) on request.

    Same calls as `Checkpoint`: `config`, `family`, `embedding_keys()`, `layer_keys(i)`,
    `output_keys()`, `load(keys, dtype)`, `info()`, `loaded_keys`; plus `weights_digest`.
    """

    def __init__(self, path: str | Path) -> None:
        given = Path(path).expanduser()
        file = gguf_file(given) if given.exists() else None
        if not given.exists():
            raise ModelError(f"GGUF file {given} does not exist")
        if file is None:
            raise ModelError(f"{given}: not a GGUF file, nor a directory holding exactly one")
        self.path = given
        self.file = file
        self._where = str(file)
        size = file.stat().st_size
        if size == 0:
            raise ModelError(f"{file}: empty file, not a GGUF file")
        try:
            data = np.memmap(file, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelError(f"{file}: cannot map the file: {exc}") from exc
        try:
            #: metadata; arrays (the tokenizer's) are given by length, see `read_arrays`
            self.meta, infos, self.header_bytes = _parse_header(file, data)
        except _Truncated:
            raise ModelError(f"{file}: truncated: the header ends early ({size} bytes)") from None
        except _Damaged as exc:
            raise ModelError(f"{file}: {exc}") from None
        arch = self.meta.get("general.architecture")
        if arch is None:
            raise ModelError(f"{file}: metadata key general.architecture is missing")
        if arch not in ARCHITECTURES:
            raise ModelError(
                f"{file}: GGUF architecture {arch!r} is not supported "
                f"(supported: {', '.join(ARCHITECTURES)})"
            )
        self.architecture: str = arch
        self.family: Family = ARCHITECTURES[arch]
        self.tensors: dict[str, GGUFTensor] = {}
        for name, kind, shape, offset, n_bytes in infos:
            if offset + n_bytes > size:
                raise ModelError(f"{file}: truncated: tensor {name} ends at byte "
                                 f"{offset + n_bytes}, the file has {size}")
            if name in self.tensors:
                raise ModelError(f"{file}: tensor {name} appears twice")
            raw = data[offset:offset + n_bytes]
            if kind == _Q.F32:
                raw = raw.view(np.float32).reshape(shape)
            elif kind == _Q.F16:
                raw = raw.view(np.float16).reshape(shape)
            elif kind in SUPPORTED_TYPES:
                raw = raw.reshape(gguf.quants.quant_shape_to_byte_shape(shape, kind))
            self.tensors[name] = GGUFTensor(name, kind, shape, raw)
        try:
            self.raw_config = self._hf_config()
            self.config: ArchConfig = self.family.parse_config(self.raw_config)
        except ModelError as exc:
            raise ModelError(f"{file}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ModelError(f"{file}: a metadata value has the wrong type: {exc}") from None
        if self.config.num_layers <= 0 or self.config.hidden_size <= 0:
            raise ModelError(f"{file}: layer count and hidden size must be > 0")
        self.loaded_keys: list[str] = []
        self._loaded: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._check_tensors()

    # -- metadata --------------------------------------------------------------------------------

    def metadata(self, key: str, default: Any = None) -> Any:
        """A metadata value (str, int, float or bool; an array's length), `default` if absent."""
        return self.meta.get(key, default)

    def _hf_config(self) -> dict[str, Any]:
        """The metadata as a Hugging Face `config.json` of the family."""
        a = self.architecture

        def get(key: str, default: Any = ...) -> Any:
            value = self.meta.get(f"{a}.{key}", default)
            if value is ...:
                raise ModelError(f"metadata key {a}.{key} is missing")
            return value

        if get("expert_count", 0):
            raise ModelError("mixture-of-experts GGUF files are not supported")
        if "rope_freqs.weight" in self.tensors:
            raise ModelError("per-frequency RoPE factors (rope_freqs) are not supported")
        layers = get("block_count")
        if not isinstance(layers, int) or not 0 < layers <= len(self.tensors):
            raise ModelError(f"{a}.block_count {layers!r} does not fit the file's "
                             f"{len(self.tensors)} tensors")
        heads = get("attention.head_count")
        hidden = get("embedding_length")
        if not isinstance(heads, int) or heads <= 0:
            raise ModelError(f"{a}.attention.head_count must be a positive int, got {heads!r}")
        head_dim = get("attention.key_length", hidden // heads)
        rot = get("rope.dimension_count", head_dim)
        if rot != head_dim:
            raise ModelError(f"partial rotary embeddings ({rot} of {head_dim}) are not supported")
        embed = self.tensors.get(_EMBED)
        vocab = get("vocab_size", None)
        if vocab is None:
            vocab = self.meta.get("tokenizer.ggml.tokens", embed.shape[0] if embed else 0)
        rope: dict[str, Any] = {"rope_theta": float(get("rope.freq_base", 10000.0))}
        scaling = get("rope.scaling.type", "none")
        if scaling in ("none", ""):
            rope["rope_type"] = "default"
        elif scaling == "linear":
            rope |= {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        else:
            raise ModelError(f"RoPE scaling {scaling!r} is not supported")
        eos = self.meta.get("tokenizer.ggml.eos_token_id")
        return {
            "model_type": a,
            "hidden_size": hidden,
            "intermediate_size": get("feed_forward_length"),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": get("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": get("context_length", 2048),
            "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_parameters": rope,
            "vocab_size": vocab,
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "eos_token_id": eos,
        }

    # -- weight layout ---------------------------------------------------------------------------

    def embedding_keys(self) -> Keys:
        return self._group(self.family.embedding_shapes(self.config), _END_NAMES)

    def layer_keys(self, layer: int) -> Keys:
        names = {hf: f"blk.{layer}.{g}" for hf, g in _LAYER_NAMES.items()}
        return self._group(self.family.layer_shapes(self.config, layer), names)

    def output_keys(self) -> Keys:
        keys = self._group(self.family.output_shapes(self.config), _END_NAMES)
        shape = (self.config.vocab_size, self.config.hidden_size)
        keys[LM_HEAD_KEY] = (_END_NAMES[LM_HEAD_KEY] if "output.weight" in self.tensors
                             else _EMBED, shape)
        return keys

    def _group(self, shapes: Mapping[str, tuple[int, ...]], names: Mapping[str, str]) -> Keys:
        out: Keys = {}
        for local, shape in shapes.items():
            if local not in names:
                raise ModelError(f"{self._where}: no GGUF name for {local} (unsupported layer)")
            out[local] = (names[local], shape)
        return out

    def _check_tensors(self) -> None:
        cfg = self.config
        groups = [self.embedding_keys(), self.output_keys()]
        groups += [self.layer_keys(i) for i in range(cfg.num_layers)]
        expected: set[str] = set()
        for group in groups:
            for key, shape in group.values():
                expected.add(key)
                t = self.tensors.get(key)
                if t is None:
                    raise ModelError(
                        f"{self._where}: tensor {key} is missing (the metadata describes "
                        f"{cfg.num_layers} layers of a {self.architecture} model)"
                    )
                if t.shape != shape:
                    raise ModelError(
                        f"{self._where}: tensor {key} has shape {list(t.shape)}, the metadata "
                        f"implies {list(shape)}"
                    )
                if t.kind not in SUPPORTED_TYPES:
                    raise ModelError(
                        f"{self._where}: tensor {key} has type {t.kind.name}, which is not "
                        f"supported (supported: {', '.join(sorted(k.name for k in SUPPORTED_TYPES))})"
                    )
        extra = sorted(set(self.tensors) - expected)
        if extra:
            raise ModelError(
                f"{self._where}: unexpected tensor {extra[0]} for a {cfg.num_layers}-layer "
                f"{self.architecture} model (another architecture, or more layers than the "
                "metadata says)"
            )

    # -- loading ---------------------------------------------------------------------------------

    def load(self, keys: Keys, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Dequantize the named tensors (local name -> (GGUF name, shape)) to `dtype`.

        A tensor asked for twice (the tied embeddings of a head and tail opened from one
        checkpoint) is dequantized once and shared.
        """
        out: dict[str, torch.Tensor] = {}
        for local, (key, shape) in keys.items():
            cached = self._loaded.get((key, dtype))
            if cached is None:
                cached = self._dequantize(self.tensors[key], shape, dtype)
                self._loaded[(key, dtype)] = cached
                self.loaded_keys.append(key)
            out[local] = cached
        return out

    def _dequantize(self, t: GGUFTensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        try:
            values = gguf.quants.dequantize(t.data, t.kind)
        except Exception as exc:
            raise ModelError(f"{self._where}: cannot dequantize {t.name} ({t.kind.name}): {exc}"
                             ) from exc
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        if t.name.endswith(".attn_q.weight"):
            values = _unpermute(values, self.config.num_heads)
        elif t.name.endswith(".attn_k.weight"):
            values = _unpermute(values, self.config.num_kv_heads)
        values = np.ascontiguousarray(values)
        if not values.flags.writeable:  # a float32 tensor is a view of the read-only map
            values = values.copy()
        tensor = torch.from_numpy(values)
        return tensor if dtype == torch.float32 else tensor.to(dtype)

    # -- identity --------------------------------------------------------------------------------

    def _canonical_config(self) -> str:
        return json.dumps(self.raw_config, sort_keys=True)

    def info(self) -> ModelInfo:
        cfg = self.config
        digest = hashlib.sha256(f"gguf\n{self._canonical_config()}".encode())
        for name in sorted(self.tensors):
            t = self.tensors[name]
            digest.update(f"\n{name} {t.kind.name} {list(t.shape)}".encode())
        name = safe_name(self.file.stem)

        def count(group: Keys) -> int:
            return sum(self.tensors[k].numel for k, _ in group.values())

        output_group = self.output_keys()
        output_params = count(output_group)
        if output_group[LM_HEAD_KEY][0] == _EMBED:
            output_params -= self.tensors[_EMBED].numel  # tied: counted with the embeddings
        matrix_types = sorted({
            self.tensors[k].kind.name
            for i in range(cfg.num_layers) for k, s in self.layer_keys(i).values() if len(s) == 2
        })
        return ModelInfo(
            model_id=f"{name}-{digest.hexdigest()[:12]}",
            name=name,
            family=self.family.name,
            model_type=cfg.model_type,
            path=self.path.resolve(),
            is_decoder=self.family.is_decoder,
            num_layers=cfg.num_layers,
            hidden_size=cfg.hidden_size,
            vocab_size=cfg.vocab_size,
            max_positions=cfg.max_positions,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            dtype="float32",
            embedding_params=count(self.embedding_keys()),
            layer_params=tuple(count(self.layer_keys(i)) for i in range(cfg.num_layers)),
            output_params=output_params,
            format="gguf",
            quantization="+".join(matrix_types),
        )

    def header_digest(self) -> str:
        """SHA-256 of the file's header (metadata and tensor index, no tensor data): names
        everything derived from the metadata, such as the converted tokenizer."""
        h = hashlib.sha256()
        with self.file.open("rb") as f:
            remaining = self.header_bytes
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ModelError(f"{self._where}: truncated header")
                h.update(chunk)
                remaining -= len(chunk)
        return h.hexdigest()

    def weights_digest(self, start: int, end: int) -> str:
        """`sha256:<hex>` over the stored bytes of layers [start, end) and the facts that
        give them meaning (architecture config, tensor names, types, shapes).

        Two files agree on it exactly when they would serve the same layers bit for bit from
        the same stored values: another quantization or another file differs. Reads only the
        span's tensors (about 0.3 s per 100 MB).
        """
        if not (isinstance(start, int) and isinstance(end, int)) or not (
            0 <= start < end <= self.config.num_layers
        ):
            raise ModelError(f"span [{start}, {end}) is outside the model's "
                             f"{self.config.num_layers} layers")
        h = hashlib.sha256(f"{_DIGEST_VERSION}\n{self._canonical_config()}\n{start} {end}".encode())
        for i in range(start, end):
            for key, _shape in sorted(self.layer_keys(i).values()):
                t = self.tensors[key]
                h.update(f"\n{key} {t.kind.name} {list(t.shape)} {t.data.nbytes}\n".encode())
                h.update(memoryview(np.ascontiguousarray(t.data)).cast("B"))
        return "sha256:" + h.hexdigest()


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row order of a q or k projection ([heads*head_dim, in])."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
