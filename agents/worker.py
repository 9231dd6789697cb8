"""The generic LLM worker: an agent from a YAML spec that serves every registered task kind
(decompose, draft, refine, synthesise; a test checks it covers `fabric.tasks.REGISTRY`).

The spec text is the system prompt of every call (the agent stays aligned to its Spec). Drafts
are free text (small models write better prose than JSON); decomposition and refinement need
structure (subtasks and dependencies; a stop vote), so they are schema-constrained and pass
through `complete_json`, which repairs, retries and finally falls back — a worker never answers
a task with a crash. Handlers take the typed input the SDK validated and return the typed output.
"""

from __future__ import annotations

import logging

from agents.sdk import Agent
from agents.server import ServesTasks, TaskFailed, TaskServer
from agents.spec import AgentSpec
from fabric.arithmetic import pure_arithmetic
from fabric.bus import BrokerAddress
from fabric.embeddings import Embedder
from fabric.llm import BackendPool, LLMBackend, LLMError, backend_for, complete_json
from fabric.llm.base import ChatMessage
from fabric.messages import TaskRequest, Usage
from fabric.settings import Settings
from fabric.tasks import (
    REGISTRY,
    DecomposeInput,
    DraftInput,
    DraftOutput,
    Plan,
    ProposedSubtask,
    RefineInput,
    RefineOutput,
    SynthesiseInput,
    SynthesiseOutput,
    Turn,
    degenerate,
)

log = logging.getLogger("foa.worker")

#: how much of an earlier answer a prompt repeats: the subject, not the whole answer (small context windows)
HISTORY_ANSWER_CHARS = 200


def history_text(history: list[Turn]) -> str:
    """The conversation so far, briefly: a follow-up ("and for a child?") names no subject."""
    lines = []
    for turn in history:
        answer = " ".join(turn.answer.split())
        lines.append(f"- Q: {turn.question}" + (f"\n  A: {answer[:HISTORY_ANSWER_CHARS]}" if answer else ""))
    return "Earlier in this conversation:\n" + "\n".join(lines)


def decompose_prompt(question: str, lo: int, hi: int, history: list[Turn] | None = None) -> str:
    earlier = f"{history_text(history)}\n\nWrite subtasks that name the subject.\n\n" if history else ""
    return (
        f"{earlier}Split this request into {lo} to {hi} subtasks that different experts could work on. "
        "Each subtask is one short instruction. If a subtask needs the result of another, list that "
        f"subtask's id in depends_on.\n\nRequest: {question}"
    )


def history_messages(history: list[Turn]) -> list[ChatMessage]:
    """The conversation so far as the chat turns it was, each earlier answer briefly. Why turns
    and not a block of text in the draft prompt: asked three follow-ups ("and for a baby of 3
    months?"), the embedded SmolLM2-135M copied an inline "Earlier in this conversation: - Q: ...
    A: ..." block back as its answer all three times; given the same turns as chat messages it
    answered two of them (issue 21's closing note). Roles alternate even for a turn whose answer
    was empty: strict chat templates refuse two user messages in a row."""
    out: list[ChatMessage] = []
    for turn in history:
        answer = " ".join(turn.answer.split())[:HISTORY_ANSWER_CHARS] or "(no answer recorded)"
        out += [ChatMessage(role="user", content=turn.question), ChatMessage(role="assistant", content=answer)]
    return out


def draft_messages(system: ChatMessage, task: DraftInput) -> list[ChatMessage]:
    """A draft's chat: the agent's spec, the conversation's earlier turns, then this task."""
    return [system, *history_messages(task.history), ChatMessage(role="user", content=draft_prompt(task))]


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


def synthesise_prompt(task: SynthesiseInput) -> str:
    results = "\n\n".join(f"## {r.answer.strip()}" for r in task.results)  # each: the subtask, then its answer
    return (
        f"{task.instructions}\n\nQuestion: {task.question}\n\nExpert results, in dependency order:\n\n{results}\n\n"
        "Write the final answer to the question."
    )


