"""`foa a2a serve`: the federation answers as one A2A agent (official `a2a-sdk` server).

- The agent card, at the well-known path, has an `ask` skill (any question, routed and
  decomposed by the federation) plus skills summarising the live federation: the most common
  agent skills, each with the agents that offer it. It is rebuilt on every card request from the
  live registry, so it follows agents as they come and go.
- `message/send` runs one job (fabric.client.submit_and_follow); the task completes with a text
  artifact (the answer) and a data artifact (job id, DAG, assignments, usage). A failed job is a
  `failed` task carrying the job's failure reason.
- `message/stream` streams a `working` status update per job event (decomposed, assigned,
  drafted, round k, synthesised) before the artifacts and the final state.
- `tasks/get` comes from the SDK's task store; `tasks/cancel` cancels the job
  (fabric.client.cancel_job) and ends the task `canceled`.
- Message or request metadata may carry `budget_tokens`, `max_cost`, `deadline_s`, `policies`.

The A2A task id maps to the FoA job id `a2a-{task id}`, so a cancel needs no lookup table; the
`contextId` maps to the conversation `a2a-ctx-{contextId}`, so a follow-up sent with the same
context is routed and drafted with the earlier turns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from typing import Any

from a2a.helpers import get_message_text, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Task,
    TaskState,
    TaskStatus,
)
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

from fabric.errors import ConfigError
from fabric.interop.link import FederationLink, JobRequest, job_summary, progress_text
from fabric.messages import JobEvent
from fabric.settings import Settings

log = logging.getLogger("foa.interop.a2a_server")

ASK = AgentSkill(
    id="ask",
    name="Ask the federation",
    description="Answers a question by routing it to the federation's agents: decomposition into subtasks, "
    "policy- and cost-aware assignment, drafting, refinement and synthesis.",
    tags=["question answering", "orchestration", "multi-agent"],
    examples=["What should a family do when someone has sudden chest pain?"],
)


def job_id_for(task_id: str) -> str:
    return f"a2a-{task_id}"


def conversation_for(context_id: str) -> str:
    """An A2A context is one FoA conversation: messages sent with the same `contextId` are its
    turns (a follow-up is routed and drafted with the earlier ones). Long ids are hashed to fit."""
    if len(context_id) > 100:
        context_id = hashlib.sha256(context_id.encode()).hexdigest()[:32]
    return f"a2a-ctx-{context_id}"


def federation_skills(agents: list[dict[str, Any]], limit: int = 20) -> list[AgentSkill]:
    """The most common skills of the live agents, each listing who offers it."""
    offered: dict[str, list[str]] = collections.defaultdict(list)
    for agent in agents:
        for skill in agent.get("skills", []) or []:
            offered[str(skill)].append(str(agent["agent_id"]))
    top = sorted(offered.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]
    return [
        AgentSkill(
            id=f"federation:{name}",
            name=name,
            tags=[name],
            description=f"{name}, offered by {len(ids)} agent(s): {', '.join(sorted(ids)[:8])}",
        )
        for name, ids in top
    ]


def build_card(public_url: str, agents: list[dict[str, Any]]) -> AgentCard:
    return AgentCard(
        name="FoA federation",
        description=f"A Federation of Agents with {len(agents)} live agent(s): questions are routed by capability, "
        "decomposed into a DAG of subtasks and answered by the agents best suited to each.",
        version="1.0.0",
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text"],
        default_output_modes=["text", "application/json"],
        skills=[ASK, *federation_skills(agents)],
        supported_interfaces=[
            AgentInterface(protocol_binding="JSONRPC", protocol_version="1.0", url=f"{public_url}/a2a")
        ],
    )


class FederationExecutor(AgentExecutor):
    """One A2A task = one FoA job."""

    def __init__(self, link: FederationLink) -> None:
        self.link = link

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message, task_id, context_id = context.message, context.task_id, context.context_id
        if message is None or not task_id or not context_id:
            return
        await event_queue.enqueue_event(
            Task(
                id=task_id,
                context_id=context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[message],
            )
        )
        updater = TaskUpdater(event_queue=event_queue, task_id=task_id, context_id=context_id)

        def say(text: str) -> Message:
            return updater.new_agent_message(parts=[Part(text=text)])

        question = get_message_text(message).strip()
        if not question:
            await updater.reject(message=say("the message has no text: send the question as a text part"))
            return
        meta = {**MessageToDict(message.metadata), **context.metadata}
        try:
            request = JobRequest.parse(meta)
        except ConfigError as exc:
            await updater.reject(message=say(str(exc)))
            return
        job_id = job_id_for(task_id)
        await updater.start_work(message=say(f"job {job_id} submitted"))
        pending: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()

        def on_event(event: JobEvent) -> None:
            pending.append(
                loop.create_task(updater.update_status(TaskState.TASK_STATE_WORKING, message=say(progress_text(event))))
            )

        try:
            result = await self.link.run_job(
                question, job_id, request, on_event, conversation_id=conversation_for(context_id)
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.link.cancel(job_id, "A2A task canceled"))
            raise
        except Exception as exc:  # noqa: BLE001 - the task fails with the reason; the server keeps serving
            await asyncio.gather(*pending, return_exceptions=True)
            await updater.failed(message=say(f"{type(exc).__name__}: {exc}"))
            return
        await asyncio.gather(*pending, return_exceptions=True)
        if result.status == "canceled":
            await updater.cancel(message=say(result.failure_reason or "the job was canceled"))
            return
        if result.status != "completed":
            await updater.failed(message=say(result.failure_reason or "the job failed"))
            return
        await updater.add_artifact(parts=[Part(text=result.answer)], name="answer")
        await updater.add_artifact(parts=[new_data_part(job_summary(result))], name="job", last_chunk=True)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        with contextlib.suppress(Exception):
            await self.link.cancel(job_id_for(task_id), "A2A tasks/cancel")
        updater = TaskUpdater(event_queue=event_queue, task_id=task_id, context_id=context.context_id or "")
        await updater.cancel(
            message=updater.new_agent_message(parts=[Part(text=f"job {job_id_for(task_id)} canceled")])
        )


def build_app(link: FederationLink, public_url: str) -> Starlette:
    card = build_card(public_url, [])
    handler = DefaultRequestHandler(
        agent_executor=FederationExecutor(link), task_store=InMemoryTaskStore(), agent_card=card
    )

    async def live_card(_: AgentCard) -> AgentCard:
        try:
            agents = await link.agents()
        except Exception as exc:  # noqa: BLE001 - a card without the summary beats no card
            log.warning("agent card without the live summary: %s", exc)
            agents = []
        return build_card(public_url, agents)

    routes = [*create_agent_card_routes(card, card_modifier=live_card), *create_jsonrpc_routes(handler, rpc_url="/a2a")]
    return Starlette(routes=routes)


async def serve(settings: Settings, host: str = "127.0.0.1", port: int = 9100, public_url: str | None = None) -> None:
    """Serve until interrupted."""
    import uvicorn

    link = FederationLink(settings, "a2a-serve")
    await link.connect()  # fail fast with a clear error when there is no federation
    app = build_app(link, (public_url or f"http://{host}:{port}").rstrip("/"))
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    log.info("A2A server", extra={"url": f"http://{host}:{port}", "card": "/.well-known/agent-card.json"})
    try:
        await server.serve()
    finally:
        await link.close()
