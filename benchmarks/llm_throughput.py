"""Tokens/s of the embedded model (in-process llama-cpp-python) vs the same GGUF behind the
OpenAI-compatible server process (llama_cpp.server over HTTP), same threads and prompts.

    python benchmarks/llm_throughput.py --json [--runs 5] [--max-tokens 128] [--threads N]

Prints one JSON object on stdout; progress goes to stderr. Greedy decoding, so both paths
generate the same tokens; tokens/s = completion tokens / wall time of the call (prompt
evaluation included, as a worker experiences it). One warm-up call per path is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fabric.llm.base import ChatMessage, LLMBackend  # noqa: E402
from fabric.llm.embedded import EmbeddedBackend, default_threads  # noqa: E402
from fabric.llm.openai_compat import OpenAICompatBackend  # noqa: E402
from tests.llm_server import LlamaServer  # noqa: E402

PROMPTS = [
    "Write a detailed paragraph about how bridges are built.",
    "Explain step by step how a bicycle works.",
    "Describe the water cycle for a school report.",
]


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def measure(llm: LLMBackend, runs: int, max_tokens: int) -> dict[str, Any]:
    msgs = lambda i: [ChatMessage.user(PROMPTS[i % len(PROMPTS)])]  # noqa: E731
    started = time.perf_counter()
    await llm.complete(msgs(0), max_tokens=8, temperature=0.0)  # warm-up (page-in, graph setup)
    warmup_ms = (time.perf_counter() - started) * 1000
    rates, tokens = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        done = await llm.complete(msgs(i), max_tokens=max_tokens, temperature=0.0)
        wall = time.perf_counter() - t0
        rates.append(done.usage.output_tokens / wall)
        tokens.append(done.usage.output_tokens)
        progress(f"  {llm.name}: run {i + 1}/{runs}: {done.usage.output_tokens} tokens, {rates[-1]:.1f} tok/s")
    return {
        "tokens_per_s": round(statistics.median(rates), 1),
        "tokens_per_s_runs": [round(r, 1) for r in rates],
        "completion_tokens": tokens,
        "warmup_ms": round(warmup_ms, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    threads = args.threads or default_threads()
    load_before = os.getloadavg()[0]
    embedded = EmbeddedBackend(n_ctx=2048, n_threads=threads)
    progress(f"embedded model {embedded.path.name}, {threads} thread(s)")
    emb = await measure(embedded, args.runs, args.max_tokens)
    await embedded.aclose()
    progress("starting llama_cpp.server on the same GGUF")
    with LlamaServer(embedded.path, n_ctx=2048, n_threads=threads) as server:
        async with OpenAICompatBackend(server.base_url, "smollm2") as remote:
            srv = await measure(remote, args.runs, args.max_tokens)
    return {
        "benchmark": "llm_throughput",
        "model": embedded.path.name,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "embedded": emb,
        "server": srv,
        "embedded_tokens_per_s": emb["tokens_per_s"],
        "server_tokens_per_s": srv["tokens_per_s"],
        "ratio_embedded_over_server": round(emb["tokens_per_s"] / srv["tokens_per_s"], 3),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default output anyway)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores but one")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
