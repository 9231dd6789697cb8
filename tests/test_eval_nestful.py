"""NESTFUL decomposition scoring on a hand-made sample whose F1 is known by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from benchmarks.eval.dag_metrics import normalise_plan, score_plan, validity
from benchmarks.eval.nestful_data import ApiSpec, gold_dag, load_split

SAMPLE = {
    "input": "Find flights from New York to London and hotels in London.",
    "output": [
        {"name": "SearchAirport", "arguments": {"query": "New York"}, "label": "var1"},
        {"name": "SearchAirport", "arguments": {"query": "London"}, "label": "var2"},
        {"name": "FlightSearch", "label": "var3",
         "arguments": {"origin": "$var1.skyId$", "dest": "$var2.skyId$", "ids": ["$var1.entityId$"]}},
        {"name": "SearchLocation", "arguments": {"query": "London"}, "label": "var4"},
        {"name": "SearchHotels", "arguments": {"geo": {"id": "$var4.geoId$"}, "price": "$100-$200"}, "label": "var5"},
        {"name": "var_result", "arguments": {"flights": "$var3$", "hotels": "$var5$"}},
    ],
}
CATALOG = {n: ApiSpec(name=n, description=f"{n} api") for n in
           ("SearchAirport", "FlightSearch", "SearchLocation", "SearchHotels", "Weather")}


def topic_embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in embedder: one axis per API family word, L2-normalised."""
    words = ["airport", "flight", "location", "hotel", "weather"]
    vecs = np.array([[float(w in t.lower()) for w in words] + [0.1] for t in texts])
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def test_gold_dag_extraction() -> None:
    dag = gold_dag(SAMPLE, "s0")
    assert [c.name for c in dag.calls] == ["SearchAirport", "SearchAirport", "FlightSearch",
                                           "SearchLocation", "SearchHotels"]  # var_result dropped
    assert dag.edges == [(0, 2), (1, 2), (3, 4)]  # field refs, list and dict nesting; "$100-$200" ignored
    assert dag.unresolved == [] and dag.api_names == ["FlightSearch", "SearchAirport", "SearchHotels",
                                                      "SearchLocation"]


def test_gold_dag_resolves_reused_labels_to_the_latest_earlier_call() -> None:
    sample = {"input": "x", "output": [
        {"name": "A", "arguments": {}, "label": "var1"},
        {"name": "B", "arguments": {"a": "$var1.f$"}, "label": "var2"},
        {"name": "C", "arguments": {"b": "$var2.g$", "z": "$var9$"}, "label": "var2"},
    ]}
    dag = gold_dag(sample, "reuse")
    assert dag.edges == [(0, 1), (1, 2)] and dag.unresolved == ["var9"]


def test_validity_rules() -> None:
    ok = [{"id": "a", "text": "t"}, {"id": "b", "text": "t", "depends_on": ["a"]}]
    assert validity(normalise_plan({"subtasks": ok})) == (True, "")
    assert validity([]) == (False, "empty plan")
    assert not validity(normalise_plan({"subtasks": [{"id": "a", "text": "t", "depends_on": ["zz"]}]}))[0]
    cyc = [{"id": "a", "text": "t", "depends_on": ["b"]}, {"id": "b", "text": "t", "depends_on": ["a"]}]
    valid, reason = validity(normalise_plan({"subtasks": cyc}))
    assert not valid and "cycle" in reason


def test_f1_on_a_known_prediction() -> None:
    dag = gold_dag(SAMPLE, "s0")
    plan = {"subtasks": [
        {"id": "1", "text": "Use SearchAirport for New York", "depends_on": []},
        {"id": "2", "text": "Use search_airport for London", "depends_on": []},   # named (normalised)
        {"id": "3", "text": "Run FlightSearch between the airports", "depends_on": ["1", "2"]},
        {"id": "4", "text": "Find hotels near the destination", "depends_on": ["3"]},  # unnamed: cosine
        {"id": "5", "text": "Check the weather", "depends_on": []},  # matches nothing in gold
    ]}
    s = score_plan(plan, dag, CATALOG, topic_embed)
    # nodes: 1,2,3 named; 4 -> SearchHotels by cosine; 5 unmatched; SearchLocation missed
    assert s.matched == 4 and s.named_matches == 3
    assert s.node_f1 == pytest.approx(2 * 4 / (5 + 5))
    # edges: 1->3, 2->3 correct; 3->4 maps to FlightSearch->SearchHotels, not gold
    assert (s.edge_tp, s.pred_edges, s.gold_edges) == (2, 3, 3)
    assert s.edge_f1 == pytest.approx(2 * 2 / (3 + 3))
    assert s.valid
    assert {s.matching["1"], s.matching["2"]} == {0, 1} and s.matching["3"] == 2 and s.matching["4"] == 4


