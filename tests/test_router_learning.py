"""Routing that learns from outcomes (router/learning.py): learned views move after node outcomes,
are bounded, paced and unlearned, survive a router restart, and come from real jobs over a real
broker. The ACL side (only orchestrators publish outcomes) is in tests/test_security.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fabric.federation import LocalFederation
from fabric.messages import JobOptions, NodeOutcome, RouteQuery
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig
from router.learning import LearningConfig
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.router_support import AGENTS, make_vcv
from tests.scripted_federation import SPECS, backend_factory

# a task the travel agent's description does not name; the learned view is built from its kind
TASK = "Which vaccinations do I need before a trip to Kenya?"
SIMILAR = [
    "What shots should I get before travelling to Tanzania?",
    "Do I need a yellow fever vaccine to visit Uganda?",
    "Which vaccines are recommended for a holiday in Peru?",
    "Is a malaria prophylaxis needed for Ghana?",
    "What immunisations are required to enter Brazil?",
    "Do I need a typhoid shot before going to India?",
]


def build(embedder, learning: LearningConfig | None = None) -> CapabilityIndex:
    index = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name), learning)
    for agent_id in ("travel", "recipes", "math", "poetry"):
        index.upsert(make_vcv(embedder, agent_id, AGENTS[agent_id]))
    index.upsert(make_vcv(embedder, "clinic", "General practitioner: symptoms, medicines and check-ups"))
    index.flush()
    return index


def outcome(embedder, text: str, kept: list[str], assigned: list[str] | None = None,
            completed: bool = True) -> NodeOutcome:
    """`kept` beat a rival by default ("math", assigned and not kept): a preference was shown."""
    vec = embedder.embed([text])[0]
    return NodeOutcome(job_id="job-1", node_id="s1", subtask=text, vector=vec, kept=kept,
                       assigned=assigned or [*kept, "math"], completed=completed)


def sim_of(index: CapabilityIndex, embedder, agent_id: str) -> dict[str, float]:
    vec = embedder.embed([TASK])[0]
    res = RouterEngine(index).route(RouteQuery(text=TASK, top_k=5, abstain=False), vec).response
    return next(m.factors for m in res.matches if m.agent_id == agent_id)


def test_a_learned_view_moves_with_evidence_is_bounded_paced_and_unlearned(embedder) -> None:
    index = build(embedder)
    before = sim_of(index, embedder, "clinic")
    assert before["learned"] == 0 and before["learned_lift"] == 0

    # one outcome: some lift, at most weight · 1/(1 + prior) of the gap to the learned cosine
    assert index.learn(outcome(embedder, SIMILAR[0], ["clinic"]), now=0.0) == ["clinic"]
    one = sim_of(index, embedder, "clinic")
    cfg = index.learned.config
    gap = one["learned"] - before["sim"]
    assert gap > 0 and 0 < one["learned_lift"] <= cfg.weight * (1 / (1 + cfg.prior)) * gap + 1e-6
    assert one["sim"] == pytest.approx(before["sim"] + one["learned_lift"], abs=1e-5)

    # more evidence, more lift (never past the learned cosine)
    for i, text in enumerate(SIMILAR[1:]):
        index.learn(outcome(embedder, text, ["clinic"]), now=1.0 + i)
    many = sim_of(index, embedder, "clinic")
    assert many["learned_support"] > one["learned_support"] and many["learned_lift"] > one["learned_lift"]
    assert many["sim"] < many["learned"]

    # paced: outcomes beyond max_per_minute in one minute are dropped and counted
    limited = index.learned.stats.rate_limited
    for i in range(cfg.max_per_minute + 3):
        index.learn(outcome(embedder, SIMILAR[i % len(SIMILAR)], ["recipes"]), now=100.0)
    assert index.learned.stats.rate_limited == limited + 3
    assert index.learned.of("recipes") is not None

    # an agent the router does not know gets no learned view (the state cannot grow without bound)
    assert index.learn(outcome(embedder, SIMILAR[0], ["ghost"]), now=150.0) == []
    assert index.learned.of("ghost") is None

    # an outcome where every assigned agent was kept (one agent, one cluster) shows no preference
    assert index.learn(outcome(embedder, SIMILAR[0], ["poetry"], assigned=["poetry"]), now=160.0) == []
    assert index.learned.of("poetry") is None and index.learned.stats.uncontested == 1

    # a job that did not complete teaches nothing
    assert index.learn(outcome(embedder, SIMILAR[0], ["poetry"], completed=False), now=200.0) == []
    assert index.learned.of("poetry") is None

    # assigned but not kept near its learned view: support shrinks
    support = index.learned.of("clinic")[1]  # type: ignore[index]
    index.learn(outcome(embedder, SIMILAR[0], ["travel"], assigned=["travel", "clinic"]), now=300.0)
    assert index.learned.of("clinic")[1] < support  # type: ignore[index]


def test_a_learned_view_cannot_lift_a_vague_agent_over_a_well_described_one_without_evidence(embedder) -> None:
    index = build(embedder)
    vec = embedder.embed([TASK])[0]
    engine = RouterEngine(index)

    def route() -> list:
        return engine.route(RouteQuery(text=TASK, top_k=5, abstain=False), vec).response.matches

    first = route()
    assert first[0].agent_id in ("travel", "clinic")
    other = "poetry"  # nothing about travel or health in its description
    # evidence about other tasks is (almost) no evidence for this one: the ranking stands
    for i, text in enumerate(["Write a haiku about the sea", "A limerick about a cat", "A sonnet on autumn"]):
        index.learn(outcome(embedder, text, [other]), now=float(i))
    after = route()
    assert after[0].agent_id == first[0].agent_id
    assert next(m for m in after if m.agent_id == other).factors["learned_lift"] < 0.02
    # one outcome of exactly this task is evidence: a lift, bounded by weight · n/(n + prior) of the gap
    index.learn(outcome(embedder, TASK, [other]), now=10.0)
    poetry = next(m for m in route() if m.agent_id == other).factors
    cfg = index.learned.config
    n = poetry["learned_support"]
    assert 0.9 < n < 1.1  # the exact task counts fully; the haiku barely
    assert 0 < poetry["learned_lift"] <= cfg.weight * n / (n + cfg.prior) * (1.0 - poetry["description"]) + 1e-5


def test_learned_views_survive_a_snapshot_and_an_agent_leaving_and_coming_back(embedder, tmp_path: Path) -> None:
    index = build(embedder)
    for i, text in enumerate(SIMILAR):
        index.learn(outcome(embedder, text, ["clinic"]), now=float(i))
    vec, support = index.learned.of("clinic")  # type: ignore[misc]
    index.snapshot(tmp_path / "snap")
    restored = CapabilityIndex.restore(tmp_path / "snap")
    again, again_support = restored.learned.of("clinic")  # type: ignore[misc]
    np.testing.assert_allclose(again, vec, atol=1e-6)
    assert again_support == pytest.approx(support)
    assert sim_of(restored, embedder, "clinic")["learned_lift"] == pytest.approx(
        sim_of(index, embedder, "clinic")["learned_lift"], abs=1e-5
    )
    restored.delete("clinic")
    restored.upsert(make_vcv(embedder, "clinic", "General practitioner: symptoms, medicines and check-ups"))
    restored.flush()
    assert sim_of(restored, embedder, "clinic")["learned_lift"] > 0


def test_jobs_publish_outcomes_that_routers_learn_from_and_keep_across_a_restart(mosquitto, tmp_path, embedder) -> None:
    # two drafters a node, each in its own cluster (similarity cut 0.99): one is kept over the
    # other, a preference the router can learn from (a single cluster keeps everyone: no lesson)
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, assign_floor=0.0, cluster_threshold=0.99)

    async def main() -> None:
        async with LocalFederation(settings, SPECS, backend_factory=backend_factory(), embedder=embedder) as fed:
            result = await fed.run_job(
                "My father has sudden chest pain. What should we do?",
                JobOptions(max_proposers=1, agents_per_node=2, refine_rounds=1),
            )
            assert result.status == "completed", result.failure_reason
            router = fed.router
            kept = {a for node in result.rounds.values() for c in node.values() for a in c.members}
            await eventually(lambda: router.counters.outcomes >= len(result.dag.nodes), timeout=15, what="outcomes")
            assert router.counters.rejected_outcomes == 0
            learned = set(router.index.learned.slots)
            assert learned and learned <= kept
            status = router.status()["learning"]
            assert status["agents"] == len(learned) and status["applied"] >= len(result.dag.nodes)
            assert status["uncontested"] == 0  # every node had a rival cluster
            # the factor shows in a routed answer
            text = result.dag.nodes[0].text
            res = router.engine.route(RouteQuery(text=text, top_k=5, abstain=False), embedder.embed([text])[0])
            assert any(m.factors["learned_lift"] > 0 for m in res.response.matches)
            router.snapshot_dir = tmp_path / "router-snap"
            router.save()
            before = {a: router.index.learned.of(a) for a in learned}
        restored = CapabilityIndex.restore(tmp_path / "router-snap")
        for agent_id, (vec, support) in before.items():
            got = restored.learned.of(agent_id)
            assert got is not None and got[1] == pytest.approx(support)
            np.testing.assert_allclose(got[0], vec, atol=1e-6)

    asyncio.run(main())


def test_learned_words_count_near_what_the_agent_was_kept_for_and_survive_a_restart(embedder, tmp_path: Path) -> None:
    """The words users asked a kept agent for ("IMAX") raise its lexical factor for the next task
    near those subtasks that names them; the rival that lost gets none, and no agent gets any
    without a learned view's evidence. They survive a snapshot and a new version of the agent,
    and forgetting the learning removes them."""
    index = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name))
    cinema = make_vcv(embedder, "cinema", "Search for movies by location, genre and show type")
    index.upsert(cinema)
    index.upsert(make_vcv(embedder, "showtimes", "Retrieve the showtimes of a movie at a location"))
    index.flush()
    task = "Is there an IMAX screening near Hayward tonight?"

    def factors(ix: CapabilityIndex, text: str = task) -> dict[str, dict[str, float]]:
        res = RouterEngine(ix).route(RouteQuery(text=text, top_k=2, abstain=False), embedder.embed([text])[0])
        return {m.agent_id: m.factors for m in res.response.matches}

    before = factors(index)
    assert before["cinema"]["learned_words"] == 0.0
    for i, text in enumerate(["Find an IMAX screening of Dune", "Any IMAX 3D films this weekend?"]):
        index.learn(outcome(embedder, text, ["cinema"], assigned=["cinema", "showtimes"]), now=float(i))
    assert "imax" in index.learned.words_of("cinema") and "showtimes" not in index.learned.texts
    after = factors(index)
    assert after["cinema"]["learned_words"] > 0 and after["cinema"]["learned_support"] > 0
    assert after["cinema"]["lexical"] == pytest.approx(before["cinema"]["lexical"] + after["cinema"]["learned_words"])
    assert after["showtimes"]["learned_words"] == 0.0
    for factor in factors(index, "Which tax forms do I file for IMAX stock dividends?").values():
        assert factor["learned_words"] == 0.0 or factor["learned_support"] > 0

    index.snapshot(tmp_path / "snap")
    restored = CapabilityIndex.restore(tmp_path / "snap")
    assert factors(restored)["cinema"]["lexical"] == pytest.approx(after["cinema"]["lexical"])
    restored.upsert(cinema.model_copy(update={"version": 2}))  # a new version keeps what it learned
    restored.flush()
    assert factors(restored)["cinema"]["lexical"] == pytest.approx(after["cinema"]["lexical"])

    index.forget_learning()
    assert factors(index)["cinema"]["lexical"] == pytest.approx(before["cinema"]["lexical"])


def test_foa_route_says_what_outcomes_added_to_a_match() -> None:
    from fabric.cli.routing import learned_note

    assert learned_note({"learned_lift": 0.1, "learned_words": 0.02}) == "  learned: sim +0.100, lexical +0.020"
    assert learned_note({"learned_lift": 0.0, "learned_words": 0.0, "sim": 0.5}) == ""


def test_a_learned_word_newer_than_the_query_adds_nothing_to_it() -> None:
    """A learned word whose token id came after the query was built (the vocabulary grew past the
    query's idf table) is not in the query: it adds no BM25, and borrows no other token's weight."""
    from router.lexical import LexicalIndex

    lex = LexicalIndex(capacity=4)
    lex.set_row(0, "alpha beta")
    query = lex.query("alpha")
    assert query.weight is not None
    newest = [lex.token_id(f"word{i}") for i in range(2 * len(query.weight))][-1]
    assert newest >= len(query.weight)
    words = np.array([[newest, -1]], dtype=np.int32)
    assert lex.extra_scores(query, np.array([0]), words)[0] == 0.0
    known = np.array([[lex.vocab["alpha"], -1]], dtype=np.int32)
    assert lex.extra_scores(query, np.array([0]), known)[0] > 0.0
