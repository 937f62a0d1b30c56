"""Request bodies of the OpenAI-compatible endpoints, checked field by field.

Every wrong field is a `BadRequest` naming the field. Fields the API does not know are ignored
(clients send vendor extras); known fields of the wrong type or out of range are refused.
p2pinfer's own options travel in one extra field, `"p2pinfer": {"mode", "redundancy",
"min_tee", "tolerance"}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pinfer.api.chat import ROLES, ChatMessage, render_chat
from p2pinfer.api.errors import BadRequest
from p2pinfer.config import TEE_LEVELS

MODES = ("general", "critical")
MAX_STOP = 4
MAX_EMBED_INPUTS = 64
#: the largest vote tolerance a task may carry (the runtime refuses larger ones)
MAX_TOLERANCE = 0.5


@dataclass(frozen=True)
class P2PInferOptions:
    """Per-request overrides of the node's inference settings; None keeps the node's."""

    mode: str | None = None
    redundancy: int | None = None
    min_tee: str | None = None
    tolerance: float | None = None


@dataclass(frozen=True)
class SamplingRequest:
    model: str
    prompt: str
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    options: P2PInferOptions = field(default_factory=P2PInferOptions)
    #: chat messages (chat completions), kept for the record
    messages: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    encoding_format: str
    options: P2PInferOptions = field(default_factory=P2PInferOptions)


def _num(body: dict[str, Any], key: str, default: float, lo: float, hi: float,
         prefix: str = "") -> float:
    value, name = body.get(key), prefix + key
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be a number", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return float(value)


def _int(body: dict[str, Any], key: str, lo: int, hi: int, prefix: str = "") -> int | None:
    value, name = body.get(key), prefix + key
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be a boolean", param=key)
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", param="model")
    return model


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest(f"'stop' must be a string or a list of at most {MAX_STOP} non-empty "
                         "strings", param="stop")
    return tuple(stop)


def _n(body: dict[str, Any]) -> None:
    n = _int(body, "n", 1, 128)
    if n is not None and n != 1:
        raise BadRequest("only n = 1 is supported", param="n", code="unsupported_value")


def _options(body: dict[str, Any]) -> P2PInferOptions:
    raw = body.get("p2pinfer")
    if raw is None:
        return P2PInferOptions()
    if not isinstance(raw, dict):
        raise BadRequest("'p2pinfer' must be an object", param="p2pinfer")
    unknown = set(raw) - {"mode", "redundancy", "min_tee", "tolerance"}
    if unknown:
        raise BadRequest(f"unknown p2pinfer option(s): {', '.join(sorted(unknown))}",
                         param="p2pinfer")
    mode = raw.get("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"'p2pinfer.mode' must be one of {', '.join(MODES)}",
                         param="p2pinfer.mode")
    min_tee = raw.get("min_tee")
    if min_tee is not None and min_tee not in TEE_LEVELS:
        raise BadRequest(f"'p2pinfer.min_tee' must be one of {', '.join(TEE_LEVELS)}",
                         param="p2pinfer.min_tee")
    redundancy = _int(raw, "redundancy", 1, 9, "p2pinfer.")
    tolerance = raw.get("tolerance")
    if tolerance is not None:
        tolerance = _num(raw, "tolerance", 0.0, 0.0, MAX_TOLERANCE, "p2pinfer.")
        if tolerance <= 0:
            raise BadRequest("'p2pinfer.tolerance' must be positive", param="p2pinfer.tolerance")
    return P2PInferOptions(mode=mode, redundancy=redundancy, min_tee=min_tee, tolerance=tolerance)


def _sampling(body: dict[str, Any], model: str, prompt: str,
              messages: tuple[ChatMessage, ...]) -> SamplingRequest:
    _n(body)
    max_tokens = _int(body, "max_completion_tokens", 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, 1 << 20)
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    include_usage = bool(opts and opts.get("include_usage") is True)
    seed = _int(body, "seed", -(1 << 63), (1 << 63) - 1)
    return SamplingRequest(
        model=model, prompt=prompt, max_tokens=max_tokens,
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0), stop=_stop(body), seed=seed, stream=stream,
        include_usage=include_usage, options=_options(body), messages=messages)


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def parse_chat(body: Any) -> SamplingRequest:
    body = _require_object(body)
    model = _model(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}] needs a role of {', '.join(ROLES)}",
                             param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text is supported
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                        part.get("text"), str):
                    raise BadRequest(f"messages[{i}].content: only text parts are supported",
                                     param=f"messages[{i}].content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string",
                             param=f"messages[{i}].content")
        messages.append(ChatMessage(m["role"], content))
    return _sampling(body, model, render_chat(messages), tuple(messages))


def parse_completion(body: Any) -> SamplingRequest:
    body = _require_object(body)
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string (or a list of one)",
                         param="prompt")
    if body.get("echo") not in (None, False):
        raise BadRequest("'echo' is not supported", param="echo", code="unsupported_value")
    req = _sampling(body, model, prompt, ())
    if req.max_tokens is None:  # the completions endpoint's documented default
        req = SamplingRequest(**{**req.__dict__, "max_tokens": 16})
    return req


def parse_embeddings(body: Any) -> EmbeddingRequest:
    body = _require_object(body)
    model = _model(body)
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if (not isinstance(items, list) or not items or len(items) > MAX_EMBED_INPUTS
            or not all(isinstance(t, str) and t for t in items)):
        raise BadRequest(f"'input' must be a non-empty string or a list of 1 to "
                         f"{MAX_EMBED_INPUTS} non-empty strings", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'",
                         param="encoding_format")
    if body.get("dimensions") is not None:
        raise BadRequest("'dimensions' is not supported", param="dimensions",
                         code="unsupported_value")
    return EmbeddingRequest(model=model, inputs=tuple(items), encoding_format=fmt,
                            options=_options(body))
