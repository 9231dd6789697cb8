"""Conversations: a follow-up question is routed, planned and drafted with its conversation's
earlier turns, which live in the job store (so a conversation outlives its orchestrator).

Real mosquitto, router, orchestrator, dispatch, job store and the real MiniLM embedder; the
agents' LLM is a ScriptedLLM (orchestration logic only: routing and what reaches the agents are
under test here, not the answers' prose).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_data_parts
from a2a.types import Message, Part, Role, SendMessageRequest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from pydantic import BaseModel, ConfigDict, Field

from agents.server import Route
from agents.spec import AgentSpec
from agents.worker import LLMWorker, decompose_prompt, draft_messages
from fabric.federation import LocalFederation
from fabric.interop.a2a_server import conversation_for
from fabric.llm.base import ChatMessage
from fabric.llm.scripted import ScriptedLLM
from fabric.messages import JobResult, RouteQuery, TaskRequest
from fabric.orchestrator.conversation import routing_text
from fabric.orchestrator.store import open_store
from fabric.tasks import DecomposeInput, DraftInput, DraftOutput, PeerAnswer, Turn
from fabric.ui.jobs import JobBook
from router.client import RouterClient
from tests.conftest import make_settings
from tests.interop_support import env_with, free_port, process

FIRST = "What should I do about a fever of 39 C in an adult?"
FOLLOW_UP = "and for a child?"
OTHER_SUBJECT = "How do I debug a Python script that raises an ImportError?"

#: distinct specialties: the follow-up names none of them, its first question names one
SPECS = [
    AgentSpec(
        id="fever-doc",
        description="Internal medicine: fever, high temperature, infections and flu, their treatment and "
        "when to see a doctor",
        skills=["fever", "infections"],
    ),
    AgentSpec(id="tax", description="Tax advice: income tax returns, deductions, VAT and filing deadlines",
              skills=["tax"]),
    AgentSpec(id="coder", description="Python programming: writing, debugging and testing code",
              skills=["python"]),
    AgentSpec(id="travel", description="Travel planning: flights, hotels, itineraries and visas",
              skills=["travel"]),
    AgentSpec(id="chef", description="Cooking: recipes, ingredients, baking and meal planning",
              skills=["cooking"]),
]  # fmt: skip


def scripted(agent_id: str) -> ScriptedLLM:
    """A scripted LLM (orchestration logic only): one-subtask plans, a fixed draft, done at once."""

    def respond(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        user = messages[-1].content
        title = (schema or {}).get("title")
        if title == "Plan":
            request = user.rsplit("Request: ", 1)[-1].strip()
            return json.dumps({"subtasks": [{"id": "s1", "text": request, "depends_on": []}]})
        if title == "RefineOutput":
            own = user.split("Your answer:\n", 1)[1].split("\n\nYour peers' answers:", 1)[0]
            return json.dumps({"answer": own, "done": True, "confidence": 0.8})
        return f"{agent_id}: rest, fluids, and paracetamol at the dose for the patient's weight."

    return ScriptedLLM(respond, name=f"scripted-{agent_id}")


@pytest.fixture
def recorded_drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, DraftInput]]:
    """Every DraftInput an agent receives, as (agent id, input)."""
    seen: list[tuple[str, DraftInput]] = []
    original = LLMWorker.draft

    async def draft(self: LLMWorker, inp: DraftInput, task: TaskRequest) -> Any:
        seen.append((self.spec.id, inp))
        return await original(self, inp, task)

    monkeypatch.setattr(LLMWorker, "draft", draft)
    return seen


def drafters(result: JobResult) -> set[str]:
    return {m.agent_id for ms in result.assignments.values() for m in ms}


def test_a_follow_up_without_its_subject_reaches_the_same_specialty_across_an_orchestrator_restart(
    mosquitto, tmp_path, embedder, recorded_drafts
) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, refine_rounds=1)
    fed_kw: dict[str, Any] = {"backend_factory": lambda spec: scripted(spec.id), "embedder": embedder}

    async def main() -> tuple[JobResult, JobResult, JobResult, str, str]:
        async with LocalFederation(settings, SPECS, **fed_kw) as fed:
            first = await fed.run_job(FIRST, job_id="conv-t1", timeout=120)
        # the orchestrator (and the whole federation) is gone; a new one serves the follow-up
        async with LocalFederation(settings, SPECS, **fed_kw) as fed:
            router = RouterClient(await fed.client())
            alone = await router.route(RouteQuery(text=FOLLOW_UP, top_k=3, abstain=False))
            framed = await router.route(RouteQuery(text=routing_text(FOLLOW_UP, [Turn(question=FIRST)]), top_k=3))
            assert fed.orchestrator is not None
            follow = await fed.run_job(FOLLOW_UP, job_id="conv-t2", timeout=120, conversation_id=first.conversation_id)
            # a question with a subject of its own, in the same conversation, is routed on its own
            other = await fed.run_job(OTHER_SUBJECT, job_id="conv-t3", timeout=120, conversation_id="conv-t1")
        return first, follow, other, alone.matches[0].agent_id, framed.matches[0].agent_id

    first, follow, other, alone_top, framed_top = asyncio.run(main())
    assert first.status == "completed" and follow.status == "completed", (first, follow)
    assert first.conversation_id == "conv-t1"  # a job that continues nothing starts a conversation under its id
    assert follow.conversation_id == "conv-t1"
    assert drafters(first) == {"fever-doc"}
    # "and for a child?" alone routes elsewhere; with its conversation's subject, to the fever specialist
    assert alone_top != "fever-doc" and framed_top == "fever-doc"
    assert drafters(follow) == {"fever-doc"}, follow.assignments
    assert other.status == "completed" and other.conversation_id == "conv-t1"
    assert "fever-doc" not in drafters(other) and "coder" in drafters(other), other.assignments
    follow_drafts = [inp for agent, inp in recorded_drafts if inp.question == FOLLOW_UP]
    assert follow_drafts and all(len(d.history) == 1 and d.history[0].question == FIRST for d in follow_drafts)
    assert "rest, fluids" in follow_drafts[0].history[0].answer  # the earlier answer's summary
    assert all(inp.history == [] for _, inp in recorded_drafts if inp.question == FIRST)
    other_drafts = [inp for _, inp in recorded_drafts if inp.question == OTHER_SUBJECT]
    assert other_drafts and [t.question for t in other_drafts[0].history] == [FIRST, FOLLOW_UP]
    chat = draft_messages(ChatMessage(role="system", content="spec"), follow_drafts[0])
    assert [m.role for m in chat] == ["system", "user", "assistant", "user"] and chat[1].content == FIRST

    store = open_store(settings, leases=False)
    try:
        turns = store.turns("conv-t1")
        assert [(t.job_id, t.question) for t in turns] == [
            ("conv-t1", FIRST),
            ("conv-t2", FOLLOW_UP),
            ("conv-t3", OTHER_SUBJECT),
        ]
        assert turns[0].agents == turns[1].agents == ["fever-doc"]
        events = [e for e in store.events("conv-t2") if e.phase == "conversation"]
        assert events and events[0].data["turns"] == ["conv-t1"] and events[0].data["with_context"]
        events = [e for e in store.events("conv-t3") if e.phase == "conversation"]
        assert events and not events[0].data["with_context"]  # it names its subject: routed on its own
    finally:
        store.close()
    # `foa jobs` lists the two turns together under their conversation
    out = subprocess.run(
        [sys.executable, "-m", "fabric.cli", "jobs"],
        env=env_with(FOA_DATA_DIR=str(tmp_path), FOA_BROKER_URL=mosquitto.url),
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    head = lines.index("conversation conv-t1 (3 turns):")
    assert [line.split()[0] for line in lines[head + 1 : head + 4]] == ["conv-t1", "conv-t2", "conv-t3"]


def test_mcp_ask_continues_a_conversation(mosquitto, tmp_path, embedder, recorded_drafts) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, refine_rounds=1)
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "fabric.cli", "mcp", "serve"], env=env_with(FOA_BROKER_URL=mosquitto.url)
    )

    async def main() -> tuple[dict[str, Any], dict[str, Any], str]:
        async with LocalFederation(settings, SPECS, backend_factory=lambda s: scripted(s.id), embedder=embedder):
            async with Client(server, read_timeout_seconds=120) as client:
                first = await client.call_tool("ask", {"question": FIRST})
                assert not first.is_error and first.structured_content is not None, first.content
                conversation = first.structured_content["conversation_id"]
                follow = await client.call_tool("ask", {"question": FOLLOW_UP, "conversation": conversation})
                assert not follow.is_error and follow.structured_content is not None, follow.content
                bad = await client.call_tool("ask", {"question": FOLLOW_UP, "conversation": "c" * 200})
                assert bad.is_error
                return first.structured_content, follow.structured_content, str(bad.content[0])

    first, follow, bad = asyncio.run(main())
    assert first["conversation_id"] == first["job_id"]  # the first question started the conversation
    assert follow["conversation_id"] == first["conversation_id"] and follow["job_id"] != first["job_id"]
    assert {a for agents in follow["assignments"].values() for a in agents} == {"fever-doc"}
    assert any(inp.history and inp.history[0].question == FIRST for _, inp in recorded_drafts)
    assert "conversation is 200 characters" in bad and "conversation_id an earlier answer returned" in bad


def test_a2a_messages_with_one_context_id_are_one_conversation(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, refine_rounds=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "fabric.cli", "a2a", "serve", "--port", str(port)]
    context = f"ctx-{uuid.uuid4().hex[:8]}"

    async def ask(client: Any, text: str) -> dict[str, Any]:
        """Send on the stream (as the SDK's sample does) and return the `job` data artifact."""
        msg = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, context_id=context, parts=[Part(text=text)])
        job: dict[str, Any] = {}
        async for event in client.send_message(SendMessageRequest(message=msg)):
            if event.HasField("artifact_update") and event.artifact_update.artifact.name == "job":
                job = get_data_parts(event.artifact_update.artifact.parts)[0]
        return job

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with LocalFederation(settings, SPECS, backend_factory=lambda s: scripted(s.id), embedder=embedder):
            with process(argv, f"{url}/.well-known/agent-card.json", env=env_with(FOA_BROKER_URL=mosquitto.url)):
                client = await create_client(
                    url, client_config=ClientConfig(streaming=True, httpx_client=httpx.AsyncClient(timeout=120))
                )
                try:
                    return await ask(client, FIRST), await ask(client, FOLLOW_UP)
                finally:
                    await client.close()

    first, follow = asyncio.run(main())
    assert first["conversation_id"] == follow["conversation_id"] == conversation_for(context) == f"a2a-ctx-{context}"
    assert first["status"] == follow["status"] == "completed"
    assert {a for agents in follow["assignments"].values() for a in agents} == {"fever-doc"}
    store = open_store(settings, leases=False)
    try:
        assert [t.question for t in store.turns(f"a2a-ctx-{context}")] == [FIRST, FOLLOW_UP]
    finally:
        store.close()
    assert conversation_for("x" * 300).startswith("a2a-ctx-") and len(conversation_for("x" * 300)) <= 128


