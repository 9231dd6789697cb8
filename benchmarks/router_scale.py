"""Router at scale: latency, recall against exact α, upsert rate, memory, restore time.

Synthetic but embedding-like VCVs: capability vectors are a mixture of gaussian clusters on the
384-d sphere (agent-to-centre cosine ~0.75, like MiniLM neighbours), spec vectors sit near the
capability vector, descriptions and skills come from per-cluster topic vocabularies, policies,
costs and latencies are random. Queries come from the same clusters, with policy, skill, budget
and deadline requirements on a share of them.

Measured per run (one process, queries on one thread, index build on all cores):
  p50_ms / p99_ms        a full routed query (RouterEngine.route: search, gates, α, merge)
  selective_p50_ms/_p99  the same for queries whose skill only ~0.2% of agents (another topic's)
                         have: the search among the passing agents (RouterEngine._filtered)
  recall_at_10           overlap of its top 10 with the exact α top 10 by brute force
  brute_force_p50_ms     that brute force (α over every agent) per query
  upserts_per_s          N upserts of new agents, end to end until the last is in a graph: the
                         upserts on the main thread (the event loop's role), the graph inserts in
                         a worker thread as the service does (begin_flush / insert_batch /
                         finish_flush), so the two overlap
  upsert_owner_us        main-thread time per new-agent upsert (the part that holds the loop)
  bytes_per_agent        RSS growth of a fresh process that restores the snapshot, / N
  restore_s              time of that restore (hnswlib load_index + np.load, no re-insert)
  snapshot_s             an inline snapshot (CapabilityIndex.snapshot), for comparison
  max_loop_stall_ms      worst lateness of a 1 ms asyncio ticker while the service's snapshot
                         (router.service.snapshot_in_background: fork + child write) runs; the
                         restore reads that snapshot
  flush_loop_stall_ms    the same during a service flush (flush_in_background) of fresh upserts,
                         with queries answered meanwhile (flush_query_p99_ms)
  gc_during_stalls       the collector's runs in those two windows and the longest, after the
                         heap is frozen as the service freezes it (--no-gc-freeze: not frozen)

Usage: benchmarks/router_scale.py --agents 100000 --json [--scheme hash|centroid] [--shards 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, percentile_ms, progress
from fabric.bloom import BloomFilter
from fabric.heap import freeze_startup_heap
from fabric.messages import RouteQuery
from fabric.vcv import VCV, Resources
from router.engine import RouterEngine
from router.index import CapabilityIndex, FlushBatch, IndexConfig
from router.scoring import score
from router.service import (
    FLUSH_AT,
    flush_in_background,
    snapshot_in_background,
)

DIM = 384
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VOCAB = 20_000
POLICIES = ["hipaa", "gdpr", "pii", "code-exec", "internet", "eu-residency"]


class Population:
    """Clustered synthetic federation; deterministic for a seed."""

    def __init__(self, n: int, seed: int = 0, views: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.views = views  # example views per agent (texts near its topic)
        self.clusters = max(64, n // 500)
        self.centres = _unit(self.rng.standard_normal((self.clusters, DIM)).astype(np.float32))
        self.word_vecs = _unit(self.rng.standard_normal((VOCAB, DIM)).astype(np.float32))
        self.topic_words = self.rng.integers(0, VOCAB, size=(self.clusters, 12))
        self.topic_skills = self.rng.integers(0, 5_000, size=(self.clusters, 8))
        self.cluster_of = self.rng.integers(0, self.clusters, size=n)

    def words(self, cluster: int, topic: int, other: int) -> np.ndarray:
        return np.concatenate([self.rng.choice(self.topic_words[cluster], topic, replace=False),
                               self.rng.integers(0, VOCAB, other)])

    def embed(self, cluster: int, words: np.ndarray, noise: float) -> np.ndarray:
        """Text embeddings are roughly compositional: topic centre + mean of word vectors + noise."""
        v = self.centres[cluster] + 0.8 * self.word_vecs[words].mean(0)
        v = v + noise * self.rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
        return v / np.linalg.norm(v)

    def vcvs(self, start: int, stop: int) -> tuple[list[VCV], np.ndarray]:
        idx = np.arange(start, stop)
        caps = np.zeros((len(idx), DIM), dtype=np.float32)
        out = []
        for j, i in enumerate(idx.tolist()):
            c = int(self.cluster_of[i])
            words = self.words(c, 6, 3)
            caps[j] = self.embed(c, words, 0.6)
            spec = _unit(caps[j] + 0.6 * self.rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM))
            skills = [f"s{s}" for s in self.rng.choice(self.topic_skills[c], 3, replace=False)]
            policies = [p for p in POLICIES if self.rng.random() < 0.3]
            views = [self.embed(c, self.words(c, 4, 2), 0.8) for _ in range(self.views)]
            res = Resources.model_construct(
                latency_ms=float(self.rng.lognormal(6.5, 0.7)),
                tokens_per_s=float(self.rng.uniform(10, 120)),
                context_window=int(self.rng.choice([4096, 8192, 32768])),
                cost_per_1k_input=float(self.rng.lognormal(-6, 1)),
                cost_per_1k_output=float(self.rng.lognormal(-5, 1)),
                max_concurrency=int(self.rng.integers(1, 8)),
                gpu_memory_gb=0.0,
            )
            out.append(
                VCV.model_construct(
                    agent_id=f"agent-{i}",
                    version=1,
                    name=f"agent {i}",
                    description=" ".join(f"w{w}" for w in words),
                    capability=caps[j],
                    skills=skills,
                    skills_bloom=BloomFilter.of(skills).to_b64(),
                    bloom_bits=1024,
                    bloom_hashes=7,
                    resources=res,
                    policies=policies,
                    spec_embedding=spec,
                    embedding_model=MODEL,
                    examples=[f"example {k}" for k in range(self.views)],
                    views=views,
                )
            )
        return out, caps

    def queries(self, count: int) -> list[tuple[RouteQuery, np.ndarray]]:
        out = []
        for _ in range(count):
            i = int(self.rng.integers(0, self.n))
            c = int(self.cluster_of[i])
            qwords = self.words(c, 3, 1)
            vec = self.embed(c, qwords, 0.8)
            words = [f"w{w}" for w in qwords]
            u = self.rng.random(4)
            q = RouteQuery(
                text=" ".join(words),
                top_k=10,
                policies=[str(self.rng.choice(POLICIES))] if u[0] < 0.3 else [],
                skills=[f"s{self.rng.choice(self.topic_skills[c])}"] if u[1] < 0.1 else [],
                max_cost=0.005 if u[2] < 0.2 else None,
                deadline_ms=10_000.0 if u[3] < 0.1 else None,
                abstain=False,
            )
            out.append((q, vec))
        return out


    def selective_queries(self, count: int) -> list[tuple[RouteQuery, np.ndarray]]:
        """Queries that require a skill only agents of another topic have (~0.2% of agents):
        the router must look past the nearest agents, among the few that pass."""
        out = []
        for q, vec in self.queries(count):
            c = int(self.rng.integers(0, self.clusters))
            skill = f"s{self.rng.choice(self.topic_skills[c])}"
            out.append((q.model_copy(update={"skills": [skill], "policies": [], "max_cost": None}), vec))
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def restore_child(path: str) -> None:
    """Run in a fresh process: restore the snapshot, report time and RSS growth."""
    import hnswlib  # noqa: F401 - count the libraries in the baseline, not in the index

    before = rss_bytes()
    t0 = time.perf_counter()
    index = CapabilityIndex.restore(path)
    took = time.perf_counter() - t0
    print(json.dumps({"restore_s": took, "rss_delta": rss_bytes() - before, "agents": len(index),
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


class Ticker:
    """Worst lateness of a 1 ms asyncio sleep: how long the event loop was blocked; and the
    collector's runs meanwhile (how many, the longest), to tell a GC pause from the rest."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.running = True
        self.gc_runs = 0
        self.gc_worst = 0.0
        self._gc_start = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_runs += 1
            self.gc_worst = max(self.gc_worst, time.perf_counter() - self._gc_start)

    def reset(self) -> None:
        self.worst = self.gc_worst = 0.0
        self.gc_runs = 0

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        try:
            while self.running:
                t0 = time.perf_counter()
                await asyncio.sleep(0.001)
                self.worst = max(self.worst, time.perf_counter() - t0 - 0.001)
        finally:
            gc.callbacks.remove(self._on_gc)


