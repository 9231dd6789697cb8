"""α and its gates: a property test that no gate is ever bypassed, plus factor bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.messages import RouteQuery
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig
from router.scoring import LIMIT_ATOL, LIMIT_RTOL
from tests.router_support import AGENTS, make_vcv

FLAGS = ["hipaa", "gdpr", "pii", "code-exec"]
SKILLS = ["ecg", "sql", "python", "french", "tax", "poems"]
TEXTS = list(AGENTS.values())

agent_strategy = st.fixed_dictionaries(
    {
        "text": st.integers(0, len(TEXTS) - 1),
        "policies": st.lists(st.sampled_from(FLAGS), unique=True, max_size=3),
        "skills": st.lists(st.sampled_from(SKILLS), unique=True, max_size=3),
        "bloom_only": st.booleans(),
        "cost": st.floats(0, 0.05),
        "latency": st.floats(0, 20_000),
        "online": st.booleans(),
        "reputation": st.floats(0, 1),
    }
)
query_strategy = st.fixed_dictionaries(
    {
        "text": st.sampled_from(
            ["check my heart rhythm", "write SQL", "translate to French", "poem", "tax deductions"]
        ),
        "policies": st.lists(st.sampled_from(FLAGS), unique=True, max_size=2),
        "skills": st.lists(st.sampled_from(SKILLS), unique=True, max_size=2),
        "max_cost": st.none() | st.floats(0, 0.02),
        "deadline_ms": st.none() | st.floats(1000, 30_000),
        "top_k": st.integers(1, 8),
    }
)


@pytest.fixture(scope="module")
def vectors(embedder):
    return {t: make_vcv(embedder, "x", t) for t in TEXTS}


def at_most(value: float, limit: float, slack: float = 1.0) -> bool:
    """The gates' "≤ limit": float32 columns, so up to LIMIT_RTOL·|limit| + LIMIT_ATOL above
    (`slack` > 1 for a value that went through float32 once more on its way out)."""
    return value <= limit + slack * (LIMIT_RTOL * abs(limit) + LIMIT_ATOL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(agents=st.lists(agent_strategy, min_size=1, max_size=14), query=query_strategy)
def test_gates_are_never_bypassed(embedder, vectors, agents, query) -> None:
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name, shards=2, buffer_size=4))
    truth = {}
    for i, a in enumerate(agents):
        base = vectors[TEXTS[a["text"]]]
        vcv = base.model_copy(
            update={
                "agent_id": f"a{i}",
                "policies": a["policies"],
                "skills": [] if a["bloom_only"] else a["skills"],
                "skills_bloom": make_bloom(a["skills"]),
                "resources": base.resources.model_copy(
                    update={"cost_per_1k_input": a["cost"], "cost_per_1k_output": a["cost"], "latency_ms": a["latency"]}
                ),
            }
        )
        assert idx.upsert(vcv).accepted
        idx.set_online(f"a{i}", a["online"])
        idx.set_reputation(f"a{i}", a["reputation"])
        truth[f"a{i}"] = (vcv, a)
    engine = RouterEngine(idx, min_fetch=2, over_fetch=1)
    q = RouteQuery(
        text=query["text"],
        top_k=query["top_k"],
        policies=query["policies"],
        skills=query["skills"],
        max_cost=query["max_cost"],
        deadline_ms=query["deadline_ms"],
        abstain=False,
    )
    out = engine.route(q, embedder.embed_one(query["text"]), query_id="q")
    eligible = []
    for agent_id, (vcv, a) in truth.items():
        ok = (
            a["online"]
            and set(q.policies) <= set(vcv.policies)
            and set(q.skills) <= set(a["skills"])
            and (
                q.max_cost is None or at_most(vcv.resources.expected_cost(q.input_tokens, q.output_tokens), q.max_cost)
            )
            and (q.deadline_ms is None or at_most(vcv.resources.expected_latency_ms(q.output_tokens), q.deadline_ms))
        )
        if ok:
            eligible.append(agent_id)
    got = [m.agent_id for m in out.response.matches]
    for m in out.response.matches:
        vcv, a = truth[m.agent_id]
        assert a["online"]
        assert set(q.policies) <= set(vcv.policies), "policy gate bypassed"
        assert set(q.skills) <= set(a["skills"]), "skills gate bypassed"
        if q.max_cost is not None:
            assert at_most(m.expected_cost, q.max_cost, slack=2), "budget cut bypassed"
        if q.deadline_ms is not None:
            assert at_most(m.expected_latency_ms, q.deadline_ms, slack=2), "deadline cut bypassed"
        product = math.prod(m.factors[f] for f in ("sim", "lexical", "resources", "spec", "reputation"))
        assert m.score == pytest.approx(product, rel=1e-4, abs=1e-6)
        assert all(m.factors[g] == 1.0 for g in ("policy", "skills", "budget", "deadline"))
    # nothing eligible is lost: the result has min(k, #eligible) agents (tiny federation, full over-fetch)
    assert len(got) == min(q.top_k, len(eligible))
    for event in out.audits:
        assert event.agent_id not in got and event.gate in ("policy", "skills", "budget", "deadline")


def make_bloom(skills: list[str]) -> str:
    from fabric.bloom import BloomFilter

    return BloomFilter.of(skills).to_b64()


def test_audit_event_for_blocked_top_agent(embedder) -> None:
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name))
    idx.upsert(make_vcv(embedder, "cardio", AGENTS["cardio"]))
    idx.upsert(make_vcv(embedder, "cardio-hipaa", "General medical assistant", policies=["hipaa"]))
    engine = RouterEngine(idx)
    text = "interpret this ECG heart rhythm"
    out = engine.route(
        RouteQuery(text=text, top_k=1, policies=["hipaa"], abstain=False), embedder.embed_one(text), query_id="q1"
    )
    assert [m.agent_id for m in out.response.matches] == ["cardio-hipaa"]
    assert [(e.agent_id, e.gate, e.query_id) for e in out.audits] == [("cardio", "policy", "q1")]
    without_gate = out.audits[0].score_without_gate
    assert without_gate is not None and without_gate > out.response.matches[0].score
    # the audit carries α's factors, the learned view's among them (0: nothing learned yet)
    assert out.audits[0].factors["sim"] > 0 and out.audits[0].factors["learned_lift"] == 0


def test_cheaper_agent_wins_a_tie_and_reputation_reorders(embedder) -> None:
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name))
    idx.upsert(make_vcv(embedder, "pricey", AGENTS["sql"], cost_per_1k_input=2.0, cost_per_1k_output=2.0))
    idx.upsert(make_vcv(embedder, "cheap", AGENTS["sql"], cost_per_1k_input=0.0, cost_per_1k_output=0.0))
    engine = RouterEngine(idx)
    text = "write a SQL query"
    vec = embedder.embed_one(text)
    res = engine.route(RouteQuery(text=text, top_k=2, abstain=False), vec).response
    assert [m.agent_id for m in res.matches] == ["cheap", "pricey"]
    assert res.matches[1].factors["cost_factor"] < 1.0 == res.matches[0].factors["cost_factor"]
    idx.upsert(make_vcv(embedder, "pricey", AGENTS["sql"], version=2))  # now free too
    idx.set_reputation("pricey", 0.9)
    res = engine.route(RouteQuery(text=text, top_k=2, abstain=False), vec).response
    assert res.matches[0].agent_id == "pricey" and res.matches[0].factors["reputation"] > 1.0


def test_abstains_below_threshold(embedder) -> None:
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name))
    for agent_id, text in AGENTS.items():
        idx.upsert(make_vcv(embedder, agent_id, text))
    engine = RouterEngine(idx)
    scores = {}
    for text in ["solve this integral of x squared", "who won the 1998 world cup?"]:
        res = engine.route(RouteQuery(text=text, top_k=1, abstain=False), embedder.embed_one(text)).response
        scores[text] = res.matches[0].score
    on, off = scores.values()
    assert on > off
    engine.set_threshold((on + off) / 2)
    res = engine.route(
        RouteQuery(text="who won the 1998 world cup?"), embedder.embed_one("who won the 1998 world cup?")
    ).response
    assert res.abstained and res.matches == []
    res = engine.route(
        RouteQuery(text="solve this integral of x squared"), embedder.embed_one("solve this integral of x squared")
    ).response
    assert not res.abstained and res.matches[0].agent_id == "math"
    assert res.threshold is not None and np.isclose(res.threshold, (on + off) / 2)


@pytest.mark.parametrize("exact_gated_max", [8192, 0], ids=["exact-among-passing", "filtered-graph-walk"])
def test_selective_gate_finds_agent_beyond_max_fetch(embedder, exact_gated_max: int) -> None:
    """Only the least similar agent holds the flag: the search among passing agents still
    returns it, whether exact (few pass) or an hnswlib-filtered walk (many pass)."""
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name, shards=2, buffer_size=3))
    for agent_id, text in AGENTS.items():
        idx.upsert(make_vcv(embedder, agent_id, text, policies=["gdpr"] if agent_id == "poetry" else []))
    idx.flush()
    engine = RouterEngine(idx, over_fetch=1, min_fetch=1, max_fetch=2, exact_gated_max=exact_gated_max)
    text = "optimise a SQL query"
    out = engine.route(
        RouteQuery(text=text, top_k=2, policies=["gdpr"], abstain=False), embedder.embed_one(text), query_id="q"
    )
    assert [m.agent_id for m in out.response.matches] == ["poetry"]
    assert any(e.agent_id == "sql" and e.gate == "policy" for e in out.audits)


def test_a_hopeless_gate_skips_the_deeper_fetches(embedder) -> None:
    """No fetched agent passes and max_fetch would not change that (by the share passing): the
    engine searches among the passing agents at once, with the same answer as fetching deeper."""
    idx = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name, shards=2))
    for agent_id, text in AGENTS.items():
        idx.upsert(make_vcv(embedder, agent_id, text, policies=["gdpr"] if agent_id == "poetry" else []))
    idx.flush()
    text = "optimise a SQL query"
    query = RouteQuery(text=text, top_k=1, policies=["gdpr"], abstain=False)
    engine = RouterEngine(idx, min_fetch=2, max_fetch=len(AGENTS))
    quick = engine.route(query, embedder.embed_one(text))
    assert [m.agent_id for m in quick.response.matches] == ["poetry"]
    first = max(engine.over_fetch * query.top_k, engine.min_fetch)
    assert quick.fetched == first < len(AGENTS)  # not grown 4x toward max_fetch first
