"""Chat completions against any OpenAI-compatible server (vLLM, SGLang, llama.cpp server,
Ollama, TGI, hosted APIs) over one pooled `httpx.AsyncClient`.

Why it looks like this:
- Retries with exponential backoff and jitter on 429 / 5xx / connection errors, honouring
  `Retry-After`, because self-hosted servers shed load with 503 and hosted APIs with 429.
  A read timeout (the model is slow) is not retried: that would multiply the wait.
- Structured output degrades per backend instance: `response_format` json_schema (vLLM,
  SGLang, llama.cpp server accept it) → json_object with a schema (llama-cpp-python's server)
  → plain json_object → schema described in the prompt, stepping down only when the server
  rejects a mode (400/422, or any status whose error names the feature), and remembering what
  worked (a success, never a guess) so later calls do not pay the failed attempts again.
- Usage is read from the response, for streams from the final chunk
  (`stream_options.include_usage`); servers that reject stream_options are remembered too.
- Cost is not computed here: the worker multiplies usage by its Resources.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from fabric.llm.base import (
    ChatMessage,
    Completion,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    TextStream,
    as_dicts,
    schema_name,
)
from fabric.messages import Usage

JsonMode = Literal["json_schema", "json_object_schema", "json_object", "prompt"]
#: Strongest first. json_object_schema ({"type": "json_object", "schema": ...}) is what
#: llama-cpp-python's server and Anyscale-style APIs accept instead of json_schema.
_MODES: tuple[JsonMode, ...] = ("json_schema", "json_object_schema", "json_object", "prompt")
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_FEATURE_WORDS = ("response_format", "json_schema", "stream_options")
_RETRY_EXC = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


def normalise_base_url(base_url: str) -> str:
    """`http://host:8000` → `http://host:8000/v1`; a URL with a path is taken as given."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"LLM base URL {base_url!r} needs http:// or https:// and a host, e.g. http://127.0.0.1:8000/v1"
        )
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def schema_instruction(schema: dict[str, Any]) -> str:
    """The prompt fallback for servers without constrained decoding."""
    return (
        "Reply with one JSON object only, no prose and no code fences. "
        f"It must validate against this JSON schema: {json.dumps(schema, separators=(',', ':'))}"
    )


def with_instruction(messages: Sequence[ChatMessage], instruction: str) -> list[ChatMessage]:
    """Append an instruction to the system message (or add one) without mutating the input."""
    out = list(messages)
    if out and out[0].role == "system":
        out[0] = ChatMessage(role="system", content=f"{out[0].content}\n\n{instruction}")
    else:
        out.insert(0, ChatMessage(role="system", content=instruction))
    return out


def _server_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            return str(err.get("message", err))[:300]
        return str(err)[:300]
    return str(body)[:300]