class LLMWorker:
    """Binds an AgentSpec to an LLM backend and serves every registered task kind."""

    def __init__(self, spec: AgentSpec, settings: Settings, backend: LLMBackend) -> None:
        self.spec = spec
        self.settings = settings
        self.backend = backend

    def _system(self) -> ChatMessage:
        return ChatMessage(role="system", content=self.spec.spec_text)

    def _cost(self, usage: Usage) -> Usage:
        return usage.model_copy(
            update={"cost": self.spec.resources.expected_cost(usage.input_tokens, usage.output_tokens)}
        )

    def _max_tokens(self, task: TaskRequest, requested: int | None = None) -> int:
        return requested or task.max_tokens or self.spec.llm.max_tokens or self.settings.llm_max_tokens

    async def decompose(self, inp: DecomposeInput, task: TaskRequest) -> tuple[Plan, Usage]:
        messages = [
            self._system(),
            ChatMessage(
                role="user", content=decompose_prompt(inp.question, inp.subtasks_min, inp.subtasks_max, inp.history)
            ),
        ]
        plan, usage, attempts = await complete_json(
            self.backend,
            messages,
            Plan,
            max_tokens=max(160, self._max_tokens(task)),
            temperature=self.spec.llm.temperature,
            retries=1,
            fallback=lambda: Plan(subtasks=[ProposedSubtask(id="s1", text=inp.question)]),
        )
        return plan, self._cost(usage)

    async def draft(self, inp: DraftInput, task: TaskRequest) -> tuple[DraftOutput, Usage]:
        if "arithmetic" in self.spec.tools and (exact := pure_arithmetic(inp.subtask)) is not None:
            return DraftOutput(answer=exact, confidence=1.0, exact=True), Usage()
        messages = draft_messages(self._system(), inp)
        try:
            out = await self.backend.complete(
                messages, max_tokens=self._max_tokens(task, inp.max_tokens), temperature=self.spec.llm.temperature
            )
        except LLMError as exc:
            raise TaskFailed(f"LLM unavailable for draft: {exc}") from exc
        confidence = 0.4 if out.finish_reason == "length" else 0.6
        return DraftOutput(answer=out.text.strip(), confidence=confidence), self._cost(out.usage)

    async def refine(self, inp: RefineInput, task: TaskRequest) -> tuple[RefineOutput, Usage]:
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
        return out, self._cost(usage)

    async def synthesise(self, inp: SynthesiseInput, task: TaskRequest) -> tuple[SynthesiseOutput, Usage]:
        messages = [self._system(), ChatMessage(role="user", content=synthesise_prompt(inp))]
        try:
            out = await self.backend.complete(
                messages, max_tokens=self._max_tokens(task, inp.max_tokens), temperature=self.spec.llm.temperature
            )
        except LLMError as exc:
            raise TaskFailed(f"LLM unavailable for synthesise: {exc}") from exc
        return SynthesiseOutput(answer=out.text.strip()), self._cost(out.usage)

    def attach(self, target: TaskServer | ServesTasks) -> None:
        """Serve every registered kind on `target` (an `Agent`, a hosted agent, or their
        `TaskServer`) with the method of the kind's name; the SDK checks each method's input
        annotation against the kind (a missing method fails here, and in the registry test)."""
        tasks = target if isinstance(target, TaskServer) else target.tasks
        for kind in REGISTRY.values():
            tasks.add_handler(kind, getattr(self, kind.name))


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
    LLMWorker(spec, settings, backend).attach(agent)
    return agent


async def run_worker(spec: AgentSpec, settings: Settings, *, replica_id: str | None = None) -> None:
    """`foa agent run SPEC.yaml`: one worker process until SIGINT/SIGTERM (then a clean leave)."""
    import asyncio

    from fabric.runtime import resolve_broker
    from fabric.service import ServiceRuntime

    backend = backend_for(settings, spec.llm)
    embedder = await asyncio.to_thread(Embedder.from_settings, settings)
    broker = resolve_broker(settings)
    agent = make_worker(spec, settings, backend=backend, broker=broker, embedder=embedder, replica_id=replica_id)
    async with ServiceRuntime(settings, "agent", instance=agent.client_id, embedder=embedder) as rt:
        rt.on_drain(backend.aclose)
        rt.on_drain(agent.stop)  # runs first: `offline` while the connection is up
        await agent.start()
        if agent.bus is not None:
            rt.watch_bus(agent.bus)
        rt.ready()
        await rt.serve()


async def run_host(specs: list[AgentSpec], settings: Settings, *, host_id: str) -> None:
    """`foa agent host SPEC...`: LLM workers for many specs on one connection (agents/host.py),
    one backend per (server, model), until SIGINT/SIGTERM (then every agent goes offline)."""
    from agents.host import AgentHost
    from fabric.runtime import resolve_broker
    from fabric.security import agent_key_for, sign_vcv
    from fabric.service import ServiceRuntime

    async with ServiceRuntime(settings, "agent-host", instance=f"host-{host_id}") as rt:
        host = AgentHost(settings, host_id, broker=resolve_broker(settings), embedder=await rt.embedder())
        backends = BackendPool(settings)
        rt.on_drain(backends.aclose)
        for spec in specs:
            backend = backends.get(spec.llm)
            private = agent_key_for(settings, spec.id)
            signer = (lambda vcv, k=private: sign_vcv(vcv, k)) if private is not None else None
            LLMWorker(spec, settings, backend).attach(host.add(spec, signer=signer))
        rt.on_drain(host.stop)  # runs first: every agent `offline` while the connection is up
        await host.start()
        if host.bus is not None:
            rt.watch_bus(host.bus)
        rt.ready()
        await rt.serve()
