"""Tokens for feature models: a byte-level vocabulary with a seeded embedding table.

The provable MLP models (mlp.py) take features, not tokens, and have no vocabulary. To
generate text with them (a proven generation, token by token, in critical mode) the requester
needs token embeddings and a head, which stay on its own machine (split learning). A model
without them gets this vocabulary: the 256 byte values plus an end-of-sequence token, each
embedded as a row of a table drawn from a generator seeded by the model id (the same table on
every machine), and logits by the tied head `hidden @ table.T`. Text is UTF-8 bytes; a chat is
one `R:content` line per message (R the role's initial, e.g. `U:hi`) followed by `A:` (every
token is a proven step, so the format is short). With random weights the text is noise:
what such a generation shows is the mechanics (every token's step proven), not language.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

EOS = 256
VOCAB_SIZE = 257
#: the chat format's name, in place of a Jinja template
CHAT_TEMPLATE = "byte-chat"


class ByteVocabulary:
    """Text <-> byte tokens, and their embeddings and logits for a model of width `hidden`."""

    eos_ids: tuple[int, ...] = (EOS,)
    stop_ids: tuple[int, ...] = (EOS,)
    chat_template: str | None = CHAT_TEMPLATE
    add_special_tokens = False

    def __init__(self, model_id: str, hidden: int) -> None:
        if not 1 <= hidden <= 1 << 14:
            raise ValueError("hidden must be in 1..16384")
        seed = int.from_bytes(hashlib.sha256(b"p2pinfer/byte-vocab/" + model_id.encode())
                              .digest()[:8], "little")
        self.hidden = hidden
        self.table = np.random.default_rng(seed).normal(0.0, 1.0, (VOCAB_SIZE, hidden))
        self.special_tokens: dict[str, str] = {"eos_token": "<|eos|>"}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < EOS).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = "".join(f"{m.get('role', 'user')[:1].upper()}:{m.get('content', '')}\n"
                       for m in messages)
        return self.encode(text + "A:")

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """(tokens, hidden) float64 features of token ids."""
        idx = np.asarray(list(ids), dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= VOCAB_SIZE)):
            raise ValueError(f"token ids must be in 0..{VOCAB_SIZE - 1}")
        return self.table[idx]

    def logits(self, hidden: np.ndarray) -> torch.Tensor:
        """The last row's logits over the vocabulary (tied head)."""
        h = np.asarray(hidden, dtype=np.float64).reshape(-1, self.hidden)[-1]
        return torch.from_numpy(self.table @ h)