async def service_snapshot(index: CapabilityIndex, path: Path) -> dict[str, float]:
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.05)
    ticker.reset()
    t0 = time.perf_counter()
    await snapshot_in_background(index, path, asyncio.Lock())
    wall = time.perf_counter() - t0
    ticker.running = False
    await task
    return {"stall_ms": ticker.worst * 1000, "wall_s": wall, "fork_ms": index.last_fork_s * 1000,
            "gc_runs": ticker.gc_runs, "gc_worst_ms": ticker.gc_worst * 1000}


async def service_flush(index: CapabilityIndex, pop: Population, queries: list[tuple[RouteQuery, np.ndarray]],
                        extra: int) -> dict[str, float]:
    """Upsert new agents and flush them the service's way, twice: once with only the ticker on
    the loop (the stall), once while routing queries (their latency meanwhile)."""
    out = {"n": float(extra)}
    for phase in ("stall", "queries"):
        vcvs, _ = Population(extra, seed=pop.n + len(out), views=pop.views).vcvs(0, extra)
        tag = f"late-{phase}-{time.monotonic_ns()}"  # new agents on every call
        for v in vcvs:
            v.agent_id = f"{tag}-{v.agent_id}"
            index.upsert(v)
        engine = RouterEngine(index)
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0.05)
        ticker.reset()
        flush = asyncio.create_task(flush_in_background(index, asyncio.Lock()))
        lat: list[float] = []
        while not flush.done():
            if phase == "queries":
                q, qvec = queries[len(lat) % len(queries)]
                t0 = time.perf_counter()
                engine.route(q, qvec)
                lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0)
        await flush
        ticker.running = False
        await task
        if phase == "stall":
            out["stall_ms"] = ticker.worst * 1000
            out["gc_runs"], out["gc_worst_ms"] = ticker.gc_runs, ticker.gc_worst * 1000
        else:
            out["query_p99_ms"] = percentile_ms(lat, 99)
            out["queries"] = len(lat)
    return out


