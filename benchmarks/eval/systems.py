"""The systems HealthBench compares, each behind one `answer(example, seed)` call.

- federation systems (FoA and its variants) run a job on a `LocalFederation`; their only
  input is a question string, so a multi-turn conversation is given as a transcript;
- a single agent answers the conversation natively, with its spec as system prompt;
- the uncoordinated ensemble has every agent answer, then one LLM call merges the answers
  (no decomposition, no clustering, no refinement).
Agents' answers are cached per (agent, example, seed): the ensemble and the best-single-agent
selection share them instead of paying twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.eval.grading import format_conversation
from benchmarks.eval.healthbench_data import HealthBenchExample, Turn

#: system name -> JobOptions overrides of a federation run
FEDERATION_SYSTEMS: dict[str, dict[str, Any]] = {
    "foa": {},
    "random": {"routing": "random"},
    "no_clustering": {"clustering": False},
    "k1": {"refine_rounds": 1},
}
AGENT_SYSTEMS = ("single", "ensemble")
ALL_SYSTEMS = ("foa", "single", "ensemble", "random", "no_clustering", "k1")

MERGE_SYSTEM_PROMPT = (
    "You combine the replies of several independent medical assistants into one reply to the "
    "user. Keep what the replies agree on and what is medically sound, drop contradictions and "
    "errors, and answer the user's last message directly. Reply with the final answer only."
)


@dataclass(frozen=True)
class Answer:
    text: str
    failed: bool = False
    detail: str = ""


def transcript_question(turns: Sequence[Turn]) -> str:
    """The federation's input: the last user message alone, or the whole conversation."""
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].content
    return (
        "Here is a conversation between a user and a health assistant.\n\n"
        f"{format_conversation(turns)}\n\n"
        "Write the assistant's next reply to the user's last message."
    )


def chat_messages(system_prompt: str, turns: Sequence[Turn]) -> list[Any]:
    from fabric.llm.base import ChatMessage

    msgs = [ChatMessage(role="system", content=system_prompt)] if system_prompt else []
    for t in turns:
        role = t.role if t.role in ("user", "assistant", "system") else "user"
        msgs.append(ChatMessage(role=role, content=t.content))  # type: ignore[arg-type]  # narrowed to the Literal above
    return msgs


@dataclass
class AgentPool:
    """Agents answering alone: spec text as system prompt, the spec's own model settings."""

    specs: Sequence[Any]  # agents.spec.AgentSpec
    backends: dict[str, Any]  # agent id -> LLMBackend
    max_tokens: int
    _cache: dict[tuple[str, str, int], asyncio.Task[Answer]] = field(default_factory=dict)

    def ids(self) -> list[str]:
        return [s.id for s in self.specs]

    def spec(self, agent_id: str) -> Any:
        for s in self.specs:
            if s.id == agent_id:
                return s
        raise KeyError(f"unknown agent {agent_id!r}; known: {self.ids()}")

    async def _ask(self, agent_id: str, example: HealthBenchExample) -> Answer:
        from fabric.llm.base import LLMError

        spec = self.spec(agent_id)
        try:
            done = await self.backends[agent_id].complete(
                chat_messages(spec.spec_text, example.prompt),
                max_tokens=spec.llm.max_tokens or self.max_tokens,
                temperature=spec.llm.temperature,
            )
            return Answer(done.text.strip())
        except LLMError as exc:
            return Answer("", failed=True, detail=f"{agent_id}: {exc}"[:300])

    async def answer(self, agent_id: str, example: HealthBenchExample, seed: int) -> Answer:
        key = (agent_id, example.prompt_id, seed)
        if key not in self._cache:
            self._cache[key] = asyncio.ensure_future(self._ask(agent_id, example))
        return await self._cache[key]


@dataclass
class SingleAgentSystem:
    pool: AgentPool
    agent_id: str

    async def answer(self, example: HealthBenchExample, seed: int) -> Answer:
        return await self.pool.answer(self.agent_id, example, seed)


def merge_prompt(turns: Sequence[Turn], answers: Sequence[str], budget_chars: int) -> str:
    """The merge call's user message; answers are cut evenly to fit small context windows."""
    per = max(200, budget_chars // max(1, len(answers)))
    parts = [f"[Reply {i + 1}]\n{a[:per]}" for i, a in enumerate(answers)]
    return f"Conversation:\n{format_conversation(turns)}\n\nReplies to combine:\n\n" + "\n\n".join(parts)


@dataclass
class EnsembleSystem:
    pool: AgentPool
    merger: Any  # LLMBackend
    max_tokens: int
    budget_chars: int = 4000

    async def answer(self, example: HealthBenchExample, seed: int) -> Answer:
        from fabric.llm.base import ChatMessage, LLMError

        answers = await asyncio.gather(*(self.pool.answer(a, example, seed) for a in self.pool.ids()))
        usable = [a.text for a in answers if not a.failed and a.text]
        if not usable:
            return Answer("", failed=True, detail="no agent answered")
        if len(usable) == 1:
            return Answer(usable[0])
        try:
            done = await self.merger.complete(
                [ChatMessage(role="system", content=MERGE_SYSTEM_PROMPT),
                 ChatMessage(role="user", content=merge_prompt(example.prompt, usable, self.budget_chars))],
                max_tokens=self.max_tokens, temperature=0.2,
            )
            return Answer(done.text.strip())
        except LLMError as exc:
            return Answer("", failed=True, detail=f"merge: {exc}"[:300])


@dataclass
class FederationSystem:
    """FoA or one of its variants: one job per example on a running `LocalFederation`."""

    federation: Any  # fabric.federation.LocalFederation (entered)
    options: Any  # fabric.messages.JobOptions
    on_event: Callable[[Any], None] | None = None  # JobEvent progress, e.g. to stderr
    timeout_s: float = 900.0

    async def answer(self, example: HealthBenchExample, seed: int) -> Answer:
        try:
            result = await self.federation.run_job(transcript_question(example.prompt), self.options,
                                                   on_event=self.on_event, timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - one failed job is a zero, not a crashed run
            return Answer("", failed=True, detail=f"{type(exc).__name__}: {exc}"[:300])
        if result.status != "completed":
            return Answer(result.answer or "", failed=True, detail=result.failure_reason or "failed")
        return Answer(result.answer)


def federation_options(system: str, max_tokens: int | None = None) -> Any:
    from fabric.messages import JobOptions

    if system not in FEDERATION_SYSTEMS:
        raise KeyError(system)
    extra: dict[str, Any] = {"max_tokens_per_call": max_tokens} if max_tokens else {}
    return JobOptions(**FEDERATION_SYSTEMS[system], **extra)
