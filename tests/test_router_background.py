"""Graph maintenance off the event loop: in-flight flush batches, forked snapshots, background compaction.

Real index, real embedder, real threads and a real forked child; no timing asserts (the stall and
rate numbers come from benchmarks/router_scale.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from fabric.messages import RouteQuery
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig
from router.lexical import LexicalIndex, agent_text, tokenize
from router.service import flush_in_background, snapshot_in_background
from tests.router_support import AGENTS, make_vcv

QUERIES = [
    "my ECG shows an irregular heart rhythm",
    "translate this contract into Spanish",
    "will it storm on my farm this week",
    "optimise this slow postgres query",
    "write a poem about the sea",
]


@pytest.fixture
def index(embedder) -> CapabilityIndex:
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name, shards=3, buffer_size=4))
    idx.auto_flush = False  # as in the service: a full buffer grows, a flusher drains it
    for agent_id, text in AGENTS.items():
        assert idx.upsert(make_vcv(embedder, agent_id, text)).accepted
    idx.flush()
    return idx


def answers(index: CapabilityIndex, embedder, top_k: int = 4) -> list[list[tuple[str, float]]]:
    engine = RouterEngine(index)
    out = []
    for text in QUERIES:
        res = engine.route(RouteQuery(text=text, top_k=top_k, abstain=False), embedder.embed_one(text)).response
        out.append([(m.agent_id, m.score) for m in res.matches])
    return out


def top(index: CapabilityIndex, embedder, text: str, k: int = 3) -> list[str]:
    engine = RouterEngine(index)
    res = engine.route(RouteQuery(text=text, top_k=k, abstain=False), embedder.embed_one(text)).response
    return [m.agent_id for m in res.matches]


def test_in_flight_batch_is_searched_and_changes_made_meanwhile_win(index, embedder) -> None:
    index.upsert(make_vcv(embedder, "es-legal", "Translates contracts and legal documents into Spanish"))
    index.upsert(make_vcv(embedder, "gardener", "Advises on pruning roses and growing vegetables"))
    for i in range(6):  # more than buffer_size: the buffer grows instead of flushing inline
        index.upsert(make_vcv(embedder, f"extra-{i}", f"Answers questions about topic number {i}"))
    batch = index.begin_flush()
    assert batch is not None and index.begin_flush() is None  # one batch in flight at a time
    assert top(index, embedder, "translate this contract into Spanish", 1) == ["es-legal"]  # brute-forced
    # while the batch is in flight: a new vector for one of its agents, and a delete of another
    index.upsert(make_vcv(embedder, "es-legal", "Gives weather forecasts for sailors and farmers", version=2))
    assert index.delete("gardener")
    # the graph insert runs in a real worker thread while queries are answered here
    worker = threading.Thread(target=index.insert_batch, args=(batch,))
    worker.start()
    while worker.is_alive():
        assert "gardener" not in top(index, embedder, "how do I prune my roses", 3)
    worker.join()
    index.finish_flush(batch)
    for _ in range(2):  # before and after the second vector reaches its graph
        assert "es-legal" not in top(index, embedder, "translate this contract into Spanish", 3)
        assert "es-legal" in top(index, embedder, "will it storm on my farm this week", 2)
        assert "gardener" not in top(index, embedder, "how do I prune my roses", 5)
        assert index.flush() in (0, 1)
    stats = index.stats_now()
    assert stats.pending == 0 and len(index) == len(AGENTS) + 7
    assert sum(stats.shard_sizes) == len(index)  # stale copies were tombstoned, not served


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the forked snapshot is POSIX only")
def test_forked_snapshot_is_the_index_at_fork_time_and_the_parent_loses_nothing(index, embedder, tmp_path) -> None:
    index.upsert(make_vcv(embedder, "es-legal", "Translates contracts and legal documents into Spanish"))
    index.set_reputation("math", 0.9)
    assert index.stats_now().pending == 1  # not in a graph yet: saved as pending
    at_fork = answers(index, embedder)
    pid = index.snapshot_in_child(tmp_path / "snap")
    # the parent goes on changing while the child writes
    assert index.delete("sql")
    index.upsert(make_vcv(embedder, "pg-tuner", "Tunes PostgreSQL indexes and slow queries"))
    index.flush()
    CapabilityIndex.wait_snapshot(pid)
    restored = CapabilityIndex.restore(tmp_path / "snap")
    assert answers(restored, embedder) == at_fork
    assert "sql" in restored and "pg-tuner" not in restored
    assert restored.stats_now().pending == 1
    assert restored.flush() == 1 and answers(restored, embedder) == at_fork
    # and the live index kept its changes
    assert "sql" not in index and top(index, embedder, "optimise this slow postgres query", 1) == ["pg-tuner"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the forked snapshot is POSIX only")
def test_service_flush_and_snapshot_run_beside_queries(index, embedder, tmp_path) -> None:
    """The service's helpers on a real event loop: queries are answered while both run."""
    index.upsert(make_vcv(embedder, "es-legal", "Translates contracts and legal documents into Spanish"))
    expected = answers(index, embedder)

    async def main() -> int:
        lock = asyncio.Lock()
        jobs = [
            asyncio.create_task(flush_in_background(index, lock)),
            asyncio.create_task(snapshot_in_background(index, tmp_path / "snap", lock)),
        ]
        answered = 0
        while not all(j.done() for j in jobs):
            assert answers(index, embedder) == expected
            answered += 1
            await asyncio.sleep(0)
        await asyncio.gather(*jobs)
        return answered

    assert asyncio.run(main()) >= 1
    assert index.stats_now().pending == 0
    assert answers(CapabilityIndex.restore(tmp_path / "snap"), embedder) == expected


