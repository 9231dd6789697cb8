"""Planners the NESTFUL benchmark can score: any async (task, agent_descriptions) → Plan.

The default is the orchestrator's own `fabric.orchestrator.decompose.propose_plan`; a
one-call LLM planner is kept as a baseline (and as the fallback while the orchestrator is
not importable), so the harness can be checked end to end on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Planner = Callable[[str, list[str]], Awaitable[Any]]


class _Subtask(BaseModel):
    id: str
    text: str
    depends_on: list[str] = Field(default_factory=list)


class SimplePlan(BaseModel):
    model_config = ConfigDict(title="Plan")

    subtasks: list[_Subtask]


def orchestrator_planner(backend: Any, subtasks_min: int, subtasks_max: int) -> Planner | None:
    """`propose_plan` bound to a backend and bounds; None while the orchestrator is absent."""
    try:
        from fabric.orchestrator.decompose import propose_plan
    except ImportError:
        return None

    async def plan(task: str, agents: list[str]) -> Any:
        return await propose_plan(backend, task, agents, subtasks_min, subtasks_max)

    return plan


def planner_prompt(task: str, agents: list[str], subtasks_min: int, subtasks_max: int) -> str:
    listing = "\n".join(f"- {a}" for a in agents)
    return (
        f"Break the task into {subtasks_min} to {subtasks_max} subtasks. Each subtask is done by one "
        f"of the agents below; name that agent in the subtask text. A subtask that needs another "
        f"subtask's output lists that subtask's id in depends_on.\n\nAgents:\n{listing}\n\nTask: {task}\n\n"
        'Answer with one JSON object {"subtasks": [...]}; each subtask has "id", "text" and '
        '"depends_on" (a list of ids).'
    )


def llm_planner(backend: Any, subtasks_min: int, subtasks_max: int, max_tokens: int = 512) -> Planner:
    """A single structured LLM call: the baseline decomposer."""

    async def plan(task: str, agents: list[str]) -> Any:
        from fabric.llm.base import ChatMessage

        messages = [ChatMessage(role="system", content="You plan tasks as dependency graphs of subtasks."),
                    ChatMessage(role="user", content=planner_prompt(task, agents, subtasks_min, subtasks_max))]
        try:
            from fabric.llm.structured import complete_json
        except ImportError:
            done = await backend.complete(messages, max_tokens=max_tokens, temperature=0.0,
                                          json_schema=SimplePlan.model_json_schema())
            return SimplePlan.model_validate_json(done.text)
        result, _usage, _attempts = await complete_json(backend, messages, SimplePlan, max_tokens=max_tokens,
                                                        retries=2, fallback=None)
        if result is None:
            raise ValueError("the planner gave no parseable plan")
        return result

    return plan
