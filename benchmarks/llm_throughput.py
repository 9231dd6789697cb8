"""Tokens/s of the embedded model (in-process llama-cpp-python) vs the same GGUF behind the
OpenAI-compatible server process (llama_cpp.server over HTTP), same threads and prompts.

    python benchmarks/llm_throughput.py --json [--runs 5] [--max-tokens 128] [--threads N]

Prints one JSON object on stdout; progress goes to stderr. Greedy decoding, so both paths
generate the same tokens; tokens/s = completion tokens / wall time of the call (prompt
evaluation included, as a worker experiences it). One warm-up call per path is not counted;
runs alternate between the two paths so background load hits both alike.
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

from fabric.llm.base import ChatMessage, LLMBackend
from fabric.llm.embedded import EmbeddedBackend, default_threads
from fabric.llm.openai_compat import OpenAICompatBackend
from tests.llm_server import LlamaServer

PROMPTS = [
    "Write a detailed paragraph about how bridges are built.",
    "Explain step by step how a bicycle works.",
    "Describe the water cycle for a school report.",
]


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Meter:
    """Per-backend measurements; runs of the two backends are interleaved so that both see
    the same background load on a shared machine."""

    def __init__(self, llm: LLMBackend) -> None:
        self.llm = llm
        self.rates: list[float] = []
        self.tokens: list[int] = []
        self.warmup_ms = 0.0

    async def warm_up(self) -> None:
        started = time.perf_counter()
        await self.llm.complete([ChatMessage.user(PROMPTS[0])], max_tokens=8, temperature=0.0)
        self.warmup_ms = (time.perf_counter() - started) * 1000

    async def run(self, i: int, max_tokens: int) -> None:
        t0 = time.perf_counter()
        done = await self.llm.complete(
            [ChatMessage.user(PROMPTS[i % len(PROMPTS)])], max_tokens=max_tokens, temperature=0.0
        )
        wall = time.perf_counter() - t0
        self.rates.append(done.usage.output_tokens / wall)
        self.tokens.append(done.usage.output_tokens)
        progress(f"  {self.llm.name}: run {i + 1}: {done.usage.output_tokens} tokens, {self.rates[-1]:.1f} tok/s")

    def summary(self) -> dict[str, Any]:
        return {
            "tokens_per_s": round(statistics.median(self.rates), 1),
            "tokens_per_s_runs": [round(r, 1) for r in self.rates],
            "completion_tokens": self.tokens,
            "warmup_ms": round(self.warmup_ms, 1),
        }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    threads = args.threads or default_threads()
    load_before = os.getloadavg()[0]
    embedded = EmbeddedBackend(n_ctx=2048, n_threads=threads)
    progress(f"{embedded.path.name}, {threads} thread(s); starting llama_cpp.server on the same GGUF")
    with LlamaServer(embedded.path, n_ctx=2048, n_threads=threads) as server:
        async with OpenAICompatBackend(server.base_url, "smollm2") as remote:
            local, http = Meter(embedded), Meter(remote)
            await local.warm_up()
            await http.warm_up()
            for i in range(args.runs):
                for meter in (local, http) if i % 2 == 0 else (http, local):
                    await meter.run(i, args.max_tokens)
    await embedded.aclose()
    emb, srv = local.summary(), http.summary()
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
