"""Planners the NESTFUL benchmark can score: any async (task, agent_descriptions) → Plan.

The default is FoA's own decomposition (`foa_planner`: the real worker's decompose call by
the compatible agents, then the orchestrator's clean/merge/cycle-breaking); a one-call LLM
planner that sees every agent's description is kept as a baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

Planner = Callable[[str, list[str]], Coroutine[Any, Any, Any]]


class _Subtask(BaseModel):
    id: str
    text: str
    depends_on: list[str] = Field(default_factory=list)


class SimplePlan(BaseModel):
    model_config = ConfigDict(title="Plan")

    subtasks: list[_Subtask]


def foa_planner(backend: Any, settings: Any, embed: Callable[[Sequence[str]], np.ndarray],
                subtasks_min: int, subtasks_max: int) -> Planner:
    """FoA's own decomposition phase, on the APIs as agents, without a broker in between.

    As the orchestrator's `JobRunner.decompose` does: the agents compatible with the request
    (cosine of request and agent description ≥ τ, else the top `compat_top_k`, at most
    `max_proposers`) each propose a plan through the real worker code (`LLMWorker.decompose`:
    the agent's spec as system prompt, schema-constrained JSON, fallback to a one-node plan);
    proposals are cleaned (`clean_plan`) and merged into one DAG (`merge_proposals`, which
    also breaks cycles). Routing is approximated by that cosine, not the router's full α.
    The returned dict carries the merged DAG as `subtasks` and what each proposer said."""
    import uuid

    import numpy as np

    from agents.spec import AgentSpec
    from agents.worker import LLMWorker
    from fabric.messages import TaskRequest
    from fabric.orchestrator.dag import clean_plan, merge_proposals
    from fabric.tasks import DecomposeInput, Plan

    async def plan(task: str, agents: list[str]) -> Any:
        if not agents:
            raise ValueError("no agents to plan with")
        vecs = np.asarray(embed([task, *agents]))
        sims = vecs[1:] @ vecs[0]
        order = [int(i) for i in np.argsort(-sims, kind="stable")]
        compatible = [i for i in order if sims[i] >= settings.compat_threshold] or order[: settings.compat_top_k]
        proposers = compatible[: settings.max_proposers]
        payload = DecomposeInput(question=task, subtasks_min=subtasks_min, subtasks_max=subtasks_max)

        async def propose(i: int) -> tuple[str, Plan, dict[str, Any]]:
            spec = AgentSpec(id=f"api-{i}", description=agents[i], spec=agents[i])
            request = TaskRequest(task_id=uuid.uuid4().hex, task_kind="decompose", agent_id=spec.id,
                                  input=payload.model_dump())
            proposal, _usage = await LLMWorker(spec, settings, backend).decompose(payload, request)
            raw = proposal.model_dump()
            return spec.id, clean_plan(proposal, subtasks_max), raw

        proposals = [await propose(i) for i in proposers]  # sequential: one model, one lock
        dag = merge_proposals([(a, p) for a, p, _ in proposals], embed,
                              merge_similarity=settings.merge_similarity, subtasks_max=subtasks_max)
        return {
            "subtasks": [{"id": n.node_id, "text": n.text, "depends_on": list(n.depends_on)} for n in dag.nodes],
            "dropped_edges": [list(e) for e in dag.dropped_edges],
            "proposals": [{"agent": agents[i].split(":", 1)[0], "similarity": round(float(sims[i]), 3), "plan": raw}
                          for i, (_a, _p, raw) in zip(proposers, proposals, strict=False)],
        }

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
