"""Turning chat messages into the prompt a model continues.

A model that carries a chat template (a GGUF's `tokenizer.chat_template`, e.g. SmolLM2's
ChatML) gets its own (`Requester.chat_prompt`); any other model gets the fallback template
below, which marks each message with its role and ends with the assistant's marker, so the
model's continuation is the reply:

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
    """The prompt for `messages` under the fallback template."""
    return render_fallback(messages)
