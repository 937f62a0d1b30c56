"""Reading Hugging Face checkpoints from a local directory, one tensor at a time.

A directory holds `config.json` and either `model.safetensors`, or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> file). We read every file's header
(names, dtypes, shapes; no tensor data) once, check each tensor the config implies for its
shape, and afterwards load exactly the tensors a caller asks for with `safe_open(...)
.get_tensor(name)`, so a span of layers costs memory for those layers only.

Safetensors format: https://github.com/huggingface/safetensors (8-byte header length, JSON
header, raw little-endian data). Nothing is downloaded; `pytorch_model.bin` (pickle) is refused.
GGUF files are read by `gguf.py` with the same calls; `open_checkpoint` picks the reader.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from p2pinfer.models.bert import FAMILY as BERT
from p2pinfer.models.bert import read_pooling
from p2pinfer.models.errors import ModelError
from p2pinfer.models.family import LM_HEAD_KEY, ArchConfig, Family, Shapes
from p2pinfer.models.gguf import GGUFCheckpoint, is_gguf
from p2pinfer.models.gpt2 import FAMILY as GPT2
from p2pinfer.models.info import DTYPE_NAMES, ModelInfo, safe_name
from p2pinfer.models.llama import FAMILY as LLAMA
from p2pinfer.models.mlp import FAMILY as MLP

FAMILIES: tuple[Family, ...] = (LLAMA, GPT2, BERT, MLP)

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_MAX_JSON_BYTES = 64 << 20
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_commit_hash"}
_DIGEST_VERSION = "p2pinfer-safetensors-weights-v1"


def family_for(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ModelError(f"model type {model_type!r} is not supported (supported: {known})")


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _read_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise ModelError(f"{path}: {what} is too large")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: {path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable {what}: {exc}") from exc


def _read_header(file: Path) -> dict[str, TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    try:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                sl = f.get_slice(key)
                entries[key] = TensorEntry(file, sl.get_dtype(), tuple(sl.get_shape()))
    except FileNotFoundError:
        raise ModelError(f"{file.parent}: weight file {file.name} is missing") from None
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError
        raise ModelError(f"{file}: not a readable safetensors file: {exc}") from exc
    return entries


class Checkpoint:
    """An opened checkpoint directory: config, family, weight index. Loads tensors on request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise ModelError(f"model directory {self.path} does not exist")
        raw = _read_json(self.path / "config.json", "config.json")
        if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
            raise ModelError(f"{self.path}/config.json has no model_type")
        self.raw_config: dict[str, Any] = raw
        self.family = family_for(raw["model_type"])
        parse_input = dict(raw)
        if self.family is BERT:
            parse_input["p2pinfer_pooling"] = read_pooling(self.path)
        try:
            self.config: ArchConfig = self.family.parse_config(parse_input)
        except ModelError as exc:
            raise ModelError(f"{self.path}/config.json: {exc}") from None
        if self.config.num_layers <= 0 or self.config.hidden_size <= 0:
            raise ModelError(f"{self.path}/config.json: layer count and hidden size must be > 0")
        self.entries = self._index()
        self.base = self._find_base()
        self.loaded_keys: list[str] = []
        self._check_shapes()

    # -- index ---------------------------------------------------------------------------------

    def _index(self) -> dict[str, TensorEntry]:
        index_file = self.path / "model.safetensors.index.json"
        entries: dict[str, TensorEntry] = {}
        if index_file.is_file():
            index = _read_json(index_file, "weight index")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise ModelError(f"{index_file}: no weight_map")
            files = sorted(set(weight_map.values()))
            for name in files:
                if not isinstance(name, str) or "/" in name or name.startswith("."):
                    raise ModelError(f"{index_file}: bad shard name {name!r}")
                entries |= _read_header(self.path / name)
            missing = [k for k in weight_map if k not in entries]
            if missing:
                raise ModelError(f"{index_file}: {missing[0]} is listed but not in its shard")
            return entries
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ModelError(
                f"{self.path}: no *.safetensors weights (pickle checkpoints are not loaded; "
                "convert them to safetensors)"
            )
        for file in files:
            header = _read_header(file)
            dup = entries.keys() & header.keys()
            if dup:
                raise ModelError(f"{self.path}: tensor {min(dup)} appears in two files")
            entries |= header
        return entries

    def _find_base(self) -> str:
        for prefix in self.family.base_prefixes:
            if prefix + self.family.probe_key in self.entries:
                return prefix
        raise ModelError(
            f"{self.path}: weights have no {self.family.probe_key}: "
            f"not a {self.family.name} checkpoint or missing weights"
        )

    # -- weight layout -------------------------------------------------------------------------

    def embedding_keys(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self._group("", self.family.embedding_shapes(self.config))

    def layer_keys(self, layer: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        return self._group(self.family.layer_prefix(layer),
                           self.family.layer_shapes(self.config, layer))

    def output_keys(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        keys = self._group("", self.family.output_shapes(self.config))
        if self.family.is_decoder:
            shape = (self.config.vocab_size, self.config.hidden_size)
            if LM_HEAD_KEY in self.entries:
                keys[LM_HEAD_KEY] = (LM_HEAD_KEY, shape)
            elif self.config.tie_word_embeddings and self.family.tied_key:
                keys[LM_HEAD_KEY] = (self.base + self.family.tied_key, shape)
            else:
                raise ModelError(
                    f"{self.path}: {LM_HEAD_KEY} is missing and the config does not tie it "
                    "to the embeddings"
                )
        return keys

    def _group(self, prefix: str, shapes: Shapes) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {name: (self.base + prefix + name, shape) for name, shape in shapes.items()}

    def _check_shapes(self) -> None:
        groups = [self.embedding_keys(), self.output_keys()]
        groups += [self.layer_keys(i) for i in range(self.config.num_layers)]
        for group in groups:
            for key, shape in group.values():
                entry = self.entries.get(key)
                if entry is None:
                    raise ModelError(
                        f"{self.path}: weight {key} is missing (config.json describes "
                        f"{self.config.num_layers} layers of a {self.family.name} model)"
                    )
                if entry.shape != shape:
                    raise ModelError(
                        f"{self.path}: config.json does not match the weights: {key} has shape "
                        f"{list(entry.shape)}, the config implies {list(shape)}"
                    )
                if entry.dtype not in _DTYPES:
                    raise ModelError(
                        f"{self.path}: weight {key} has unsupported dtype {entry.dtype}"
                    )
        layer_re = re.compile(
            re.escape(self.base + self.family.layer_prefix(0)).replace("0", r"(\d+)", 1)
        )
        for key in self.entries:
            m = layer_re.match(key)
            if m and int(m.group(1)) >= self.config.num_layers:
                raise ModelError(
                    f"{self.path}: config.json says {self.config.num_layers} layers but the "
                    f"weights have {key}"
                )

    # -- loading -------------------------------------------------------------------------------

    def load(
        self, keys: dict[str, tuple[str, tuple[int, ...]]], dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Load the named tensors (local name -> (checkpoint key, shape)) as `dtype`."""
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for local, (key, _shape) in keys.items():
            by_file.setdefault(self.entries[key].file, []).append((local, key))
        out: dict[str, torch.Tensor] = {}
        for file, items in by_file.items():
            try:
                with safe_open(str(file), framework="pt") as f:
                    for local, key in items:
                        tensor = f.get_tensor(key)
                        self.loaded_keys.append(key)
                        out[local] = tensor if tensor.dtype == dtype else tensor.to(dtype)
            except Exception as exc:
                raise ModelError(f"{file}: failed to read weights: {exc}") from exc
        return out

    def weights_digest(self, start: int, end: int) -> str:
        """See `weights_digest` (module level): layers [start, end) of this checkpoint."""
        if not (isinstance(start, int) and isinstance(end, int)) or not (
            0 <= start < end <= self.config.num_layers
        ):
            raise ModelError(f"span [{start}, {end}) is outside the model's "
                             f"{self.config.num_layers} layers")
        h = hashlib.sha256(f"{_DIGEST_VERSION}\n{self._canonical_config()}\n{start} {end}".encode())
        for i in range(start, end):
            for key, _shape in sorted(self.layer_keys(i).values()):
                entry = self.entries[key]
                try:
                    with safe_open(str(entry.file), framework="pt") as f:
                        tensor = f.get_tensor(key).contiguous()
                except Exception as exc:
                    raise ModelError(f"{entry.file}: failed to read weights: {exc}") from exc
                data = tensor.view(torch.uint8).numpy() if tensor.numel() else b""
                h.update(f"\n{key} {entry.dtype} {list(entry.shape)} {len(data)}\n".encode())
                h.update(memoryview(data).cast("B") if len(data) else b"")
        return "sha256:" + h.hexdigest()

    def _canonical_config(self) -> str:
        canonical = {k: v for k, v in self.raw_config.items() if k not in _VOLATILE_CONFIG_KEYS}
        return json.dumps(canonical, sort_keys=True)

    def info(self) -> ModelInfo:
        cfg = self.config
        digest = hashlib.sha256(self._canonical_config().encode())
        for key in sorted(self.entries):
            e = self.entries[key]
            digest.update(f"\n{key} {e.dtype} {list(e.shape)}".encode())
        name = str(
            self.raw_config.get("p2pinfer_name")
            or str(self.raw_config.get("_name_or_path") or "").rstrip("/").split("/")[-1]
            or cfg.model_type
        )
        name = safe_name(name)
        emb_key = self.base + self.family.probe_key

        def count(group: dict[str, tuple[str, tuple[int, ...]]]) -> int:
            return sum(self.entries[k].numel for k, _ in group.values())

        output_group = self.output_keys()
        output_params = count(output_group)
        if output_group.get(LM_HEAD_KEY, ("",))[0] == emb_key:
            output_params -= self.entries[emb_key].numel  # tied: counted with the embeddings
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
            dtype=self._dtype(),
            embedding_params=count(self.embedding_keys()),
            layer_params=tuple(count(self.layer_keys(i)) for i in range(cfg.num_layers)),
            output_params=output_params,
        )

    def _dtype(self) -> str:
        declared = self.raw_config.get("dtype") or self.raw_config.get("torch_dtype")
        if isinstance(declared, str) and declared in DTYPE_NAMES.values():
            return declared
        entry = self.entries[self.base + self.family.probe_key]
        return {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(entry.dtype, "float32")


#: either checkpoint format; both offer the calls `span.py` and `tokenizer.py` use
AnyCheckpoint = Checkpoint | GGUFCheckpoint


def open_checkpoint(path: str | Path) -> AnyCheckpoint:
    """A safetensors directory, a `.gguf` file, or a directory holding one `.gguf` file."""
    return GGUFCheckpoint(path) if is_gguf(path) else Checkpoint(path)


def load_model_info(path: str | Path) -> ModelInfo:
    """Read config and weight headers of a local checkpoint (no tensor data) and describe it."""
    return open_checkpoint(path).info()


def weights_digest(path: str | Path, start: int, end: int) -> str:
    """`sha256:<hex>` of the weights layers [start, end) of the checkpoint at `path` serve:
    their stored bytes, names, types and shapes, and the architecture config. Reads only those
    layers. Two peers with equal digests serve bit-identical stored weights."""
    return open_checkpoint(path).weights_digest(start, end)
