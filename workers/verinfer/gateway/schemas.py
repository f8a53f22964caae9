"""Request bodies of the OpenAI endpoints the gateway serves (the subset verinfer can honour).

Fields OpenAI clients send that verinfer cannot honour (``n > 1``, ``stop`` strings,
``top_p < 1``) are refused with a 400 naming the field, never silently ignored; other extra
fields (``user``, ``presence_penalty`` ...) are accepted and ignored. verinfer's own fields:
``private``, and the routing wishes ``node`` (pin), ``exclude_nodes`` and ``routing``
(``gateway.route``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_LIMIT = 65_536
MAX_SEED = 2**63 - 1
MAX_EXCLUDED = 64
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
Address = Annotated[str, Field(pattern=ADDRESS)]

EXAMPLE_MESSAGES: list[Any] = [{"role": "user", "content": "What is a GPU?"}]


class TextPart(BaseModel):
    """A text part of a message's content list."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage counts."""

    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    user: str | None = None
    private: bool | None = None  # verinfer: encrypt end to end (default: the gateway's setting)
    node: Address | None = Field(
        default=None, description="verinfer: the node to run the job (an eligible node)"
    )
    exclude_nodes: list[Address] | None = Field(
        default=None,
        max_length=MAX_EXCLUDED,
        description="verinfer: nodes not to route the job to",
    )
    routing: Literal["score", "open"] | None = Field(
        default=None,
        description="verinfer: the node by track record, or open to the first claimer "
        "(default: the gateway's setting)",
    )


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "verinfer-tiny-llama", "messages": EXAMPLE_MESSAGES, "max_tokens": 8}
            ]
        },
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "verinfer-tiny-llama", "prompt": "Once upon a time", "max_tokens": 8}
            ]
        },
    )

    prompt: str | list[str]
    echo: bool | None = False