def test_background_compaction_replays_changes_made_during_the_rebuild(index, embedder) -> None:
    for agent_id in ["derm", "tax", "travel", "recipes"]:
        index.delete(agent_id)
    targets = index.shards_to_compact(force=True)
    assert targets
    s = targets[0]
    rows = index.begin_compact(s)
    fresh = index.rebuild_shard(s, rows)  # a worker thread in the service
    # meanwhile: an agent of shard s leaves, another agent joins (and lands wherever it lands)
    gone = next(a for a, r in index.rows.items() if int(index.table.shard[r]) == s)
    index.delete(gone)
    index.upsert(make_vcv(embedder, "pg-tuner", "Tunes PostgreSQL indexes and slow queries"))
    index.flush()
    before = answers(index, embedder)
    index.finish_compact(s, fresh, rows)
    assert answers(index, embedder) == before
    assert gone not in top(index, embedder, AGENTS[gone], 5)
    assert top(index, embedder, "optimise this slow postgres query", 1) == ["pg-tuner"]
    assert index.stats_now().shard_sizes[s] == int((index.table.shard[: len(index.ids)] == s).sum())


def test_shards_searched_by_two_threads_give_the_same_answers(index, embedder) -> None:
    one = answers(index, embedder)
    index.config.query_threads = 2
    index.config.search_cache = 0  # walk the graphs again
    assert answers(index, embedder) == one


def test_lexical_compaction_built_aside_keeps_scores_and_changes_made_meanwhile(index, embedder) -> None:
    for agent_id in ["derm", "tax", "travel", "recipes", "math", "poetry", "weather"]:
        index.delete(agent_id)
    plan = index.begin_compact_lexical()
    assert plan is not None  # over half of the pool is garbage now
    built = LexicalIndex.build_compact(plan, chunk=2)  # a worker thread in the service
    # meanwhile: one agent re-describes itself, one leaves, one joins
    index.upsert(make_vcv(embedder, "sql", "Tunes PostgreSQL indexes and slow queries", version=2))
    index.delete("cardio")
    index.upsert(make_vcv(embedder, "heron", "Identifies herons, egrets and other wading birds"))
    before = answers(index, embedder)
    used = index.lexical.pool_used
    index.lexical.finish_compact(plan, built)
    assert index.lexical.pool_used < used
    index.config.search_cache = 0
    assert answers(index, embedder) == before
    # every live row's tokens and counts come out of the packed pool as they went in
    lex = index.lexical
    words = {i: t for t, i in lex.vocab.items()}
    for agent_id, text in [("sql", "Tunes PostgreSQL indexes and slow queries"),
                           ("heron", "Identifies herons, egrets and other wading birds"), ("python", AGENTS["python"])]:
        row = index.rows[agent_id]
        s, n = int(lex.start[row]), int(lex.length[row])
        got = {words[int(t)]: int(c) for t, c in zip(lex.pool_ids[s : s + n], lex.pool_tf[s : s + n], strict=True)}
        assert got == dict(Counter(tokenize(agent_text(agent_id, text, []))))


ORPHAN_PARENT = """
import sys, time
from router.index import CapabilityIndex, IndexConfig
index = CapabilityIndex(IndexConfig(dim=8, shards=1))
index.snapshot = lambda path, flush=True: time.sleep(120)  # a write that outlives its parent
print(index.snapshot_in_child(sys.argv[1]), flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")  # exited (a zombie until something reaps it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_snapshot_child_dies_with_its_router(tmp_path) -> None:
    """A SIGKILLed router's snapshot child must not write on: a restarted router's own snapshot
    would share its `.tmp` directory."""
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT, str(tmp_path / "index")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _gone(child)  # writing its snapshot
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), f"snapshot child {child} outlived its router"
    finally:
        parent.kill()
