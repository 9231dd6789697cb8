"""A federation whose agents answer from a script: for tests of orchestration logic only.

The broker, router, orchestrator, bus, task dispatch and job store are all the real ones; only
the LLM behind each agent is a `ScriptedLLM`, whose answers depend on the prompt so that the
DAG, clusters and votes are known in advance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.spec import AgentSpec
from fabric.llm.base import ChatMessage
from fabric.llm.scripted import ScriptedLLM
from fabric.vcv import Resources

PLAN = {
    "subtasks": [
        {"id": "s1", "text": "List the warning signs of a heart attack", "depends_on": []},
        {"id": "s2", "text": "Explain when to call emergency services", "depends_on": ["s1"]},
        {"id": "s3", "text": "Describe first aid while waiting for the ambulance", "depends_on": ["s1"]},
        {"id": "s4", "text": "Summarise the advice for the family", "depends_on": ["s2", "s3"]},
    ]
}


def scripted_answer(agent_id: str, done_from_round: int = 2, refine_delay_rounds: bool = False):
    def respond(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        user = messages[-1].content
        title = (schema or {}).get("title")
        if title == "Plan":
            return json.dumps(PLAN)
        if title == "RefineOutput":
            rnd = 1 + user.count("(revised)")  # each round appends one marker to the answer
            own = user.split("Your answer:\n", 1)[1].split("\n\nYour peers' answers:", 1)[0]
            return json.dumps({"answer": own + " (revised)", "done": rnd >= done_from_round, "confidence": 0.7})
        part = user.split("Your part: ", 1)[-1].split("\n", 1)[0]
        return f"{agent_id} on '{part}': call emergency services if chest pain lasts more than a few minutes."

    return respond


SPECS = [
    AgentSpec(
        id="er-doc",
        description="Emergency medicine: chest pain, heart attack, when to call an ambulance, first aid",
        skills=["triage", "first aid"],
        policies=["clinical", "hipaa"],
        resources=Resources(cost_per_1k_output=0.002, max_concurrency=8),
    ),
    AgentSpec(
        id="cardio",
        description="Cardiology: heart attack symptoms, chest pain, heart disease",
        skills=["cardiology"],
        policies=["clinical", "hipaa"],
        resources=Resources(cost_per_1k_output=0.003, max_concurrency=8),
    ),
    AgentSpec(
        id="gp",
        description="General practitioner: common symptoms, first advice for patients and families",
        skills=["primary care"],
        policies=["clinical", "hipaa"],
        resources=Resources(cost_per_1k_output=0.001, max_concurrency=8),
    ),
    AgentSpec(
        id="writer",
        description="Summarising and editing: merges answers into one clear plain-language answer",
        skills=["summarisation"],
        policies=["public"],
        resources=Resources(cost_per_1k_output=0.0005, max_concurrency=8),
    ),
]


def backend_factory(latency_s: float = 0.0, done_from_round: int = 2) -> Any:
    backends: dict[str, ScriptedLLM] = {}

    def make(spec: AgentSpec) -> ScriptedLLM:
        backends[spec.id] = ScriptedLLM(
            scripted_answer(spec.id, done_from_round), latency_s=latency_s, name=f"scripted-{spec.id}"
        )
        return backends[spec.id]

    make.backends = backends  # type: ignore[attr-defined]
    return make