def test_a_follow_up_is_held_to_its_conversations_clearances(mosquitto, tmp_path, embedder) -> None:
    """The earlier turns were answered under a clearance: no agent without it may receive them."""
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, refine_rounds=1)
    specs = [s.model_copy(update={"policies": ["clinical"]}) if s.id == "fever-doc" else s for s in SPECS]

    async def main() -> tuple[JobResult, JobResult, list[Any]]:
        async with LocalFederation(settings, specs, backend_factory=lambda s: scripted(s.id), embedder=embedder) as fed:
            first = await fed.run_job(FIRST, policies=["clinical"], timeout=120)
            # no policies asked, and a subject the clinician does not cover: still only cleared agents
            other = await fed.run_job(OTHER_SUBJECT, timeout=120, conversation_id=first.conversation_id)
            assert fed.orchestrator is not None
            events = fed.orchestrator.store.events(other.job_id)
            return first, other, [e for e in events if e.phase == "conversation"]

    first, other, events = asyncio.run(main())
    assert drafters(first) == {"fever-doc"}
    assert "coder" not in drafters(other) and drafters(other) <= {"fever-doc"}, other.assignments
    assert events and events[0].data["policies"] == ["clinical"] and "policies of the conversation" in events[0].message


class DraftInputBeforeConversations(BaseModel):
    """DraftInput as agents built before conversations validate it: unknown fields refused."""

    model_config = ConfigDict(extra="forbid")

    question: str
    subtask: str
    context: list[PeerAnswer] = Field(default_factory=list)
    max_tokens: int | None = None


