"""Capability index: versions, tombstones, offline agents, snapshot/restore, compaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fabric.messages import RouteQuery
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig
from tests.router_support import AGENTS, make_vcv


@pytest.fixture
def index(embedder):
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name, shards=3, buffer_size=5))
    for agent_id, text in AGENTS.items():
        assert idx.upsert(make_vcv(embedder, agent_id, text)).accepted
    return idx


def ranked(engine: RouterEngine, embedder, text: str, **kw) -> list[str]:
    q = RouteQuery(text=text, top_k=kw.pop("top_k", 3), abstain=False, **kw)
    return [m.agent_id for m in engine.route(q, embedder.embed_one(text)).response.matches]


def test_best_agent_first(index, embedder) -> None:
    engine = RouterEngine(index)
    assert ranked(engine, embedder, "my ECG shows an irregular heart rhythm")[0] == "cardio"
    assert ranked(engine, embedder, "optimise this slow postgres query")[0] == "sql"


def test_newer_version_replaces_and_older_is_ignored(index, embedder) -> None:
    engine = RouterEngine(index)
    v2 = make_vcv(embedder, "poetry", "Forecasts rainfall and storms for farmers", version=2)
    assert index.upsert(v2).accepted
    assert index.version_of("poetry") == 2
    assert "poetry" in ranked(engine, embedder, "will it storm on my farm this week", top_k=2)
    stale = make_vcv(embedder, "poetry", "Writes poems, song lyrics and short stories", version=1)
    result = index.upsert(stale)
    assert not result.accepted and result.reason.startswith("stale")
    same = make_vcv(embedder, "poetry", "Writes poems", version=2)
    assert not index.upsert(same).accepted
    assert index.version_of("poetry") == 2
    assert "poetry" not in ranked(engine, embedder, "write a sonnet about love", top_k=1)
    assert len(index) == len(AGENTS)


def test_tombstone_removes_and_rejoin_reuses_row(index, embedder) -> None:
    engine = RouterEngine(index)
    index.flush()
    row = index.rows["tax"]
    assert index.delete("tax")
    assert not index.delete("tax")
    assert "tax" not in ranked(engine, embedder, "help me file my income tax return", top_k=len(AGENTS))
    # any version re-joins after a tombstone, and the freed row is reused
    assert index.upsert(make_vcv(embedder, "newcomer", "Files income tax returns for freelancers")).accepted
    assert index.rows["newcomer"] == row
    assert ranked(engine, embedder, "help me file my income tax return", top_k=1) == ["newcomer"]
    assert index.upsert(make_vcv(embedder, "tax", AGENTS["tax"], version=1)).accepted
    assert len(index) == len(AGENTS) + 1


def test_offline_excluded_immediately_and_back_when_online(index, embedder) -> None:
    engine = RouterEngine(index)
    index.set_online("cardio", False)
    assert "cardio" not in ranked(engine, embedder, "interpret my ECG", top_k=len(AGENTS))
    index.set_online("cardio", True)
    assert ranked(engine, embedder, "interpret my ECG", top_k=1) == ["cardio"]
    # offline status that arrives before the VCV holds when the VCV comes
    index.set_online("late", False)
    index.upsert(make_vcv(embedder, "late", "Interprets ECG traces and heart rhythms"))
    assert "late" not in ranked(engine, embedder, "interpret my ECG", top_k=len(AGENTS))


def test_refuses_other_embedding_model(index, embedder) -> None:
    vcv = make_vcv(embedder, "alien", "Does anything", model="some-other-model")
    result = index.upsert(vcv)
    assert not result.accepted and "embedding model" in result.reason
    assert "alien" not in index


def test_snapshot_restore_gives_identical_answers(index, embedder, tmp_path: Path) -> None:
    index.set_online("derm", False)
    index.set_reputation("math", 0.9)
    index.delete("travel")
    index.meta["abstain_threshold"] = 0.123
    before_engine = RouterEngine(index)
    texts = ["rash on my arm", "integrate x squared", "translate this letter to French", "plan a trip to Rome"]
    before = [
        before_engine.route(RouteQuery(text=t, top_k=5, abstain=False), embedder.embed_one(t)).response for t in texts
    ]
    index.snapshot(tmp_path / "snap")
    restored = CapabilityIndex.restore(tmp_path / "snap")
    after_engine = RouterEngine(restored)
    after = [
        after_engine.route(RouteQuery(text=t, top_k=5, abstain=False), embedder.embed_one(t)).response for t in texts
    ]
    assert [r.model_dump() for r in before] == [r.model_dump() for r in after]
    assert after_engine.threshold == pytest.approx(0.123)
    assert "travel" not in restored and "derm" in restored
    # the restored index keeps taking upserts
    assert restored.upsert(make_vcv(embedder, "travel", AGENTS["travel"])).accepted


def test_compaction_keeps_answers(embedder) -> None:
    idx = CapabilityIndex(
        IndexConfig(
            dim=embedder.dim, embedding_model=embedder.model_name, shards=2, buffer_size=4, scheme="centroid", probe=2
        )
    )
    for agent_id, text in AGENTS.items():
        idx.upsert(make_vcv(embedder, agent_id, text))
    idx.flush()
    for agent_id in list(AGENTS)[:6]:
        idx.delete(agent_id)
    engine = RouterEngine(idx)
    text = "write a poem about the sea"
    before = ranked(engine, embedder, text, top_k=6)
    assert idx.compact(force=True) >= 1
    assert sum(len(d) for d in idx.shard_deleted) == 0
    assert ranked(engine, embedder, text, top_k=6) == before
    live = np.array(sorted(idx.rows.values()))
    vecs = idx.vectors(live)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)


def test_repeated_queries_are_served_from_memory_until_the_index_changes(index, embedder) -> None:
    engine = RouterEngine(index)
    text = "translate this contract into Spanish"
    first = ranked(engine, embedder, text, top_k=3)
    hits = index.stats.search_cache_hits
    assert ranked(engine, embedder, text, top_k=3) == first
    assert index.stats.search_cache_hits == hits + 1  # the same vector and k: no graph walk
    rows, _ = index.search(embedder.embed_one(text), 8)
    with pytest.raises(ValueError):
        rows[0] = 0  # a cached answer cannot be altered by a caller
    # a new agent (its vector enters search) is found at once: the remembered answer is dropped
    assert index.upsert(
        make_vcv(embedder, "es-legal", "Translates contracts and legal documents into Spanish")
    ).accepted
    assert ranked(engine, embedder, text, top_k=3)[0] == "es-legal"
    assert index.delete("es-legal")
    assert ranked(engine, embedder, text, top_k=3) == first
    # going offline changes scores, not the search: still answered from memory, still excluded
    index.set_online(first[0], False)
    hits = index.stats.search_cache_hits
    assert first[0] not in ranked(engine, embedder, text, top_k=3)
    assert index.stats.search_cache_hits == hits + 1
