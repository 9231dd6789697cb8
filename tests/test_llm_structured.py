"""Structured output (extraction, repair, retry, fallback) on ScriptedLLM: these test the
orchestration-side logic around a model, so a scripted model pins down each case exactly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

from fabric.llm.base import ChatMessage, LLMOutputError, LLMUnavailable
from fabric.llm.scripted import ScriptedLLM
from fabric.llm.structured import JSONExtractError, complete_json, extract_json, repair_json


class Plan(BaseModel):
    title: str
    steps: list[str] = Field(min_length=1)
    parallel: bool = False


ASK = [ChatMessage.system("You plan."), ChatMessage.user("Plan a picnic.")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"title": "a", "steps": ["x"]}', {"title": "a", "steps": ["x"]}),
        ('Here you go:\n```json\n{"title": "a", "steps": ["x"]}\n```\nEnjoy!', {"title": "a", "steps": ["x"]}),
        ('Sure. {"title": "a {b}", "steps": []} and more {text}', {"title": "a {b}", "steps": []}),
        ('{"title": "a", "steps": ["x", "y",],}', {"title": "a", "steps": ["x", "y"]}),
        ("{'title': 'it\\'s', 'steps': ['x'], 'parallel': True}", {"title": "it's", "steps": ["x"], "parallel": True}),
        ('{title: "a", steps: ["x"], parallel: None}', {"title": "a", "steps": ["x"], "parallel": None}),
        ('{"title": "a", "steps": ["x", "y"', {"title": "a", "steps": ["x", "y"]}),
        (
            '{"title": "a", "steps": ["x"], "note": "cut off mid-str',
            {"title": "a", "steps": ["x"], "note": "cut off mid-str"},
        ),
        ('{"title": "a", "steps": ["x"], "parallel": tr', {"title": "a", "steps": ["x"]}),
        ('{"title": "line\nbreak", "steps": ["x"]}', {"title": "line\nbreak", "steps": ["x"]}),
    ],
)
def test_extract_json_finds_and_repairs(text: str, expected: dict[str, Any]) -> None:
    assert extract_json(text) == expected


def test_extract_json_without_repair_rejects_defects() -> None:
    with pytest.raises(JSONExtractError):
        extract_json('{"title": "a",}', repair=False)


def test_extract_json_says_what_it_saw() -> None:
    with pytest.raises(JSONExtractError, match="no JSON object.*I cannot help"):
        extract_json("I cannot help with that.")


def test_repair_json_output_is_valid_json() -> None:
    fixed = repair_json("{'a': [1, 2,], 'b': {'c': False,")
    assert json.loads(fixed) == {"a": [1, 2], "b": {"c": False}}


def test_complete_json_first_try_passes_schema() -> None:
    llm = ScriptedLLM(['{"title": "Picnic", "steps": ["buy food", "go"]}'])
    plan, usage, attempts = asyncio.run(complete_json(llm, ASK, Plan, max_tokens=64))
    assert plan == Plan(title="Picnic", steps=["buy food", "go"])
    assert attempts == 1
    assert llm.calls[0].json_schema == Plan.model_json_schema()
    assert usage.calls == 1 and usage.output_tokens == 6 and usage.input_tokens == 5


def test_complete_json_retries_with_validation_error_fed_back() -> None:
    llm = ScriptedLLM(['{"title": "Picnic", "steps": []}', '{"title": "Picnic", "steps": ["go"]}'])
    plan, usage, attempts = asyncio.run(complete_json(llm, ASK, Plan, max_tokens=64))
    assert plan.steps == ["go"] and attempts == 2
    assert usage.calls == 2 and usage.output_tokens == 4 + 4
    feedback = llm.calls[1].messages[-1].content
    assert "steps" in feedback and "at least 1" in feedback
    assert llm.calls[1].messages[-2].role == "assistant"  # the bad answer is shown back
    assert llm.calls[1].temperature > llm.calls[0].temperature


def test_complete_json_repairs_instead_of_retrying() -> None:
    llm = ScriptedLLM(["```json\n{'title': 'Picnic', 'steps': ['go',],\n```"])
    plan, _, attempts = asyncio.run(complete_json(llm, ASK, Plan, max_tokens=64))
    assert plan.steps == ["go"] and attempts == 1


def test_complete_json_truncated_by_max_tokens_is_repaired() -> None:
    # ScriptedLLM cuts answers at max_tokens words, like a real model hitting its limit.
    llm = ScriptedLLM(['{"title": "Picnic", "steps": ["buy food", "walk to the park", "eat"]}'])
    plan, _, _ = asyncio.run(complete_json(llm, ASK, Plan, max_tokens=6))
    assert plan.title == "Picnic" and plan.steps[0] == "buy food"


def test_complete_json_fallback_after_retries_never_raises() -> None:
    llm = ScriptedLLM(["no idea", "still prose", "nope"])
    fallback = Plan(title="one node", steps=["answer directly"])
    plan, usage, attempts = asyncio.run(
        complete_json(llm, ASK, Plan, max_tokens=64, retries=2, fallback=lambda: fallback)
    )
    assert plan is fallback
    assert attempts == 3 and usage.calls == 3 and llm.call_count == 3


def test_complete_json_without_fallback_raises_clear_error() -> None:
    llm = ScriptedLLM(['{"title": 3}', '{"title": 4}'], name="scripted-test")
    with pytest.raises(LLMOutputError, match=r"scripted-test gave no valid Plan in 2 attempts.*steps"):
        asyncio.run(complete_json(llm, ASK, Plan, max_tokens=64, retries=1))


def test_complete_json_lets_transport_errors_through() -> None:
    llm = ScriptedLLM([LLMUnavailable("server down")])
    with pytest.raises(LLMUnavailable, match="server down"):
        asyncio.run(complete_json(llm, ASK, Plan, max_tokens=64, fallback=lambda: Plan(title="x", steps=["y"])))


def test_scripted_llm_callable_stream_and_latency() -> None:
    seen: list[dict[str, Any] | None] = []

    def respond(messages: Any, schema: dict[str, Any] | None) -> str:
        seen.append(schema)
        return f"echo {messages[-1].content}"

    llm = ScriptedLLM(respond, latency_s=0.01)

    async def run() -> tuple[str, list[str], int]:
        done = await llm.complete([ChatMessage.user("one two")], max_tokens=10)
        stream = llm.stream([ChatMessage.user("a b c")], max_tokens=3)
        parts = [p async for p in stream]
        return done.text, parts, stream.usage.output_tokens

    text, parts, streamed_tokens = asyncio.run(run())
    assert text == "echo one two"
    assert parts == ["echo", " a", " b"] and streamed_tokens == 3
    assert seen == [None, None] and llm.usage.calls == 2