def test_an_agent_built_before_conversations_still_drafts_follow_ups(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, refine_rounds=1)
    seen: list[DraftInputBeforeConversations] = []

    async def old_draft(inp: DraftInputBeforeConversations) -> DraftOutput:
        seen.append(inp)
        return DraftOutput(answer=f"fever-doc (old SDK) on {inp.question!r}: rest and fluids")

    async def main() -> tuple[JobResult, JobResult, list[str]]:
        async with LocalFederation(settings, SPECS, backend_factory=lambda s: scripted(s.id), embedder=embedder) as fed:
            old = next(a for a in fed.agents if a.spec.id == "fever-doc")
            old.tasks.routes["draft"] = Route(
                kind="draft", fn=old_draft, input=DraftInputBeforeConversations, output=DraftOutput, with_request=False
            )
            first = await fed.run_job(FIRST, timeout=120)
            follow = await fed.run_job(FOLLOW_UP, timeout=120, conversation_id=first.conversation_id)
            return first, follow, follow.usage.failures

    first, follow, failures = asyncio.run(main())
    assert first.status == follow.status == "completed", (first.failure_reason, follow.failure_reason)
    assert drafters(follow) == {"fever-doc"} and "(old SDK)" in follow.answer
    assert [inp.question for inp in seen] == [FIRST, FOLLOW_UP]  # the follow-up reached it, without history
    assert not failures, failures


