"""The one interface every LLM backend implements, its value types and its typed errors.

Workers and the orchestrator only see `LLMBackend`; which model runs behind it (an
OpenAI-compatible server, the embedded GGUF, a scripted test double) is a deployment choice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from fabric.errors import FoAError
from fabric.messages import Usage

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        return cls(role="user", content=content)

    @classmethod
    def assistant(cls, content: str) -> ChatMessage:
        return cls(role="assistant", content=content)


class Completion(BaseModel):
    """One finished generation. `usage.cost` stays 0 here: the worker prices it by its Resources."""

    model_config = ConfigDict(extra="forbid")

    text: str
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    finish_reason: str | None = None
    latency_ms: float = 0.0


class LLMError(FoAError, RuntimeError):
    """Any failure of an LLM call. The message says what happened and what to do about it."""


class LLMUnavailable(LLMError):
    """The backend cannot be reached or refuses service (connection refused, 5xx after retries,
    missing model file, bad credentials)."""


class LLMTimeout(LLMError):
    """The backend did not answer within the configured timeout."""


class LLMOutputError(LLMError):
    """The model answered, but never with output that fits the requested schema."""


@runtime_checkable
class LLMBackend(Protocol):
    """What a worker needs from a model. Implementations must be safe to call concurrently
    from one event loop (they may serialise internally)."""

    name: str

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion: ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: Sequence[str] | None = None,
    ) -> TextStream:
        """Text deltas as they are generated; usage is on the stream once it is exhausted."""
        ...

    async def aclose(self) -> None: ...


class TextStream:
    """An async iterator of text deltas that also carries the call's outcome.

    A plain async generator cannot return its usage, and keeping "the last stream's usage" on
    the backend breaks with concurrent streams, so the producer fills these fields as it goes:
    `usage`, `model`, `finish_reason` and the accumulated `text` are final once iteration ends.
    """

    def __init__(self) -> None:
        self.usage = Usage()
        self.model = ""
        self.finish_reason: str | None = None
        self.text = ""
        self.latency_ms = 0.0
        self._source: AsyncIterator[str] | None = None

    def attach(self, source: AsyncIterator[str]) -> TextStream:
        self._source = source
        return self

    def __aiter__(self) -> TextStream:
        return self

    async def __anext__(self) -> str:
        if self._source is None:
            raise StopAsyncIteration
        delta = await self._source.__anext__()
        self.text += delta
        return delta

    async def aclose(self) -> None:
        """Stop early; releases the connection / the model."""
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()

    def completion(self) -> Completion:
        """The finished stream as a Completion (call after iteration ends)."""
        return Completion(
            text=self.text, usage=self.usage, model=self.model,
            finish_reason=self.finish_reason, latency_ms=self.latency_ms,
        )


def as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The wire form shared by OpenAI-style APIs and llama.cpp."""
    return [{"role": m.role, "content": m.content} for m in messages]


def schema_name(schema: dict[str, Any]) -> str:
    """A name for response_format.json_schema.name: servers require [a-zA-Z0-9_-]{1,64}."""
    raw = str(schema.get("title") or "output")
    clean = "".join(c if c.isalnum() or c in "_-" else "_" for c in raw)[:64]
    return clean or "output"
