"""The generic LLM worker: an agent from a YAML spec that serves decompose, draft and refine.

The spec text is the system prompt of every call (the agent stays aligned to its Spec). Drafts
are free text (small models write better prose than JSON); decomposition and refinement need
structure (subtasks and dependencies; a stop vote), so they are schema-constrained and pass
through `complete_json`, which repairs, retries and finally falls back — a worker never answers
a task with a crash.
"""

from __future__ import annotations

import logging
from typing import Any

from agents.sdk import Agent, TaskFailed
from agents.spec import AgentSpec
from fabric.bus import BrokerAddress
from fabric.embeddings import Embedder
from fabric.llm import BackendPool, LLMBackend, LLMError, backend_for, complete_json
from fabric.llm.base import ChatMessage
from fabric.messages import TaskRequest, Usage
from fabric.orchestrator.tasks import (
    DecomposeInput,
    DraftInput,
    DraftOutput,
    Plan,
    ProposedSubtask,
    RefineInput,
    RefineOutput,
    degenerate,
)
from fabric.settings import Settings
from fabric.transports.paho import install_paho_speedups

log = logging.getLogger("foa.worker")


def decompose_prompt(question: str, lo: int, hi: int) -> str:
    return (
        f"Split this request into {lo} to {hi} subtasks that different experts could work on. "
        "Each subtask is one short instruction. If a subtask needs the result of another, list that "
        f"subtask's id in depends_on.\n\nRequest: {question}"
    )


def draft_prompt(task: DraftInput) -> str:
    parts = [f"Question: {task.question}"]
    if task.subtask.strip() != task.question.strip():
        parts.append(f"Your part: {task.subtask}")
    if task.context:
        parts.append("Results you can build on:\n" + "\n".join(f"- {c.answer}" for c in task.context))
    parts.append("Answer your part clearly and briefly.")
    return "\n\n".join(parts)


def refine_prompt(task: RefineInput) -> str:
    peers = "\n".join(f"[{p.agent_id}] {p.answer}" for p in task.peers)
    return (
        f"Question: {task.question}\nYour part: {task.subtask}\n\nYour answer:\n{task.own_answer}\n\n"
        f"Your peers' answers:\n{peers}\n\nRevise your answer: keep what is right, adopt what your peers got right, "
        "fix mistakes. Set done to true if your answer needs no further change."
    )


class LLMWorker:
    """Binds an AgentSpec to an LLM backend and serves the three task kinds."""

    def __init__(self, spec: AgentSpec, settings: Settings, backend: LLMBackend) -> None:
        self.spec = spec
        self.settings = settings
        self.backend = backend

    def _system(self) -> ChatMessage:
        return ChatMessage(role="system", content=self.spec.spec_text)

    def _cost(self, usage: Usage) -> Usage:
        return usage.model_copy(update={"cost": self.spec.resources.expected_cost(usage.input_tokens, usage.output_tokens)})

    def _max_tokens(self, task: TaskRequest, requested: int | None = None) -> int:
        return requested or task.max_tokens or self.spec.llm.max_tokens or self.settings.llm_max_tokens

    async def decompose(self, task: TaskRequest) -> tuple[dict[str, Any], Usage]:
        inp = DecomposeInput.model_validate(task.input)
        messages = [self._system(), ChatMessage(role="user", content=decompose_prompt(inp.question, inp.subtasks_min, inp.subtasks_max))]
        plan, usage, attempts = await complete_json(
            self.backend,
            messages,
            Plan,
            max_tokens=max(160, self._max_tokens(task)),
            temperature=self.spec.llm.temperature,
            retries=1,
            fallback=lambda: Plan(subtasks=[ProposedSubtask(id="s1", text=inp.question)]),
        )
        return plan.model_dump(), self._cost(usage)

    async def draft(self, task: TaskRequest) -> tuple[dict[str, Any], Usage]:
        inp = DraftInput.model_validate(task.input)
        messages = [self._system(), ChatMessage(role="user", content=draft_prompt(inp))]
        try:
            out = await self.backend.complete(messages, max_tokens=self._max_tokens(task, inp.max_tokens), temperature=self.spec.llm.temperature)
        except LLMError as exc:
            raise TaskFailed(f"LLM unavailable for draft: {exc}") from exc
        confidence = 0.4 if out.finish_reason == "length" else 0.6
        return DraftOutput(answer=out.text.strip(), confidence=confidence).model_dump(), self._cost(out.usage)

    async def refine(self, task: TaskRequest) -> tuple[dict[str, Any], Usage]:
        inp = RefineInput.model_validate(task.input)
        messages = [self._system(), ChatMessage(role="user", content=refine_prompt(inp))]
        out, usage, _ = await complete_json(
            self.backend,
            messages,
            RefineOutput,
            max_tokens=self._max_tokens(task, inp.max_tokens),
            temperature=self.spec.llm.temperature,
            retries=1,
            # unusable output: keep the current answer and vote to stop rather than churn
            fallback=lambda: RefineOutput(answer=inp.own_answer, done=True, confidence=0.3),
        )
        if len(out.answer.split()) < 3 or degenerate(out.answer):
            # a revision that is empty, a fragment or a loop is worse than the answer it replaces
            out = out.model_copy(update={"answer": inp.own_answer})
        return out.model_dump(), self._cost(usage)

    def attach(self, agent: Agent) -> Agent:
        agent.add_handler("decompose", self.decompose)
        agent.add_handler("draft", self.draft)
        agent.add_handler("refine", self.refine)
        return agent