def test_history_reaches_the_prompts_and_is_left_out_of_inputs_without_it() -> None:
    history = [Turn(question=FIRST, answer="Rest and fluids; see a doctor above 40 C. " * 20)]
    chat = draft_messages(ChatMessage(role="system", content="spec"), DraftInput(question=FOLLOW_UP, subtask=FOLLOW_UP,
                                                                                 history=history))
    # the earlier turn as the chat turns it was (an inline block was copied back by the 135M model)
    assert [(m.role, m.content == FIRST) for m in chat[:3]] == [("system", False), ("user", True), ("assistant", False)]
    assert len(chat[2].content) <= 200  # the earlier answer briefly, not in full
    last = chat[-1]
    assert last.role == "user" and last.content.startswith(f"Question: {FOLLOW_UP}") and FIRST not in last.content
    no_answer = draft_messages(ChatMessage(role="system", content="spec"),
                               DraftInput(question=FOLLOW_UP, subtask=FOLLOW_UP, history=[Turn(question=FIRST)]))
    assert [m.role for m in no_answer] == ["system", "user", "assistant", "user"]  # roles still alternate
    plan_prompt = decompose_prompt(FOLLOW_UP, 2, 4, history)
    assert FIRST in plan_prompt and "name the subject" in plan_prompt
    assert FIRST not in decompose_prompt(FOLLOW_UP, 2, 4)
    # an input without history serialises as before: agents whose models forbid unknown fields still accept it
    assert "history" not in DraftInput(question="q", subtask="s").model_dump(mode="json")
    assert "history" not in DecomposeInput(question="q").model_dump(mode="json")
    wire = DraftInput(question="q", subtask="s", history=history).model_dump(mode="json")
    assert DraftInput.model_validate(wire).history == history


def test_the_console_shows_a_jobs_conversation_as_a_thread() -> None:
    book = JobBook()
    book.on_submit({"job_id": "a", "question": FIRST})
    book.on_result({"job_id": "a", "status": "completed", "answer": "rest", "conversation_id": "a"})
    book.on_submit({"job_id": "b", "question": FOLLOW_UP, "conversation_id": "a"})
    book.on_submit({"job_id": "other", "question": "unrelated"})
    record = book.get("b")
    assert record is not None
    detail = book.detail(record)
    assert detail.summary.conversation_id == "a"
    assert [(t.job_id, t.question, t.answer) for t in detail.thread] == [("a", FIRST, "rest"), ("b", FOLLOW_UP, "")]
    alone = book.get("other")
    assert alone is not None and book.detail(alone).thread == []
