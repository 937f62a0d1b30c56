"""Turning chat messages into the prompt a model continues.

`render_chat` is the one call site where a model's own chat template will apply. Until models
carry one, every model gets the fallback template below, which marks each message with its role
and ends with the assistant's marker, so the model's continuation is the reply:

    <|system|>
    You are terse.
    <|user|>
    Hello
    <|assistant|>

(one line per marker, the message text after it, a newline after every message).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


def render_fallback(messages: list[ChatMessage]) -> str:
    parts = [f"<|{m.role}|>\n{m.content}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def render_chat(messages: list[ChatMessage]) -> str:
    """The prompt for `messages` (the fallback template until models carry their own)."""
    return render_fallback(messages)
