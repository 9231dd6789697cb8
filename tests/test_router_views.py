"""Several views per agent (issue 20 part 1): VCVs carry example views, the router stores them
as int8 beside the spec, fuses the best one into α's similarity, and keeps them across a snapshot.
Real embedder, real index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agents.sdk import build_vcv, view_texts
from agents.spec import AgentSpec
from fabric.messages import RouteQuery
from fabric.vcv import MAX_VIEWS
from fabric.views import tool_views, words
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig
from tests.router_support import make_vcv

QUESTION = "What is the exchange rate from USD to EUR today?"


def index_of(embedder, **config) -> CapabilityIndex:
    return CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name, **config))


def with_views(embedder, vcv, texts: list[str]):
    vecs = embedder.embed(texts)
    return vcv.model_copy(update={"examples": texts, "views": [v.tolist() for v in vecs]})


def test_tool_views_read_a_tool_doc_as_a_user_would_ask() -> None:
    assert words("get_current_weather") == "get current weather" == words("getCurrentWeather")
    views = tool_views("convert_currency", "Converts money", {"amount": {"description": "how much"}, "to": {}})
    assert views == ["convert currency", "convert currency: Converts money", "convert currency with amount, to",
                     "convert currency: amount, how much"]


def test_a_vcv_needs_one_unit_view_per_example(embedder) -> None:
    vcv = make_vcv(embedder, "fx", "Finance helper")
    with pytest.raises(ValidationError, match="one view per example"):
        vcv.model_validate(vcv.model_dump() | {"examples": ["a", "b"], "views": [vcv.capability]})
    with pytest.raises(ValidationError, match="L2-normalised"):
        vcv.model_validate(vcv.model_dump() | {"examples": ["a"], "views": [[0.5] * embedder.dim]})


def test_an_sdk_agent_publishes_its_examples_and_skills_as_views(embedder) -> None:
    spec = AgentSpec(id="fx", description="Finance helper", skills=["currency conversion"],
                     examples=["convert 100 dollars to euros"])
    assert view_texts(spec) == ["convert 100 dollars to euros"]
    vcv = build_vcv(spec, embedder)
    assert vcv.examples == view_texts(spec) and len(vcv.views) == 1
    assert float(vcv.views_array()[0] @ embedder.embed(["convert 100 dollars to euros"])[0]) > 0.99
    many = AgentSpec(id="m", description="d", examples=[f"task {i}" for i in range(20)])
    assert len(view_texts(many)) == MAX_VIEWS


def test_an_agent_without_examples_has_no_views(embedder) -> None:
    assert build_vcv(AgentSpec(id="a", description="Finance helper", skills=["tax"]), embedder).views == []


def test_a_matching_view_lifts_an_agent_whose_description_says_little(embedder, tmp_path: Path) -> None:
    """Two agents with vague descriptions: the one whose example is the user's kind of question
    wins with views, and keeps winning after a snapshot and restore."""
    def route(index: CapabilityIndex) -> list[tuple[str, float]]:
        res = RouterEngine(index).route(RouteQuery(text=QUESTION, top_k=2, abstain=False),
                                        embedder.embed([QUESTION])[0]).response
        return [(m.agent_id, m.factors["view"]) for m in res.matches]

    agents = {"fx": "Finance helper for businesses", "tax": "Finance helper for tax matters"}
    index = index_of(embedder)
    for agent_id, description in agents.items():
        index.upsert(make_vcv(embedder, agent_id, description))
    index.flush()
    plain = route(index)
    assert all(view == 0.0 for _, view in plain)  # no views: the factor is 0, α as before

    index = index_of(embedder)
    index.upsert(with_views(embedder, make_vcv(embedder, "fx", agents["fx"]),
                            ["convert dollars to euros at today's exchange rate", "currency conversion"]))
    index.upsert(with_views(embedder, make_vcv(embedder, "tax", agents["tax"]),
                            ["file my income tax return", "deductions for home office"]))
    index.flush()
    ranked = route(index)
    assert ranked[0][0] == "fx" and ranked[0][1] > 0.5 > ranked[1][1]

    index.snapshot(tmp_path / "snap")
    restored = CapabilityIndex.restore(tmp_path / "snap")
    assert route(restored) == ranked
    assert np.array_equal(restored.table.view_len[:2], index.table.view_len[:2])


def test_a_new_version_with_fewer_views_reuses_its_slot(embedder) -> None:
    index = index_of(embedder)
    vcv = make_vcv(embedder, "fx", "Finance helper")
    index.upsert(with_views(embedder, vcv, ["a b c", "d e f", "g h i"]))
    used = index.table.view_used
    index.upsert(with_views(embedder, vcv.model_copy(update={"version": 2}), ["x y z"]))
    assert index.table.view_used == used and int(index.table.view_len[index.rows["fx"]]) == 1


def test_the_words_of_an_agents_examples_count_in_its_lexical_factor(embedder) -> None:
    """Two agents described alike: the one whose example names the task's terms ("IBAN", a word
    its description lacks) gets the higher lexical factor; without examples in BM25 (the earlier
    form, `lexical_examples=False`) both get the same. A new version without the example loses it."""
    question = "Check whether this IBAN is valid: DE89370400440532013000"

    def lexical(index: CapabilityIndex) -> dict[str, float]:
        res = RouterEngine(index).route(RouteQuery(text=question, top_k=2, abstain=False),
                                        embedder.embed([question])[0]).response
        return {m.agent_id: m.factors["lexical"] for m in res.matches}

    def federation(**config) -> CapabilityIndex:
        index = index_of(embedder, **config)
        index.upsert(with_views(embedder, make_vcv(embedder, "bank", "Finance helper for businesses"),
                                ["validate an IBAN account number"]))
        index.upsert(with_views(embedder, make_vcv(embedder, "tax", "Finance helper for businesses"),
                                ["file my income tax return"]))
        index.flush()
        return index

    index = federation()
    with_words = lexical(index)
    assert with_words["bank"] > with_words["tax"]
    without = lexical(federation(lexical_examples=False))
    assert without["bank"] == pytest.approx(without["tax"]) and without["bank"] < with_words["bank"]

    index.upsert(with_views(embedder, make_vcv(embedder, "bank", "Finance helper for businesses", version=2),
                            ["file my income tax return"]))
    index.flush()
    assert lexical(index)["bank"] == pytest.approx(lexical(index)["tax"])


def test_an_agents_bm25_document_takes_each_new_word_of_its_examples_once() -> None:
    from router.lexical import agent_text

    text = agent_text("math.hypot", "Calculate the Euclidean norm", ["x", "y"],
                      ["math hypot: x, the hypotenuse", "hypotenuses of right triangles", "norm"])
    assert text == "math hypot Calculate the Euclidean norm x y hypotenuse right triangles"
