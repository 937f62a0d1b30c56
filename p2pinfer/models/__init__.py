"""Models: checkpoints, layer spans, KV caches, sampling, split-learning noise.

`checkpoint` reads Hugging Face safetensors checkpoints header-first and `gguf` GGUF files
(memory-mapped, dequantized per tensor); both load only the tensors asked for; `llama`, `gpt2`, `bert` are the model families, one readable file each; `span` cuts a
model into the requester's head and tail and the layer spans peers serve; `cache` holds per-session
KV caches; `tokenizer` (with chat templates), `sampling` turn text into tokens and logits into tokens; `noise` adds
clipped Gaussian noise to boundary activations with its (epsilon, delta); `defaults` ships the
models the demo runs without a download. No networking, no global state; batch size 1 throughout.
"""

from p2pinfer.models.cache import KVCache as KVCache
from p2pinfer.models.checkpoint import Checkpoint as Checkpoint
from p2pinfer.models.checkpoint import load_model_info as load_model_info
from p2pinfer.models.checkpoint import open_checkpoint as open_checkpoint
from p2pinfer.models.checkpoint import weights_digest as weights_digest
from p2pinfer.models.defaults import LLAMA_108M as LLAMA_108M
from p2pinfer.models.defaults import MINILM as MINILM
from p2pinfer.models.defaults import SMOLLM2 as SMOLLM2
from p2pinfer.models.defaults import TINY_LLAMA as TINY_LLAMA
from p2pinfer.models.defaults import DefaultModel as DefaultModel
from p2pinfer.models.defaults import default_model_path as default_model_path
from p2pinfer.models.defaults import default_models as default_models
from p2pinfer.models.defaults import minilm_path as minilm_path
from p2pinfer.models.defaults import smollm2_path as smollm2_path
from p2pinfer.models.errors import CacheError as CacheError
from p2pinfer.models.errors import ModelError as ModelError
from p2pinfer.models.errors import SpanInputError as SpanInputError
from p2pinfer.models.gguf import GGUFCheckpoint as GGUFCheckpoint
from p2pinfer.models.info import ModelInfo as ModelInfo
from p2pinfer.models.noise import BoundaryNoise as BoundaryNoise
from p2pinfer.models.noise import PrivacyCost as PrivacyCost
from p2pinfer.models.noise import clip_rows as clip_rows
from p2pinfer.models.noise import gaussian_delta as gaussian_delta
from p2pinfer.models.noise import gaussian_epsilon as gaussian_epsilon
from p2pinfer.models.noise import gaussian_sigma as gaussian_sigma
from p2pinfer.models.sampling import Sampler as Sampler
from p2pinfer.models.sampling import SamplingParams as SamplingParams
from p2pinfer.models.sampling import generate as generate
from p2pinfer.models.span import ClientHead as ClientHead
from p2pinfer.models.span import ClientTail as ClientTail
from p2pinfer.models.span import LayerSpan as LayerSpan
from p2pinfer.models.span import LocalModel as LocalModel
from p2pinfer.models.span import full_forward as full_forward
from p2pinfer.models.tokenizer import Tokenizer as Tokenizer
from p2pinfer.models.tokenizer import TokenStream as TokenStream

__all__ = [
    "LLAMA_108M",
    "MINILM",
    "SMOLLM2",
    "TINY_LLAMA",
    "BoundaryNoise",
    "CacheError",
    "Checkpoint",
    "ClientHead",
    "ClientTail",
    "DefaultModel",
    "GGUFCheckpoint",
    "KVCache",
    "LayerSpan",
    "LocalModel",
    "ModelError",
    "ModelInfo",
    "PrivacyCost",
    "Sampler",
    "SamplingParams",
    "SpanInputError",
    "TokenStream",
    "Tokenizer",
    "clip_rows",
    "default_model_path",
    "default_models",
    "full_forward",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_sigma",
    "generate",
    "load_model_info",
    "minilm_path",
    "open_checkpoint",
    "smollm2_path",
    "weights_digest",
]
