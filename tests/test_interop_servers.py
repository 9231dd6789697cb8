"""The federation as an A2A agent and as an MCP server, each a real `foa` subprocess in front
of a real federation (broker, router, orchestrator; agents with scripted LLMs, for orchestration
logic only), driven by the official SDK clients: a2a-sdk's client against `foa a2a serve`
(card, send, stream, get, cancel), mcp's client against `foa mcp serve` (tools, ask with
progress, route, agents)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.helpers import get_artifact_text, get_data_parts, get_message_text
from a2a.types import AgentCard, CancelTaskRequest, GetTaskRequest, Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Struct
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from fabric import topics
from fabric.bus import Incoming
from fabric.federation import LocalFederation
from fabric.messages import JobCancel
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.interop_support import env_with, free_port, process
from tests.scripted_federation import SPECS, backend_factory

QUESTION = "My father has sudden chest pain. What should we do?"


def message(text: str, metadata: dict[str, Any] | None = None) -> SendMessageRequest:
    msg = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)])
    if metadata:
        msg.metadata.CopyFrom(ParseDict(metadata, Struct()))
    return SendMessageRequest(message=msg)


def test_a2a_clients_send_stream_get_and_cancel_through_foa_a2a_serve(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "fabric.cli", "a2a", "serve", "--port", str(port)]

    async def main() -> None:
        slow = backend_factory(latency_s=1.0)
        async with LocalFederation(settings, SPECS, backend_factory=slow, embedder=embedder) as fed:
            # an operator's long hold (FOA_A2A_HOLD_S) keeps message/send blocking to the end; the
            # default 4 s hold, on clients' defaults, is tested in tests/test_a2a_defaults.py
            env = env_with(FOA_BROKER_URL=mosquitto.url, FOA_A2A_HOLD_S="120")
            with process(argv, f"{url}/.well-known/agent-card.json", env=env):
                blocking = await create_client(
                    url, client_config=ClientConfig(streaming=False, httpx_client=httpx.AsyncClient(timeout=120))
                )
                # the card follows the live federation (it may lag the server's start by a beat)
                card = await _card_when(url, lambda c: "4 live agent" in c.description)
                skill_ids = [s.id for s in card.skills]
                assert skill_ids[0] == "ask" and "federation:triage" in skill_ids

                # message/send: the answer as a text artifact, the DAG and assignments as data
                events = [e async for e in blocking.send_message(message(QUESTION, {"policies": ["clinical"]}))]
                task = events[-1].task
                assert task.status.state == TaskState.TASK_STATE_COMPLETED, get_message_text(task.status.message)
                texts = {a.name: get_artifact_text(a) for a in task.artifacts}
                data = {a.name: get_data_parts(a.parts)[0] for a in task.artifacts if get_data_parts(a.parts)}
                assert "call emergency services" in texts["answer"]
                assert data["job"]["status"] == "completed" and data["job"]["job_id"] == f"a2a-{task.id}"
                assert len(data["job"]["dag"]["nodes"]) == 4 and "writer" not in str(data["job"]["assignments"])
                fetched = await blocking.get_task(GetTaskRequest(id=task.id))  # tasks/get
                assert fetched.status.state == TaskState.TASK_STATE_COMPLETED
                await blocking.close()

                # message/stream: one working update per job event, then artifacts and completed
                streaming = await create_client(
                    url, client_config=ClientConfig(streaming=True, httpx_client=httpx.AsyncClient(timeout=120))
                )
                updates: list[str] = []
                final = None
                async for event in streaming.send_message(message(QUESTION)):
                    if event.HasField("status_update"):
                        status = event.status_update.status
                        updates.append(get_message_text(status.message))
                        final = status.state
                assert final == TaskState.TASK_STATE_COMPLETED
                phases = [u.split(":", 1)[0] for u in updates]
                for phase in ("decompose", "assign", "synthesise", "done"):
                    assert phase in phases, updates

                # tasks/cancel: the job is cancelled over the bus, the task ends canceled
                cancels: list[JobCancel] = []
                bus = await fed.client()
                await bus.subscribe(
                    topics.JOBS_CANCEL_WILDCARD, lambda m: cancels.append(_body(m)), body_types=JobCancel
                )
                stream = streaming.send_message(message(QUESTION))
                first = await anext(stream)
                task_id = first.task.id
                canceled = await streaming.cancel_task(CancelTaskRequest(id=task_id))
                assert canceled.status.state == TaskState.TASK_STATE_CANCELED
                await asyncio.sleep(0.5)
                assert [c.job_id for c in cancels][:1] == [f"a2a-{task_id}"]
                await stream.aclose()  # type: ignore[attr-defined]  # an async generator, typed as an iterator
                await streaming.close()

    asyncio.run(main())


async def _card_when(url: str, ok: Callable[[AgentCard], bool], timeout: float = 10.0) -> AgentCard:
    async with httpx.AsyncClient() as http:
        resolver = A2ACardResolver(http, url)
        deadline = time.monotonic() + timeout
        while True:
            card = await resolver.get_agent_card()
            if ok(card) or time.monotonic() > deadline:
                return card
            await asyncio.sleep(0.2)


def _body(msg: Incoming) -> JobCancel:
    assert msg.envelope is not None
    body: JobCancel = msg.envelope.body
    return body


def test_mcp_clients_list_ask_with_progress_route_and_list_agents_through_foa_mcp_serve(
    mosquitto, tmp_path, embedder
) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0)
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "fabric.cli", "mcp", "serve"], env=env_with(FOA_BROKER_URL=mosquitto.url)
    )

    async def main() -> None:
        factory = backend_factory()
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            async with Client(server, read_timeout_seconds=120) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert {"ask", "route", "agents"} <= names
                seen: list[str] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append(message or "")

                result = await client.call_tool(
                    "ask", {"question": QUESTION, "budget_tokens": 50000}, progress_callback=on_progress
                )
                assert not result.is_error, result.content
                out = result.structured_content
                assert out is not None and "call emergency services" in out["answer"]
                assert (
                    out["status"] == "completed" and out["job_id"].startswith("mcp-") and len(out["dag"]["nodes"]) == 4
                )
                assert out["usage"]["tokens"] > 0
                assert any(p.startswith("decompose") for p in seen) and any(p.startswith("done") for p in seen)

                routed = await client.call_tool(
                    "route", {"task": "chest pain, is it a heart attack?", "top_k": 3, "policies": ["clinical"]}
                )
                ranked = routed.structured_content
                assert ranked is not None and not ranked["abstained"]
                assert [m["agent_id"] for m in ranked["matches"]][:1] in (["cardio"], ["er-doc"])
                assert {"sim", "resources"} <= set(ranked["matches"][0]["factors"])
                assert "writer" not in [m["agent_id"] for m in ranked["matches"]]  # policy gate

                listed = await client.call_tool("agents", {})
                assert listed.structured_content is not None
                assert {a["agent_id"] for a in listed.structured_content["result"]} == {s.id for s in SPECS}

                bad = await client.call_tool("ask", {"question": "  "})
                assert bad.is_error and "question is empty" in str(bad.content[0])

                # the host gives up on a request (notifications/cancelled): the job is cancelled
                cancels: list[JobCancel] = []
                bus = await fed.client()
                await bus.subscribe(
                    topics.JOBS_CANCEL_WILDCARD, lambda m: cancels.append(_body(m)), body_types=JobCancel
                )
                for backend in factory.backends.values():  # every scripted LLM call now takes a second:
                    backend.latency_s = 1.0  # the job outlives the wait below
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.call_tool("ask", {"question": QUESTION + " (again)"}), 2.0)
                await eventually(lambda: bool(cancels), timeout=10, what="a JobCancel on the bus")
                assert cancels[0].job_id.startswith("mcp-") and "canceled" in cancels[0].reason

    asyncio.run(main())
