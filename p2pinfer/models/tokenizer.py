"""Tokenizers read from a model directory's `tokenizer.json` (Hugging Face `tokenizers`).

Batch 1 and no padding. Encoders are truncated to the model's (or sentence-transformers')
maximum sequence length; decoder prompts are never truncated silently (a too-long prompt is the
caller's error, reported by the head).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from p2pinfer.models.checkpoint import Checkpoint
from p2pinfer.models.errors import ModelError


class Tokenizer:
    """Text <-> token ids for one model."""

    def __init__(
        self, inner: _HFTokenizer, eos_ids: tuple[int, ...], add_special_tokens: bool
    ) -> None:
        self._inner = inner
        self.eos_ids = eos_ids
        self.add_special_tokens = add_special_tokens

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        ckpt = Checkpoint(path)
        file = ckpt.path / "tokenizer.json"
        if not file.is_file():
            raise ModelError(f"{ckpt.path}: tokenizer.json is missing")
        try:
            inner = _HFTokenizer.from_file(str(file))
        except Exception as exc:
            raise ModelError(f"{file}: unreadable tokenizer: {exc}") from exc
        inner.no_padding()
        cfg = ckpt.config
        if ckpt.family.is_decoder:
            inner.no_truncation()
        else:
            limit = cfg.max_positions
            st_file = ckpt.path / "sentence_bert_config.json"
            if st_file.is_file():
                try:
                    limit = min(limit, int(json.loads(st_file.read_text())["max_seq_length"]))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise ModelError(f"{st_file}: unreadable: {exc}") from exc
            inner.enable_truncation(limit)
        eos = cfg.eos_token_id
        eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
        return cls(inner, eos_ids, add_special_tokens=not ckpt.family.is_decoder)

    @property
    def vocab_size(self) -> int:
        return int(self._inner.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids of `text`; special tokens (e.g. [CLS] ... [SEP]) by the model's default."""
        if not isinstance(text, str):
            raise ModelError("text to encode must be a str")
        special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        return list(self._inner.encode(text, add_special_tokens=special).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._inner.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        return self._inner.token_to_id(token)
