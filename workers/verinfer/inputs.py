"""Job input bytes (carried on chain) and their deterministic tokenization.

The first byte of a job's input says how the rest is read:

* ``0x00`` + UTF-8 text — a raw prompt, tokenized with the model's tokenizer as is (with the
  special tokens the tokenizer adds itself, e.g. a BOS token);
* ``0x01`` + UTF-8 JSON  — a chat: a non-empty list of ``{"role": str, "content": str}``
  objects, role one of ``system``, ``user``, ``assistant`` and content not empty, rendered with
  the model's own chat template and ``add_generation_prompt=True``.

Anything else (empty input, an empty text prompt, another format byte, invalid UTF-8 or JSON, a
malformed message list, more than the market's ``MAX_INPUT_BYTES``) is an InputFormatError.
An explicit format byte keeps the two forms unambiguous: a text prompt that happens to look
like JSON is still text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

FORMAT_TEXT = 0x00
FORMAT_CHAT = 0x01
MAX_INPUT_BYTES = 8_000  # Market.vy MAX_INPUT_BYTES: a longer input cannot be submitted
CHAT_ROLES = ("system", "user", "assistant")


class InputFormatError(ValueError):
    """Job input bytes that cannot be decoded into a prompt."""


def encode_text_input(text: str) -> bytes:
    """Input bytes for a raw text prompt."""
    return bytes([FORMAT_TEXT]) + text.encode("utf-8")


def encode_chat_input(messages: Sequence[dict[str, str]]) -> bytes:
    """Input bytes for a chat message list (canonical compact JSON)."""
    _check_messages(list(messages))
    body = json.dumps(list(messages), separators=(",", ":"), ensure_ascii=False)
    return bytes([FORMAT_CHAT]) + body.encode("utf-8")


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InputFormatError("chat input must be a non-empty JSON list of messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise InputFormatError(f"chat message {i} must have exactly 'role' and 'content'")
        if not isinstance(msg["role"], str) or not isinstance(msg["content"], str):
            raise InputFormatError(f"chat message {i}: role and content must be strings")
        if msg["role"] not in CHAT_ROLES:
            raise InputFormatError(
                f"chat message {i} has an unknown role {msg['role']!r} "
                f"(use {', '.join(CHAT_ROLES)})"
            )
        if not msg["content"]:
            raise InputFormatError(f"chat message {i} has no content")
    return messages


def check_input(data: bytes) -> None:
    """InputFormatError unless a node can read ``data``: at most ``MAX_INPUT_BYTES``, and
    ``decode_input`` accepts it (what a client checks before it pays)."""
    if len(data) > MAX_INPUT_BYTES:
        raise InputFormatError(
            f"input is {len(data):,} bytes; a job's input holds at most {MAX_INPUT_BYTES:,} bytes"
        )
    decode_input(data)


def decode_input(data: bytes) -> str | list[dict[str, str]]:
    """Text prompt (str) or chat messages (list) carried by the input bytes."""
    if not data:
        raise InputFormatError("input is empty")
    fmt, body = data[0], data[1:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFormatError(f"input is not valid UTF-8: {exc}") from exc
    if fmt == FORMAT_TEXT:
        if not text:
            raise InputFormatError("prompt is empty")
        return text
    if fmt == FORMAT_CHAT:
        try:
            messages = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFormatError(f"chat input is not valid JSON: {exc}") from exc
        return _check_messages(messages)
    raise InputFormatError(f"unknown input format byte 0x{fmt:02x}")


def tokenize_input(tokenizer: Any, data: bytes) -> list[int]:
    """Prompt token ids for input bytes, using the model's tokenizer and chat template."""
    prompt = decode_input(data)
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise InputFormatError("this model has no chat template; send a text prompt")
        rendered = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if not ids:
        raise InputFormatError("input tokenizes to an empty prompt")
    return [int(t) for t in ids]
