"""`ScriptedLLM`: a deterministic stand-in FOR UNIT TESTS OF ORCHESTRATION LOGIC ONLY.

It lets a test pin down exactly what "the model" answers (merge rules, cycle breaking, early
stop, timeouts, budget stops) without seconds of CPU per call and without randomness. It knows
nothing about language; it is never what a user runs, and no code path outside tests should
construct it. Tokens are approximated as whitespace-separated words.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fabric.llm.base import ChatMessage, Completion, LLMError, TextStream
from fabric.messages import Usage

#: (messages, json_schema) -> the answer text; may raise an LLMError to simulate a failure.
Responder = Callable[[Sequence[ChatMessage], "dict[str, Any] | None"], str]
#: A queued answer: the text, or an exception to raise for that call.
Scripted = str | BaseException


@dataclass(frozen=True)
class ScriptedCall:
    """One request the scripted backend received, for assertions in tests."""

    messages: tuple[ChatMessage, ...]
    json_schema: dict[str, Any] | None
    max_tokens: int
    temperature: float


def count_tokens(text: str) -> int:
    return len(text.split())


class ScriptedLLM:
    """Answers from a callable or a queue. Counts calls and (word) tokens; truncates answers
    longer than max_tokens words with finish_reason="length", like a real model would."""

    def __init__(
        self,
        responses: Responder | Iterable[Scripted],
        *,
        latency_s: float = 0.0,
        name: str = "scripted",
    ) -> None:
        self.name = name
        self.latency_s = latency_s
        self._responder: Responder | None = responses if callable(responses) else None
        self._queue: deque[Scripted] = deque() if callable(responses) else deque(responses)
        self.calls: list[ScriptedCall] = []
        self.usage = Usage()
        self.closed = False

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def push(self, *answers: Scripted) -> None:
        """Queue more answers (queue mode)."""
        self._queue.extend(answers)

    def _answer(self, messages: Sequence[ChatMessage], json_schema: dict[str, Any] | None) -> str:
        if self._responder is not None:
            return self._responder(messages, json_schema)
        if not self._queue:
            raise LLMError(f"{self.name}: the script has no answer left for call {len(self.calls)}")
        item = self._queue.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        if self.closed:
            raise LLMError(f"{self.name} is closed")
        self.calls.append(ScriptedCall(tuple(messages), json_schema, max_tokens, temperature))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = self._answer(messages, json_schema)
        for marker in stop or ():
            if marker in text:
                text = text[: text.index(marker)]
        words = text.split()
        finish = "stop"
        if len(words) > max_tokens:
            text, finish = " ".join(words[:max_tokens]), "length"
        usage = Usage(
            input_tokens=sum(count_tokens(m.content) for m in messages),
            output_tokens=min(len(words), max_tokens),
            calls=1,
        )
        self.usage = self.usage + usage
        return Completion(text=text, usage=usage, model=self.name, finish_reason=finish,
                          latency_ms=self.latency_s * 1000)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: Sequence[str] | None = None,
    ) -> TextStream:
        out = TextStream()
        return out.attach(self._stream(out, messages, max_tokens, temperature, stop))

    async def _stream(
        self,
        out: TextStream,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> AsyncIterator[str]:
        done = await self.complete(messages, max_tokens=max_tokens, temperature=temperature, stop=stop)
        for i, word in enumerate(done.text.split(" ")):
            yield word if i == 0 else " " + word
        out.usage, out.model, out.finish_reason = done.usage, done.model, done.finish_reason

    async def aclose(self) -> None:
        self.closed = True
