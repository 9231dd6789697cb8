"""Query embedding cost: one text per model call vs the router's shared batches (EmbedBatcher).

    python benchmarks/embed_batching.py --json [--texts 256] [--threads 1] [--backend torch|onnx-int8]

Distinct question-like texts, the cache off, so every text runs through MiniLM. `one_ms` is a
text embedded on its own (what a router paid per query before batching); `batched_ms` is the
per-text cost when N queries arrive together and the EmbedBatcher folds them into model calls
of up to 64; `ratio` = one / batched, measured in the same run. `*_cpu_ms` is the process CPU
time per text: with --threads above 1, waiting threads spin, so it exceeds the wall time.
`gflops_per_s` estimates how close batched embedding is to the core's arithmetic limit
(MiniLM-L6: ~21 MFLOP per token). `--backend` picks the embedding backend (FOA_EMBEDDING_BACKEND);
`--threads` sets its intra-op threads (torch's or onnxruntime's).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, progress
from fabric.embeddings import BACKENDS, EmbedBatcher, Embedder

FLOP_PER_TOKEN = 2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)  # 6 layers: attention projections + FFN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="the backend's intra-op threads")
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    embedder = Embedder(cache_size=0, threads=args.threads, backend=args.backend)
    texts = [
        f"My father (case {i}) has sudden chest pain and is sweating. What should we do?" for i in range(args.texts)
    ]
    embedder.embed(texts[:16])  # warm-up
    progress("one text per call")
    n_one = max(16, args.texts // 4)
    started, cpu = time.perf_counter(), time.process_time()
    for text in texts[:n_one]:
        embedder.embed_one(text)
    one_s = (time.perf_counter() - started) / n_one
    one_cpu_s = (time.process_time() - cpu) / n_one

    async def together() -> tuple[float, int]:
        batcher = EmbedBatcher(embedder)
        t0 = time.perf_counter()
        await asyncio.gather(*(batcher.embed([t]) for t in texts))
        return (time.perf_counter() - t0) / len(texts), batcher.batches

    progress(f"{len(texts)} queries at once through the EmbedBatcher")
    cpu = time.process_time()
    batched_s, batches = asyncio.run(together())
    batched_cpu_s = (time.process_time() - cpu) / len(texts)
    tokens = sum(embedder.token_count(t) for t in texts[:32]) / 32
    emit({
        "backend": args.backend, "texts": len(texts), "threads": args.threads,
        "one_ms": one_s * 1e3, "batched_ms": batched_s * 1e3,
        "ratio": one_s / batched_s, "one_cpu_ms": one_cpu_s * 1e3, "batched_cpu_ms": batched_cpu_s * 1e3,
        "model_calls": batches, "tokens_per_text": tokens,
        "gflops_per_s": tokens * FLOP_PER_TOKEN / batched_s / 1e9,
    }, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
