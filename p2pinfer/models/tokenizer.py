"""Tokenizers and chat templates: from a model directory's `tokenizer.json`, or a GGUF file.

Batch 1 and no padding. Encoders are truncated to the model's (or sentence-transformers')
maximum sequence length; decoder prompts are never truncated silently (a too-long prompt is the
caller's error, reported by the head).

A GGUF file stores its tokenizer as metadata (llama.cpp's `tokenizer.ggml.*` keys: tokens,
merges, token types, special ids) and its chat template as a Jinja string. We build a Hugging
Face `tokenizers` byte-level BPE from it once and cache it under the models home, in
`gguf-tokenizers/<SHA-256 of the file's header>/`; a small index keyed by the file's path, size
and modification time finds that entry again without parsing the file. Chat templates render in
Jinja's immutable sandbox (a template comes from a file someone else wrote).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.decoders import DecodeStream

from p2pinfer.models.checkpoint import Checkpoint
from p2pinfer.models.defaults import STAMP_FILE, models_home, write_once
from p2pinfer.models.errors import ModelError
from p2pinfer.models.gguf import GGUFCheckpoint, gguf_file, is_gguf, read_arrays

#: bumped whenever the conversion below changes what it writes
_GGUF_FORMAT_VERSION = 1
_CACHE_DIR = "gguf-tokenizers"
_CHAT_FILE = "chat.json"
_MAX_TEMPLATE_CHARS = 1 << 20
#: GGUF pre-tokenizer names we reproduce -> what runs before the byte-level split
_PRE_TOKENIZERS: dict[str, list[Any]] = {
    "default": [],
    "gpt2": [],
    "smollm": [pre_tokenizers.Digits(individual_digits=True)],
}
#: spellings of end-of-turn tokens; a control token with one of these names also stops a turn
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                "<|end_of_text|>", "</s>")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class TokenStream:
    """Incremental detokenisation of one generation: `push` each new id, print what it returns.

    Characters that span several tokens come out once complete, so the pieces concatenate to
    `decode(all ids)`. One stream per generation (it holds that generation's state).
    """

    def __init__(self, tokenizer: _HFTokenizer, skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def push(self, token_id: int) -> str:
        """The text `token_id` completes ('' while a character is still incomplete)."""
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ModelError(f"token id must be a non-negative int, got {token_id!r}")
        try:
            return self._stream.step(self._tokenizer, token_id) or ""
        except Exception as exc:
            raise ModelError(f"cannot decode token {token_id}: {exc}") from exc


class Tokenizer:
    """Text <-> token ids for one model, and its chat template if it has one."""

    def __init__(
        self,
        inner: _HFTokenizer,
        eos_ids: tuple[int, ...],
        add_special_tokens: bool,
        *,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
        stop_ids: tuple[int, ...] | None = None,
    ) -> None:
        self._inner = inner
        self.eos_ids = eos_ids
        self.add_special_tokens = add_special_tokens
        #: the Jinja chat template (None: the model has none and `apply_chat_template` refuses)
        self.chat_template = chat_template
        #: bos_token / eos_token / ... spellings the template may use
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        #: ids that end a generated turn: the eos ids, then end-of-turn tokens
        self.stop_ids: tuple[int, ...] = stop_ids if stop_ids is not None else eos_ids
        self._template: jinja2.Template | None = None

    @classmethod
    def load(cls, path: str | Path, home: Path | None = None) -> Tokenizer:
        """The tokenizer of the checkpoint at `path` (a directory or a GGUF file). GGUF
        tokenizers are converted on first use and cached under `home` (default: the models
        home, `$P2PINFER_HOME/models`)."""
        if is_gguf(path):
            return _load_gguf(Path(path).expanduser(), home or models_home())
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
        template, specials = _directory_chat(ckpt.path)
        return cls(inner, eos_ids, add_special_tokens=not ckpt.family.is_decoder,
                   chat_template=template, special_tokens=specials,
                   stop_ids=_stop_ids(inner, eos_ids))

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

    def stream(self, skip_special_tokens: bool = True) -> TokenStream:
        """A fresh incremental detokeniser for one generation."""
        return TokenStream(self._inner, skip_special_tokens)

    # -- chat --------------------------------------------------------------------------------

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat template applied to `messages` ([{"role": ..., "content": ...}, ...]).

        With `add_generation_prompt` the text ends where the assistant's answer begins.
        """
        if self.chat_template is None:
            raise ModelError("this model has no chat template (use a plain prompt)")
        checked = _check_messages(messages)
        if self._template is None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
            )
            env.globals["raise_exception"] = _raise_template_error
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
            try:
                self._template = env.from_string(self.chat_template)
            except jinja2.TemplateError as exc:
                raise ModelError(f"the model's chat template does not compile: {exc}") from exc
        try:
            return self._template.render(
                messages=checked, add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except ModelError:
            raise
        except Exception as exc:  # jinja2.TemplateError, SecurityError, a bad filter argument
            raise ModelError(f"the model's chat template failed: {exc}") from exc

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of `render_chat(messages)`. Special tokens the template writes (e.g.
        `<|im_start|>`) become their ids; nothing else is added."""
        return self.encode(self.render_chat(messages, add_generation_prompt),
                           add_special_tokens=False)


    def chat_delta(
        self, cached: Sequence[int], messages: Sequence[Mapping[str, str]]
    ) -> tuple[int, list[int]]:
        """What to run for the next turn of a conversation whose first tokens are cached.

        `cached` are the ids already in the KV caches (earlier prompts and answers, the stop
        token usually not among them); `messages` the whole conversation so far, ending with
        the new user message. Returns `(keep, ids)`: keep the first `keep` cached positions
        (truncate the caches to `keep` if it is less than `len(cached)`) and feed `ids` from
        position `keep`. With a template that renders earlier turns unchanged (ChatML does),
        `keep == len(cached)` and `ids` is only the new turn.
        """
        full = self.apply_chat_template(messages)
        keep = 0
        for a, b in zip(cached, full, strict=False):
            if a != b:
                break
            keep += 1
        if keep == len(full):  # at least one token must run to get the next logits
            keep -= 1
        return keep, full[keep:]


def _raise_template_error(message: str) -> None:
    raise ModelError(f"chat template: {message}")


def _check_messages(messages: object) -> list[dict[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ModelError("messages must be a non-empty list of {role, content} maps")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ModelError(f"message {i} must be a map with role and content")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ModelError(f"message {i}: role must be a non-empty str")
        if not isinstance(content, str):
            raise ModelError(f"message {i}: content must be a str")
        out.append({"role": role, "content": content})
    return out


def _stop_ids(inner: _HFTokenizer, eos_ids: Sequence[int], extra: Sequence[int] = ()) -> tuple[
        int, ...]:
    ids = list(dict.fromkeys([*eos_ids, *extra]))
    specials = {t.content for t in inner.get_added_tokens_decoder().values() if t.special}
    for spelling in _END_OF_TURN:
        token_id = inner.token_to_id(spelling)
        if token_id is not None and spelling in specials and token_id not in ids:
            ids.append(token_id)
    return tuple(ids)


def _directory_chat(path: Path) -> tuple[str | None, dict[str, str]]:
    """Chat template and special-token spellings of a Hugging Face tokenizer directory."""
    file = path / "tokenizer_config.json"
    if not file.is_file():
        return None, {}
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: unreadable: {exc}") from exc
    template = raw.get("chat_template") if isinstance(raw, dict) else None
    jinja_file = path / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    specials = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = raw.get(name) if isinstance(raw, dict) else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            specials[name] = value
    return (template if isinstance(template, str) else None), specials


# -- GGUF ------------------------------------------------------------------------------------


def _load_gguf(path: Path, home: Path) -> Tokenizer:
    file = gguf_file(path)
    if file is None:
        raise ModelError(f"{path}: not a GGUF file")
    cache_root = home / _CACHE_DIR
    try:
        st = file.stat()
    except OSError as exc:
        raise ModelError(f"{file}: {exc}") from exc
    stat_key = hashlib.sha256(
        f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_GGUF_FORMAT_VERSION}".encode()
    ).hexdigest()[:32]
    index = cache_root / "by-file" / f"{stat_key}.json"
    entry = _cached_entry(cache_root, index)
    if entry is None:
        ckpt = GGUFCheckpoint(file)
        digest = ckpt.header_digest()[:32]
        entry = write_once(digest, cache_root, _GGUF_FORMAT_VERSION,
                           lambda work: _convert_gguf(ckpt, work))
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"entry": digest}))
        os.replace(tmp, index)
    return _from_cache(entry, file)


def _cached_entry(cache_root: Path, index: Path) -> Path | None:
    try:
        name = json.loads(index.read_text()).get("entry")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name.isalnum():
        return None
    entry = cache_root / name
    return entry if (entry / _CHAT_FILE).is_file() else None


def _convert_gguf(ckpt: GGUFCheckpoint, work: Path) -> None:
    """Write tokenizer.json and chat.json for the GGUF file of `ckpt` into `work`."""
    where = ckpt.file
    kind = ckpt.metadata("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(f"{where}: tokenizer model {kind!r} is not supported "
                         "(supported: gpt2, i.e. byte-level BPE)")
    pre = ckpt.metadata("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ModelError(f"{where}: tokenizer pre-type {pre!r} is not supported "
                         f"(supported: {', '.join(_PRE_TOKENIZERS)})")
    arrays = read_arrays(where, ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                 "tokenizer.ggml.token_type"))
    tokens = arrays.get("tokenizer.ggml.tokens")
    merges = arrays.get("tokenizer.ggml.merges", [])
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise ModelError(f"{where}: metadata has no tokenizer.ggml.tokens")
    types = arrays.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(types) != len(tokens):
        raise ModelError(f"{where}: tokenizer vocabulary has duplicates or mismatched types")
    pairs = []
    for m in merges:
        parts = m.split(" ") if isinstance(m, str) else []
        if len(parts) != 2:
            raise ModelError(f"{where}: bad tokenizer merge {m!r}")
        pairs.append((parts[0], parts[1]))
    inner = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                                    byte_fallback=False))
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [*_PRE_TOKENIZERS[pre],
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    inner.decoder = decoders.ByteLevel()
    inner.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                              for i, t in enumerate(types) if t == _CONTROL])
    inner.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                      for i, t in enumerate(types) if t == _USER_DEFINED])
    inner.save(str(work / "tokenizer.json"))

    def token(key: str) -> int | None:
        value = ckpt.metadata(f"tokenizer.ggml.{key}")
        return value if isinstance(value, int) and 0 <= value < len(tokens) else None

    eos = [i for i in (token("eos_token_id"),) if i is not None]
    turn_end = [i for i in (token("eot_token_id"), token("eom_token_id")) if i is not None]
    template = ckpt.metadata("tokenizer.chat_template")
    if template is not None and (not isinstance(template, str)
                                 or len(template) > _MAX_TEMPLATE_CHARS):
        raise ModelError(f"{where}: tokenizer.chat_template is not a string of at most "
                         f"{_MAX_TEMPLATE_CHARS} characters")
    specials = {name: tokens[i] for name, key in (
        ("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"),
    ) if (i := token(key)) is not None}
    chat = {
        "format_version": _GGUF_FORMAT_VERSION,
        "source": ckpt.file.name,
        "eos_ids": eos,
        "stop_ids": list(_stop_ids(inner, eos, turn_end)),
        "chat_template": template,
        "special_tokens": specials,
    }
    (work / _CHAT_FILE).write_text(json.dumps(chat, indent=1))
    # the stamp `write_once` looks for
    (work / STAMP_FILE).write_text(
        json.dumps({"format_version": _GGUF_FORMAT_VERSION}))


def _from_cache(entry: Path, file: Path) -> Tokenizer:
    try:
        chat = json.loads((entry / _CHAT_FILE).read_text(encoding="utf-8"))
        inner = _HFTokenizer.from_file(str(entry / "tokenizer.json"))
    except Exception as exc:
        raise ModelError(f"{entry}: damaged tokenizer cache for {file} ({exc}); delete it") from exc
    inner.no_padding()
    inner.no_truncation()
    return Tokenizer(
        inner, tuple(chat["eos_ids"]), add_special_tokens=False,
        chat_template=chat["chat_template"], special_tokens=chat["special_tokens"],
        stop_ids=tuple(chat["stop_ids"]),
    )
