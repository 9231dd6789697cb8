"""The OpenAI-compatible backend against a real server process (llama_cpp.server on the
embedded GGUF), plus a real flaky HTTP proxy in front of it for the retry paths."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from fabric.llm import LLMConfig, backend_for
from fabric.llm.base import ChatMessage, LLMTimeout, LLMUnavailable
from fabric.llm.openai_compat import OpenAICompatBackend, normalise_base_url, parse_retry_after
from fabric.llm.structured import complete_json
from fabric.settings import Settings
from tests.llm_server import FlakyProxy, LlamaServer, free_port, llm_server_fixture  # noqa: F401 - registers the llm_server fixture

QUESTION = [ChatMessage.system("Answer briefly."), ChatMessage.user("What is the capital of France?")]


class City(BaseModel):
    city: str
    country: str


def fast(base_url: str, **kw: object) -> OpenAICompatBackend:
    """Short backoff so retry tests take milliseconds, not seconds."""
    return OpenAICompatBackend(base_url, "smollm2", backoff_base_s=0.01, backoff_max_s=0.05, seed=1, **kw)  # type: ignore[arg-type]  # **kw: the tests pass only keyword options


@pytest.mark.slow
def test_plain_completion_reads_usage(llm_server: LlamaServer) -> None:
    async def run() -> None:
        async with fast(llm_server.base_url) as llm:
            done = await llm.complete(QUESTION, max_tokens=16, temperature=0.0)
        assert done.text.strip()
        assert done.usage.input_tokens > 10 and 0 < done.usage.output_tokens <= 16
        assert done.usage.calls == 1 and done.usage.cost == 0.0
        assert done.finish_reason in ("stop", "length") and done.latency_ms > 0

    asyncio.run(run())


@pytest.mark.slow
def test_streaming_yields_deltas_and_usage(llm_server: LlamaServer) -> None:
    async def run() -> None:
        async with fast(llm_server.base_url) as llm:
            stream = llm.stream([ChatMessage.user("Name three colours.")], max_tokens=12, temperature=0.0)
            parts = [p async for p in stream]
        assert len(parts) > 1, "a stream should arrive in several pieces"
        assert "".join(parts) == stream.text and stream.text.strip()
        assert 0 < stream.usage.output_tokens <= 12 and stream.usage.input_tokens > 0
        assert stream.finish_reason in ("stop", "length")

    asyncio.run(run())


@pytest.mark.slow
def test_json_schema_output_parses_and_mode_is_remembered(llm_server: LlamaServer) -> None:
    """llama-cpp-python's server refuses response_format json_schema but accepts json_object
    with a schema: the backend steps down once and remembers it."""
    ask = [ChatMessage.user("Paris is the capital of which country? Reply as JSON with city and country.")]

    async def run() -> None:
        with FlakyProxy(llm_server.base_url, failures=0) as proxy:
            async with fast(proxy.base_url) as llm:
                city, usage, attempts = await complete_json(llm, ask, City, max_tokens=40)
                first_round = list(proxy.seen)
                again, _, _ = await complete_json(llm, ask, City, max_tokens=40)
                assert llm.json_mode == "json_object_schema"
        assert isinstance(city, City) and isinstance(again, City)
        assert attempts == 1 and usage.output_tokens > 0
        assert first_round == [500, 200], "json_schema refused once, then json_object+schema"
        assert proxy.seen[len(first_round):] == [200], "the refused mode is not tried again"

    asyncio.run(run())


@pytest.mark.slow
def test_retries_5xx_then_succeeds(llm_server: LlamaServer) -> None:
    async def run() -> None:
        with FlakyProxy(llm_server.base_url, failures=2, status=503) as proxy:
            async with fast(proxy.base_url) as llm:
                done = await llm.complete(QUESTION, max_tokens=8)
                assert llm.retries_done == 2
        assert done.text.strip()
        assert proxy.seen == [503, 503, 200]

    asyncio.run(run())


@pytest.mark.slow
def test_honours_retry_after(llm_server: LlamaServer) -> None:
    async def run() -> float:
        with FlakyProxy(llm_server.base_url, failures=1, status=429, retry_after="1") as proxy:
            async with fast(proxy.base_url) as llm:
                started = time.perf_counter()
                await llm.complete(QUESTION, max_tokens=4)
                return time.perf_counter() - started

    assert asyncio.run(run()) >= 1.0


def test_gives_up_after_max_retries_with_a_clear_error() -> None:
    async def run() -> None:
        with FlakyProxy("http://127.0.0.1:9", failures=100, status=503) as proxy:
            async with fast(proxy.base_url, max_retries=2) as llm:
                with pytest.raises(LLMUnavailable, match="kept failing after 3 attempts.*503.*overloaded"):
                    await llm.complete(QUESTION, max_tokens=4)
            assert proxy.seen == [503, 503, 503]

    asyncio.run(run())


def test_long_retry_after_is_not_waited_out() -> None:
    async def run() -> None:
        with FlakyProxy("http://127.0.0.1:9", failures=5, status=429, retry_after="3600") as proxy:
            async with fast(proxy.base_url) as llm:
                with pytest.raises(LLMUnavailable, match="retry after 3600 s"):
                    await llm.complete(QUESTION, max_tokens=4)
            assert proxy.seen == [429]

    asyncio.run(run())


def test_nothing_listening_is_a_clear_error() -> None:
    async def run() -> None:
        async with fast(f"http://127.0.0.1:{free_port()}", max_retries=1) as llm:
            expected = r"cannot reach the LLM server .* is it running\? set FOA_LLM_BASE_URL"
            with pytest.raises(LLMUnavailable, match=expected):
                await llm.complete(QUESTION, max_tokens=4)
            with pytest.raises(LLMUnavailable, match="cannot reach"):
                async for _ in llm.stream(QUESTION, max_tokens=4):
                    pass

    asyncio.run(run())


@pytest.mark.slow
def test_wrong_path_says_not_found(llm_server: LlamaServer) -> None:
    async def run() -> None:
        async with fast(llm_server.base_url.removesuffix("/v1") + "/nope") as llm:
            with pytest.raises(LLMUnavailable, match="not found.*ends in /v1"):
                await llm.complete(QUESTION, max_tokens=4)

    asyncio.run(run())


@pytest.mark.slow
def test_slow_answer_raises_timeout(llm_server: LlamaServer) -> None:
    async def run() -> None:
        async with fast(llm_server.base_url, timeout_s=0.05) as llm:
            with pytest.raises(LLMTimeout, match="did not answer within"):
                await llm.complete([ChatMessage.user("Write a long story.")], max_tokens=200)

    asyncio.run(run())


def test_backend_for_picks_the_configured_server(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(llm_base_url="http://127.0.0.1:8000", llm_model="m", llm_api_key="k")
    llm = backend_for(settings)
    assert isinstance(llm, OpenAICompatBackend) and llm.base_url == "http://127.0.0.1:8000/v1"
    agent = backend_for(
        Settings(), LLMConfig(base_url="https://api.example.com/v1", model="x", api_key_env="FOA_TEST_KEY_X")
    )
    assert isinstance(agent, OpenAICompatBackend) and agent.model == "x"
    assert agent._client.headers["authorization"] == "Bearer secret"
    monkeypatch.delenv("FOA_TEST_KEY_X")
    with pytest.raises(LLMUnavailable, match="FOA_TEST_KEY_X, which is not set"):
        backend_for(Settings(), LLMConfig(base_url="https://api.example.com/v1", api_key_env="FOA_TEST_KEY_X"))


@pytest.fixture(autouse=True)
def _test_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOA_TEST_KEY_X", "secret")


def test_url_and_retry_after_parsing() -> None:
    assert normalise_base_url("http://h:1/") == "http://h:1/v1"
    assert normalise_base_url("http://h:1/api/v2") == "http://h:1/api/v2"
    with pytest.raises(ValueError, match="needs http:// or https://"):
        normalise_base_url("localhost:8000")
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


@pytest.mark.slow
def test_server_without_structured_output_falls_back_to_prompting(llm_server: LlamaServer) -> None:
    """A server that 400s on response_format and stream_options still gets JSON asked of it
    (in the prompt) and still streams; both decisions are remembered."""
    ask = [ChatMessage.user("Paris is the capital of which country? Reply as JSON with city and country.")]
    fallback = City(city="?", country="?")

    async def run() -> None:
        with FlakyProxy(llm_server.base_url, failures=0, reject_fields=("response_format", "stream_options")) as proxy:
            async with fast(proxy.base_url) as llm:
                city, _, _ = await complete_json(llm, ask, City, max_tokens=40, retries=1, fallback=lambda: fallback)
                assert llm.json_mode == "prompt"
                stream = llm.stream(QUESTION, max_tokens=6)
                text = "".join([p async for p in stream])
                assert not llm.stream_usage_supported
        assert isinstance(city, City)
        assert proxy.seen[:4] == [400, 400, 400, 200], "json_schema, json_object+schema, json_object, prompt"
        assert text.strip() and stream.usage.output_tokens > 0 and stream.usage.input_tokens > 0
        prompt_calls = [s for s in proxy.seen[4:-2] if s == 400]
        assert prompt_calls == [], "after the step-down, retries go straight to the prompt mode"

    asyncio.run(run())