class _Rejected(Exception):
    """A 400 the caller may answer by stepping down a feature (response_format, stream_options)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OpenAICompatBackend:
    """`LLMBackend` over HTTP. One instance per (base_url, model); share it between callers."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
        retry_after_max_s: float = 60.0,
        seed: int | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.name = f"openai:{model}@{self.base_url}"
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.timeout_s = timeout_s
        self.json_mode: JsonMode = "json_schema"
        self.stream_usage_supported = True
        self.retries_done = 0
        self._rng = random.Random(seed)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        if client is not None and api_key:
            self._client.headers.update(headers)

    # --- public API ---------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        started = time.perf_counter()
        if json_schema is None:
            payload = self._payload(messages, max_tokens, temperature, stop, None, None)
            data = await self._post_json(payload, feature_in_play=False)
            return self._parse_completion(data, started)
        first_error: str | None = None
        for mode in _MODES[_MODES.index(self.json_mode) :]:
            payload = self._payload(messages, max_tokens, temperature, stop, json_schema, mode)
            try:
                data = await self._post_json(payload, feature_in_play=mode != "prompt")
            except _Rejected as exc:
                first_error = first_error or exc.message
                continue  # the server may not support this response_format: step down
            except LLMError as exc:
                if first_error is None:
                    raise
                raise LLMError(f"{exc} (the first attempt, with response_format, said: {first_error})") from exc
            self.json_mode = mode  # remember what worked; only a success moves it
            return self._parse_completion(data, started)
        raise AssertionError("unreachable: the prompt mode never raises _Rejected")

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

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> OpenAICompatBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def list_models(self) -> list[str]:
        """Model ids the server offers (GET /models); useful to check a configuration."""
        resp = await self._send("GET", "/models", None)
        data = resp.json()
        return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]

    # --- request building ---------------------------------------------------------------

    def _payload(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
        schema: dict[str, Any] | None,
        mode: JsonMode | None,
    ) -> dict[str, Any]:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        msgs = list(messages)
        payload: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature}
        if stop:
            payload["stop"] = list(stop)
        if schema is not None and mode == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name(schema), "schema": schema, "strict": True},
            }
        elif schema is not None:
            # Below json_schema the server may ignore the schema, so the prompt carries it too.
            msgs = with_instruction(msgs, schema_instruction(schema))
            if mode == "json_object_schema":
                payload["response_format"] = {"type": "json_object", "schema": schema}
            elif mode == "json_object":
                payload["response_format"] = {"type": "json_object"}
        payload["messages"] = as_dicts(msgs)
        return payload

    # --- transport ----------------------------------------------------------------------

    async def _post_json(self, payload: dict[str, Any], *, feature_in_play: bool) -> dict[str, Any]:
        resp = await self._send("POST", "/chat/completions", payload, feature_in_play=feature_in_play)
        try:
            data = resp.json()
        except ValueError as exc:
            raise LLMError(f"{self.name} returned non-JSON ({resp.status_code}): {resp.text[:200]!r}") from exc
        if not isinstance(data, dict):
            raise LLMError(f"{self.name} returned an unexpected body: {str(data)[:200]}")
        return data

    async def _send(
        self, method: str, path: str, payload: dict[str, Any] | None, *, feature_in_play: bool = False
    ) -> httpx.Response:
        """One request with retries; raises typed errors. Streams use `_open_stream`."""
        attempt = 0
        while True:
            try:
                resp = await self._client.request(method, self.base_url + path, json=payload)
            except httpx.ReadTimeout as exc:
                raise self._timeout_error(exc) from exc
            except _RETRY_EXC as exc:
                attempt = await self._backoff_or_raise(attempt, None, exc)
                continue
            except httpx.HTTPError as exc:
                raise LLMError(f"{self.name}: HTTP error {type(exc).__name__}: {exc}") from exc
            if resp.status_code < 400:
                return resp
            self._raise_for_final_status(resp, feature_in_play)
            attempt = await self._backoff_or_raise(attempt, resp, None)

    def _timeout_error(self, exc: Exception) -> LLMTimeout:
        return LLMTimeout(
            f"{self.name} did not answer within {self.timeout_s:.0f} s ({type(exc).__name__}); "
            "raise FOA_LLM_TIMEOUT_S, lower max_tokens, or check the server's load"
        )

    def _raise_for_final_status(self, resp: httpx.Response, feature_in_play: bool) -> None:
        """Raise for statuses that retrying cannot fix; return for retryable ones."""
        status = resp.status_code
        msg = _server_message(resp)
        if feature_in_play and (status in (400, 422) or any(k in msg for k in _FEATURE_WORDS)):
            # Some servers (llama-cpp-python) answer an unknown response_format with a 500
            # carrying the validation error: that is a rejection, not an outage.
            raise _Rejected(msg)
        if status in _RETRY_STATUS or status >= 500:
            return
        if status in (401, 403):
            raise LLMUnavailable(
                f"{self.name} refused the credentials ({status}: {msg}); set FOA_LLM_API_KEY or the "
                "agent's llm.api_key_env to a valid key"
            )
        if status == 404:
            raise LLMUnavailable(
                f"{self.name}: not found ({msg}); check the base URL (it usually ends in /v1) and "
                f"that the server serves model {self.model!r}"
            )
        raise LLMError(f"{self.name} rejected the request ({status}): {msg}")

    async def _backoff_or_raise(self, attempt: int, resp: httpx.Response | None, exc: Exception | None) -> int:
        """Sleep before the next attempt, or raise once retries are spent. Returns attempt + 1."""
        what = (
            f"HTTP {resp.status_code}: {_server_message(resp)}" if resp is not None else f"{type(exc).__name__}: {exc}"
        )
        if attempt >= self.max_retries:
            if resp is None:
                raise LLMUnavailable(
                    f"cannot reach the LLM server at {self.base_url} after {attempt + 1} attempts ({what}); "
                    "is it running? set FOA_LLM_BASE_URL (or the agent's llm.base_url), or unset it "
                    "to use the embedded model"
                ) from exc
            raise LLMUnavailable(f"{self.name} kept failing after {attempt + 1} attempts ({what}); try again later")
        delay = min(self.backoff_max_s, self.backoff_base_s * (2**attempt)) * self._rng.uniform(0.5, 1.0)
        if resp is not None:
            hinted = parse_retry_after(resp.headers.get("retry-after"))
            if hinted is not None:
                if hinted > self.retry_after_max_s:
                    raise LLMUnavailable(
                        f"{self.name} asks to retry after {hinted:.0f} s ({what}), longer than the "
                        f"{self.retry_after_max_s:.0f} s we wait; try again later"
                    )
                delay = max(delay, hinted)
            await resp.aclose()
        self.retries_done += 1
        await asyncio.sleep(delay)
        return attempt + 1

    # --- parsing ------------------------------------------------------------------------

    def _parse_completion(self, data: dict[str, Any], started: float) -> Completion:
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMError(f"{self.name} returned no choices: {str(data)[:200]}") from exc
        return Completion(
            text=text,
            usage=_usage(data.get("usage")),
            model=str(data.get("model") or self.model),
            finish_reason=choice.get("finish_reason"),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    # --- streaming ----------------------------------------------------------------------

    async def _stream(
        self,
        out: TextStream,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] | None,
    ) -> AsyncIterator[str]:
        started = time.perf_counter()
        payload = self._payload(messages, max_tokens, temperature, stop, None, None)
        payload["stream"] = True
        attempt = 0
        with_usage = self.stream_usage_supported
        while True:
            if with_usage:
                payload["stream_options"] = {"include_usage": True}
            else:
                payload.pop("stream_options", None)
            request = self._client.build_request("POST", self.base_url + "/chat/completions", json=payload)
            try:
                resp = await self._client.send(request, stream=True)
            except httpx.ReadTimeout as exc:
                raise self._timeout_error(exc) from exc
            except _RETRY_EXC as exc:
                attempt = await self._backoff_or_raise(attempt, None, exc)
                continue
            if resp.status_code < 400:
                break
            await resp.aread()
            try:
                self._raise_for_final_status(resp, feature_in_play=with_usage)
            except _Rejected:
                with_usage = False  # the server may not know stream_options: try without
                continue
            attempt = await self._backoff_or_raise(attempt, resp, None)
        self.stream_usage_supported = with_usage
        out.model = self.model
        completion_chunks = 0
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # SSE comments, event names, keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                out.model = str(chunk.get("model") or out.model)
                if chunk.get("usage"):
                    out.usage = _usage(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    if choice.get("finish_reason"):
                        out.finish_reason = choice["finish_reason"]
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        completion_chunks += 1
                        yield delta
        except httpx.ReadTimeout as exc:
            raise self._timeout_error(exc) from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"{self.name}: stream broke off ({type(exc).__name__}: {exc})") from exc
        finally:
            await resp.aclose()
            if out.usage.calls == 0:
                # The server sent no usage (llama-cpp-python ignores include_usage): one token
                # per delta, and ~4 characters per prompt token, so budgets are not blind.
                prompt_chars = sum(len(m["content"]) for m in payload["messages"])
                out.usage = Usage(input_tokens=prompt_chars // 4, output_tokens=completion_chunks, calls=1)
            out.latency_ms = (time.perf_counter() - started) * 1000


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage(calls=1)
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or raw.get("output_tokens") or 0),
        calls=1,
    )
