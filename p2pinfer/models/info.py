"""What every checkpoint format reports about a model: `ModelInfo`, and compute dtype names.

Both readers (`checkpoint.py` for Hugging Face safetensors directories, `gguf.py` for GGUF files)
describe a model with the same `ModelInfo`, so planning, adverts and cost estimates never care
which format a peer loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from p2pinfer.models.errors import ModelError

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise ModelError(f"dtype {dtype} is not supported (use float32, float16 or bfloat16)")
    return DTYPE_NAMES[dtype]


def safe_name(name: str) -> str:
    """A model name usable in ids and file names: [A-Za-z0-9._-], at most 64 characters."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]


@dataclass(frozen=True)
class ModelInfo:
    """What a peer needs to know about a model to plan, advertise and estimate costs.

    `model_id` is `<name>-<12 hex>`: SHA-256 over the canonical config and the weight index
    (names, dtypes, shapes). It names an architecture and layout, not weight values; peers that
    must agree on values compare weight digests (`weights_digest`) or the weight commitments of
    the model manifest.

    `format` is "safetensors" or "gguf"; `quantization` names the GGUF tensor types that hold
    the layers' matrices (e.g. "Q4_1"), empty for safetensors. `dtype` is the stored float type
    for safetensors and "float32" (the dequantized type) for GGUF.
    """

    model_id: str
    name: str
    family: str
    model_type: str
    path: Path
    is_decoder: bool
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    embedding_params: int
    layer_params: tuple[int, ...]
    output_params: int
    format: str = "safetensors"
    quantization: str = ""

    @property
    def total_params(self) -> int:
        return self.embedding_params + sum(self.layer_params) + self.output_params

    def span_params(self, start: int, end: int) -> int:
        return sum(self.layer_params[start:end])

    def kv_bytes_per_token(self, num_layers: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """KV-cache bytes one position costs across `num_layers` layers (0 for encoders)."""
        if not self.is_decoder:
            return 0
        per_layer = (
            2 * self.num_kv_heads * self.head_dim * torch.tensor([], dtype=dtype).element_size()
        )
        return per_layer * num_layers