MALLOC_HUGETLB = "glibc.malloc.hugetlb=1"


def exec_with_huge_malloc() -> None:
    """Re-exec this process once with glibc's malloc advising huge pages (GLIBC_TUNABLES is read at
    start only). Not what the router does: the snapshot's fork gets cheaper (300k agents: 8-10 -> 3.2
    ms), but here huge-page faults made the 1M restore 3.9 -> 8.3 s and the loop stall around
    the snapshot 8-13 -> 67 ms (benchmarks/router_scale.py --malloc-hugetlb). Kept here to measure
    on other kernels; a no-op off Linux or when already set."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or "glibc.malloc.hugetlb" in tunables:
        return
    env = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{MALLOC_HUGETLB}" if tunables else MALLOC_HUGETLB}
    os.execve(sys.executable, sys.orig_argv, env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1000, help="timed queries")
    ap.add_argument("--recall-queries", type=int, default=200, help="queries checked against brute force")
    ap.add_argument("--selective-queries", type=int, default=200,
                    help="queries requiring a skill only agents of another topic have (timed apart)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--scheme", choices=["hash", "centroid"], default="hash")
    ap.add_argument("--probe", type=int, default=2)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--min-fetch", type=int, default=None, help="default: RouterEngine's")
    ap.add_argument("--shard-margin", type=float, default=2.0, help="hash shards return margin·k/S + 16 each")
    ap.add_argument("--query-threads", type=int, default=1, help="threads one query searches its shards with")
    ap.add_argument("--max-fetch", type=int, default=2048)
    ap.add_argument("--bound", action="store_true", help="deepen the fetch until the exact α bound holds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=0, help="example views per agent (VCV.views, up to 8)")
    ap.add_argument("--snapshot-dir", default=None, help="where to write the snapshot (default: a temp dir)")
    ap.add_argument("--keep-snapshot", default=None, help="write the service snapshot here and keep it")
    ap.add_argument("--malloc-hugetlb", action="store_true",
                    help="re-exec with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (measured: a faster fork, but slower "
                         "restores and worse stalls around the snapshot here)")
    ap.add_argument("--no-gc-freeze", action="store_true",
                    help="leave the heap unfrozen before the snapshot and flush phases (the service freezes it)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--restore-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.malloc_hugetlb:
        exec_with_huge_malloc()
    if args.restore_child:
        restore_child(args.restore_child)
        return 0

    pop = Population(args.agents, args.seed, views=args.views)
    config = IndexConfig(dim=DIM, embedding_model=MODEL, shards=args.shards, scheme=args.scheme, probe=args.probe,
                         M=args.M, ef_construction=args.ef_construction, ef_search=args.ef,
                         shard_margin=args.shard_margin, query_threads=args.query_threads)
    index = CapabilityIndex(config)
    engine = RouterEngine(index, max_fetch=args.max_fetch, bound_check=args.bound)
    if args.min_fetch is not None:
        engine.min_fetch = args.min_fetch
    all_caps = np.zeros((args.agents, DIM), dtype=np.float32)
    batch = 20_000
    upsert_s = owner_s = 0.0
    index.auto_flush = False  # as in the service: graph inserts in a worker thread, overlapping upserts
    worker = ThreadPoolExecutor(1)
    inflight: tuple[FlushBatch, Future[None]] | None = None

    def pump(wait: bool) -> None:
        """The service's flusher, on this thread: finish a done batch, start the next one."""
        nonlocal inflight
        if inflight is not None and (wait or inflight[1].done()):
            inflight[1].result()
            index.finish_flush(inflight[0])
            inflight = None
        if inflight is None and (index.buf_n >= FLUSH_AT or (wait and index.buf_n)):
            b = index.begin_flush()
            assert b is not None
            inflight = (b, worker.submit(index.insert_batch, b))

    for start in range(0, args.agents, batch):
        stop = min(start + batch, args.agents)
        vcvs, caps = pop.vcvs(start, stop)  # generation is not timed (and no insert runs during it)
        all_caps[start:stop] = caps
        t0 = time.perf_counter()
        for i, v in enumerate(vcvs):
            index.upsert(v)
            if i % 256 == 0:
                pump(False)
        owner_s += time.perf_counter() - t0
        while index.buf_n or inflight is not None:  # every insert done before the untimed generation
            pump(True)
        upsert_s += time.perf_counter() - t0
        progress(f"upserted {stop}/{args.agents} ({stop / upsert_s:.0f}/s so far)")
    index.auto_flush = True
    progress(f"built: {args.agents / upsert_s:.0f} upserts/s; shards {index.stats_now().shard_sizes}")

    # version bumps that keep the capability vector (load, cost, policy changes): no graph work
    bump_n = min(args.agents, 20_000)
    bumps = [v.model_copy(update={"version": 2, "resources": v.resources.model_copy(update={"latency_ms": 500.0})})
             for v in pop.vcvs(0, bump_n)[0]]
    for v, cap in zip(bumps, all_caps[:bump_n], strict=False):
        v.capability = cap  # same vector as the live version (pop.vcvs draws new noise)
    t0 = time.perf_counter()
    for v in bumps:
        index.upsert(v)
    update_s = time.perf_counter() - t0
    index.flush()

    queries = pop.queries(max(args.queries, args.recall_queries))
    for q, qvec in queries[:50]:  # warm-up
        engine.route(q, qvec)
    lat, fetched = [], []
    for q, qvec in queries[: args.queries]:
        t0 = time.perf_counter()
        out = engine.route(q, qvec)
        lat.append(time.perf_counter() - t0)
        fetched.append(out.fetched)
    progress(f"routed {args.queries}: p50 {percentile_ms(lat, 50):.3f} ms p99 {percentile_ms(lat, 99):.3f} ms")
    selective_lat, selective_found = [], []
    for q, qvec in pop.selective_queries(args.selective_queries):
        t0 = time.perf_counter()
        out = engine.route(q, qvec)
        selective_lat.append(time.perf_counter() - t0)
        selective_found.append(len(out.response.matches))
    if selective_lat:
        progress(f"selective skill queries: p50 {percentile_ms(selective_lat, 50):.3f} ms "
                 f"p99 {percentile_ms(selective_lat, 99):.3f} ms")

    rows_all = np.array([index.rows[f"agent-{i}"] for i in range(args.agents)], dtype=np.int64)
    caps_by_row = np.zeros_like(all_caps)
    caps_by_row[rows_all] = all_caps
    recalls, bf_lat, dot_lat = [], [], []
    all_rows = np.arange(len(index.ids), dtype=np.int64)
    for q, qvec in queries[: args.recall_queries]:
        got = [m.agent_id for m in engine.route(q, qvec).response.matches]
        t0 = time.perf_counter()
        sims = caps_by_row @ qvec
        dot_lat.append(time.perf_counter() - t0)
        ctx = engine.context(q, qvec)
        scored = score(index, ctx, all_rows, sims)
        passed = scored.passed()
        idx = np.flatnonzero(passed)
        best = idx[np.argsort(-scored.alpha[idx], kind="stable")][: q.top_k]
        bf_lat.append(time.perf_counter() - t0)
        truth = {index.ids[int(scored.rows[i])] for i in best}
        if truth:
            recalls.append(len(truth & set(got)) / len(truth))
    progress(f"recall@10 {np.mean(recalls):.4f} over {len(recalls)} queries")

    del caps_by_row, all_caps  # ground truth only: the service's process has no such 3 GB (at 1M) to fork
    if not args.no_gc_freeze:  # as a router does once it is up (fabric/service.py, fabric/heap.py)
        freeze_startup_heap()
    with tempfile.TemporaryDirectory(dir=args.snapshot_dir) as tmp:
        snap = Path(args.keep_snapshot) if args.keep_snapshot else Path(tmp) / "index"
        t0 = time.perf_counter()
        index.snapshot(Path(tmp) / "inline")
        snapshot_s = time.perf_counter() - t0
        bg = asyncio.run(service_snapshot(index, snap))
        progress(f"snapshot inline {snapshot_s:.2f} s; service snapshot {bg['wall_s']:.2f} s, "
                 f"loop stall {bg['stall_ms']:.2f} ms (fork {bg['fork_ms']:.2f} ms)")
        disk = sum(p.stat().st_size for p in snap.iterdir())
        child = subprocess.run(
            [sys.executable, __file__, "--restore-child", str(snap)], capture_output=True, text=True, check=True
        )
        restored = json.loads(child.stdout.strip().splitlines()[-1])
    memory = index.memory_bytes()
    # after the restore (whose RSS is per agent): background flushes of agents joining late
    late = min(4096, max(args.agents // 20, 256))
    flush_stall = asyncio.run(service_flush(index, pop, queries[: args.queries], late))
    progress(f"service flush of {flush_stall['n']:.0f} new agents: loop stall {flush_stall['stall_ms']:.2f} ms; "
             f"query p99 {flush_stall['query_p99_ms']:.3f} ms over {flush_stall['queries']:.0f} queries meanwhile")
    result = {
        "agents": args.agents,
        "p50_ms": percentile_ms(lat, 50),
        "p99_ms": percentile_ms(lat, 99),
        "recall_at_10": float(np.mean(recalls)),
        "selective_p50_ms": percentile_ms(selective_lat, 50) if selective_lat else None,
        "selective_p99_ms": percentile_ms(selective_lat, 99) if selective_lat else None,
        "selective_matches_mean": float(np.mean(selective_found)) if selective_found else None,
        "brute_force_p50_ms": percentile_ms(bf_lat, 50),
        "brute_force_dot_p50_ms": percentile_ms(dot_lat, 50),
        "upserts_per_s": args.agents / upsert_s,
        "upsert_owner_us": owner_s / args.agents * 1e6,
        "update_upserts_per_s": bump_n / update_s,
        "bytes_per_agent": restored["rss_delta"] / args.agents,
        "restore_s": restored["restore_s"],
        "snapshot_s": snapshot_s,
        "max_loop_stall_ms": bg["stall_ms"],
        "snapshot_background_s": bg["wall_s"],
        "snapshot_fork_ms": bg["fork_ms"],
        "flush_loop_stall_ms": flush_stall["stall_ms"],
        "gc_during_stalls": {"snapshot_runs": bg["gc_runs"], "snapshot_worst_ms": bg["gc_worst_ms"],
                             "flush_runs": flush_stall["gc_runs"], "flush_worst_ms": flush_stall["gc_worst_ms"]},
        "heap_frozen": not args.no_gc_freeze,
        "flush_query_p99_ms": flush_stall["query_p99_ms"],
        "flush_agents": flush_stall["n"],
        "snapshot_bytes_per_agent": disk / args.agents,
        "accounted_bytes_per_agent": {k: v / args.agents for k, v in memory.items()},
        "fetched_mean": float(np.mean(fetched)),
        "config": {
            "shards": args.shards,
            "scheme": args.scheme,
            "probe": args.probe,
            "M": args.M,
            "ef": args.ef,
            "ef_construction": args.ef_construction,
            "min_fetch": engine.min_fetch,
            "max_fetch": args.max_fetch,
            "bound_check": args.bound,
            "build_threads": os.cpu_count(),
            "query_threads": args.query_threads,
            "shard_margin": args.shard_margin,
            "malloc_hugetlb": MALLOC_HUGETLB in os.environ.get("GLIBC_TUNABLES", ""),
        },
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