def test_repeated_api_calls_are_told_apart_by_their_arguments(embedder) -> None:
    """Two SearchAirport subtasks go to the gold calls whose literal arguments they share."""
    dag = gold_dag(SAMPLE, "s0")
    plan = [{"id": "x", "text": "SearchAirport: London"}, {"id": "y", "text": "SearchAirport: New York"}]
    s = score_plan(plan, dag, CATALOG, embedder.embed)
    assert s.matching == {"x": 1, "y": 0}


def test_perfect_plan_and_failed_plan() -> None:
    dag = gold_dag(SAMPLE, "s0")
    perfect = [
        {"id": f"v{i}", "text": f"{c.name} {c.arguments}", "depends_on": [f"v{a}" for a, b in dag.edges if b == i]}
        for i, c in enumerate(dag.calls)
    ]
    s = score_plan(perfect, dag, CATALOG, topic_embed)
    assert (s.node_f1, s.edge_f1, s.valid) == (1.0, 1.0, True)
    failed = score_plan({"subtasks": [], "error": "boom"}, dag, CATALOG, topic_embed)
    assert (failed.node_f1, failed.edge_f1, failed.valid) == (0.0, 0.0, False)


def test_installed_nestful_data_loads_as_gold_dags() -> None:
    dags, catalog = load_split("executable")
    assert len(dags) == 85 and len(catalog) == 39
    assert all(c.name in catalog for d in dags for c in d.calls)
    assert all(b > a for d in dags for a, b in d.edges)  # references always point backwards
    assert dags[0].edges == [(0, 2), (1, 2), (3, 4)]


def test_harness_end_to_end_with_a_scripted_planner(tmp_path: Path, embedder) -> None:
    """The planner is a parameter: a scripted one that echoes the gold DAG scores 1.0."""
    from benchmarks.nestful_dag import agents_for, summarise, write_outputs

    dags, catalog = load_split("sgd")
    rows = []
    for dag in dags[:3]:
        agents = agents_for(dag, catalog, 2, __import__("random").Random(0))
        assert len(agents) == len(dag.api_names) + 2

        async def echo_planner(task: str, agent_descriptions: list[str], dag=dag):
            return {
                "subtasks": [
                    {
                        "id": c.label + str(i),
                        "text": f"{c.name} {c.arguments}",
                        "depends_on": [dag.calls[a].label + str(a) for a, b in dag.edges if b == i],
                    }
                    for i, c in enumerate(dag.calls)
                ]
            }

        plan = asyncio.run(echo_planner(dag.request, agents))
        rows.append(("sgd", score_plan(plan, dag, catalog, embedder.embed), plan))
    summary = summarise([r[1] for r in rows], np.random.default_rng(0))
    assert summary["node_f1"]["mean"] == 1.0 and summary["edge_f1"]["mean"] == 1.0 and summary["valid"]["mean"] == 1.0
    result = {
        "n_samples": 3,
        "scores": {"all": summary, "sgd": summary},
        "planner": "echo",
        "models": {"planner": "scripted"},
        "elapsed_s": 0.0,
        "config": {"subtasks_min": 1, "subtasks_max": 4, "distractors": 2, "matching": "rule", "min_similarity": 0.5},
    }
    paths = write_outputs(tmp_path, result, rows)
    assert Path(paths["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert "| sgd | 3 | 1.000 ± 0.000" in Path(paths["report"]).read_text()


def test_foa_planner_runs_the_worker_and_the_orchestrator_merge(embedder) -> None:
    """Every compatible agent proposes through the real worker code (its model here is a
    ScriptedLLM test double); identical proposals merge into one DAG, cycles are cut."""
    import json

    from benchmarks.eval.planners import foa_planner
    from fabric.llm.scripted import ScriptedLLM
    from fabric.settings import Settings

    proposal = {
        "subtasks": [
            {"id": "s1", "text": "Search the airport of New York", "depends_on": ["s3"]},
            {"id": "s2", "text": "Search the airport of London", "depends_on": []},
            {"id": "s3", "text": "Search flights between the two airports", "depends_on": ["s1", "s2"]},
        ]
    }
    llm = ScriptedLLM(lambda messages, schema: json.dumps(proposal))
    settings = Settings(max_proposers=2, compat_threshold=0.0)
    agents = [
        "SearchAirport: find airports by city name",
        "FlightSearch: search flights between airports",
        "Weather: weather forecast for a city",
    ]
    planner = foa_planner(llm, settings, embedder.embed, 2, 4)
    plan = asyncio.run(planner("Find flights from New York to London", agents))
    assert llm.call_count == 2 and len(plan["proposals"]) == 2  # max_proposers caps the proposers
    assert "Weather" not in {p["agent"] for p in plan["proposals"]}  # the least similar agent is left out
    nodes = normalise_plan(plan)
    assert len(nodes) == 3 and validity(nodes) == (True, "")
    assert len(plan["dropped_edges"]) == 1  # the s1 <-> s3 cycle was broken
    dag = gold_dag(SAMPLE, "s0")
    s = score_plan(plan, dag, CATALOG, embedder.embed)
    assert s.proposals_valid == 0.0  # both raw proposals had the cycle