def make_worker(
    spec: AgentSpec,
    settings: Settings,
    *,
    backend: LLMBackend | None = None,
    broker: BrokerAddress | None = None,
    embedder: Embedder | None = None,
    replica_id: str | None = None,
) -> Agent:
    from fabric.security import agent_key_for, sign_vcv

    backend = backend or backend_for(settings, spec.llm)
    key = agent_key_for(settings, spec.id)  # FOA_AGENT_KEY_DIR/{id}.key, when deployed with keys
    signer = (lambda vcv: sign_vcv(vcv, key)) if key is not None else None
    agent = Agent(spec, settings, broker=broker, embedder=embedder, replica_id=replica_id, signer=signer)
    return LLMWorker(spec, settings, backend).attach(agent)


async def run_worker(spec: AgentSpec, settings: Settings, *, replica_id: str | None = None) -> None:
    """`foa agent run SPEC.yaml`: one worker process until interrupted (SIGTERM: clean leave)."""
    import asyncio
    import signal

    from fabric.heap import freeze_startup_heap
    from fabric.metrics import metrics_for
    from fabric.runtime import resolve_broker

    install_paho_speedups()
    backend = backend_for(settings, spec.llm)
    agent = make_worker(spec, settings, backend=backend, broker=resolve_broker(settings), replica_id=replica_id)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.stop()))
    await agent.start()
    freeze_startup_heap()
    metrics = metrics_for(settings, "agent", agent.client_id)
    if agent.bus is not None:
        metrics.watch_bus(agent.bus)
    beat = asyncio.create_task(metrics.beat_forever())
    try:
        await agent._stopped.wait()
    finally:
        beat.cancel()
        metrics.stop()
        await agent.stop()
        await backend.aclose()


async def run_host(specs: list[AgentSpec], settings: Settings, *, host_id: str) -> None:
    """`foa agent host SPEC...`: LLM workers for many specs on one connection (agents/host.py),
    one backend per (server, model), until interrupted (SIGTERM: every agent goes offline)."""
    import asyncio
    import signal

    from agents.host import AgentHost
    from fabric.heap import freeze_startup_heap
    from fabric.metrics import metrics_for
    from fabric.runtime import resolve_broker
    from fabric.security import agent_key_for, sign_vcv

    install_paho_speedups()
    host = AgentHost(settings, host_id, broker=resolve_broker(settings))
    backends = BackendPool(settings)
    for spec in specs:
        backend = backends.get(spec.llm)
        private = agent_key_for(settings, spec.id)
        signer = (lambda vcv, k=private: sign_vcv(vcv, k)) if private is not None else None
        LLMWorker(spec, settings, backend).attach(host.add(spec, signer=signer))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await host.start()
    freeze_startup_heap()
    metrics = metrics_for(settings, "agent-host", f"host-{host_id}")
    if host.bus is not None:
        metrics.watch_bus(host.bus)
    beat = asyncio.create_task(metrics.beat_forever())
    try:
        await stopping.wait()
    finally:
        beat.cancel()
        metrics.stop()
        await host.stop()
        await backends.aclose()
