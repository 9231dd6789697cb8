"""`foa a2a serve`: the federation answers as one A2A agent (official `a2a-sdk` server).

- The agent card, at the well-known path, has an `ask` skill (any question, routed and
  decomposed by the federation) plus skills summarising the live federation: the most common
  agent skills, each with the agents that offer it. It is rebuilt on every card request from the
  live registry, so it follows agents as they come and go.
- `message/send` runs one job (fabric.client.submit_and_follow); the task completes with a text
  artifact (the answer) and a data artifact (job id, DAG, assignments, usage). A failed job is a
  `failed` task carrying the job's failure reason.
- Clients' defaults: the official SDK's client reads with httpx's 5 s timeout, and a job takes
  seconds to minutes. So a blocking `message/send` waits at most `a2a_hold_s` (FOA_A2A_HOLD_S,
  4 s), then returns the task `working`; with `return_immediately` (SDK `ClientConfig(polling=
  True)`, 0.3 `blocking: false`) it returns at once. The job keeps running in the SDK's
  ActiveTask, which keeps writing the task store: `tasks/get` and `SubscribeToTask`
  (0.3 `tasks/resubscribe`) follow it to `completed`, `failed` or `canceled`.
- `message/stream` streams a `working` status update per job event (decomposed, assigned,
  drafted, round k, synthesised) and, whenever the job has been quiet for `a2a_heartbeat_s`
  (FOA_A2A_HEARTBEAT_S, 2 s), a heartbeat with the current phase and the elapsed time, before
  the artifacts and the final state. Each update's metadata has `phase`, `elapsed_s`.
- `tasks/get` comes from the SDK's task store; `tasks/cancel` cancels the job
  (fabric.client.cancel_job) and ends the task `canceled`.
- Message or request metadata may carry `budget_tokens`, `max_cost`, `deadline_s`, `policies`.
- Protocol versions: A2A 1.0 (JSON-RPC `SendMessage`, ...) and 0.3 (`message/send` with `kind`
  parts, ...) are served; 0.3 through the SDK's own compat layer, which costs one flag and keeps
  clients written to 0.3 (a2a-sdk 0.3.x, hand-written JSON-RPC) working. A2A 0.2 (`tasks/send`,
  `tasks/sendSubscribe`, `type` parts) is answered with a JSON-RPC error naming the served
  versions and the card URL: no SDK serves 0.2 any more, its task-centred methods have no 1.0
  counterpart to translate to, and a half-served old protocol is worse than a clear pointer.
  Any request the SDK refuses (unknown method, invalid request or params, wrong A2A-Version)
  gets the same hint appended. JSON-RPC is also answered at `/`, where clients that take the
  server's base URL for the endpoint post.

The A2A task id maps to the FoA job id `a2a-{task id}`, so a cancel needs no lookup table; the
`contextId` maps to the conversation `a2a-ctx-{contextId}`, so a follow-up sent with the same
context is routed and drafted with the earlier turns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from a2a.helpers import get_message_text, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes

# the 0.3 adapter through the dispatcher's module: imported first, a2a.compat.v0_3 is a circular import
from a2a.server.routes.jsonrpc_dispatcher import JSONRPC03Adapter, JsonRpcDispatcher
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    SendMessageRequest,
    Task,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from a2a.utils.task import apply_history_length
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fabric.aio import wait_within
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


#: the A2A versions `foa a2a serve` speaks, preferred first (clients pick 1.0 when they can)
SERVED_VERSIONS = ("1.0", "0.3")


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
            AgentInterface(protocol_binding="JSONRPC", protocol_version=version, url=f"{public_url}/a2a")
            for version in SERVED_VERSIONS
        ],
    )


class Progress:
    """The `working` status updates of one running job: one per job event, and a heartbeat
    whenever the job has been quiet for `heartbeat_s`, so that a streaming client reading with a
    default timeout (~5 s) hears from the task while a slow model writes the plan."""

    def __init__(self, updater: TaskUpdater, heartbeat_s: float) -> None:
        self.updater = updater
        self.heartbeat_s = heartbeat_s
        self.phase = "submitted"
        self.started = self.last = time.monotonic()
        self.stop = asyncio.Event()
        self._pending: list[asyncio.Task[None]] = []

    def elapsed_s(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def update(self, text: str) -> asyncio.Task[None]:
        self.last = time.monotonic()
        return asyncio.get_running_loop().create_task(
            self.updater.update_status(
                TaskState.TASK_STATE_WORKING,
                message=self.updater.new_agent_message(parts=[Part(text=text)]),
                metadata={"phase": self.phase, "elapsed_s": self.elapsed_s()},
            )
        )

    def on_event(self, event: JobEvent) -> None:
        self.phase = event.phase
        self._pending.append(self.update(progress_text(event)))

    async def beat(self) -> None:
        """Until `stop`: a heartbeat after every `heartbeat_s` without an update."""
        while not self.stop.is_set():
            quiet_left = self.last + self.heartbeat_s - time.monotonic()
            if quiet_left > 0:
                with contextlib.suppress(TimeoutError):
                    await wait_within(self.stop.wait(), quiet_left)
                continue
            await self.update(f"{self.phase}: working, {self.elapsed_s():.0f} s elapsed")

    async def drain(self, beat: asyncio.Task[None]) -> None:
        """Stop the heartbeat and let every update already started reach the queue (before the
        final state: nothing may follow a terminal event)."""
        self.stop.set()
        await asyncio.gather(beat, *self._pending, return_exceptions=True)

    def abandon(self, beat: asyncio.Task[None]) -> None:
        """The task is being canceled (its `canceled` state is written by `cancel`): no update
        may follow it."""
        self.stop.set()
        for update in (beat, *self._pending):
            update.cancel()


class FederationExecutor(AgentExecutor):
    """One A2A task = one FoA job."""

    def __init__(self, link: FederationLink, heartbeat_s: float) -> None:
        self.link = link
        self.heartbeat_s = heartbeat_s

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message, task_id, context_id = context.message, context.task_id, context.context_id
        if message is None or not task_id or not context_id:
            return
        updater = TaskUpdater(event_queue=event_queue, task_id=task_id, context_id=context_id)

        def say(text: str) -> Message:
            return updater.new_agent_message(parts=[Part(text=text)])

        question = get_message_text(message).strip()
        problem = "" if question else "the message has no text: send the question as a text part"
        request = JobRequest()
        if question:
            try:
                request = JobRequest.parse({**MessageToDict(message.metadata), **context.metadata})
            except ConfigError as exc:
                problem = str(exc)
        job_id = job_id_for(task_id)
        # The first event is the task itself, already `working` when the job is accepted: a
        # client that asked to return immediately gets this task.
        state = TaskState.TASK_STATE_SUBMITTED if problem else TaskState.TASK_STATE_WORKING
        first = TaskStatus(state=state, message=say(problem or f"job {job_id} submitted"))
        await event_queue.enqueue_event(Task(id=task_id, context_id=context_id, status=first, history=[message]))
        if problem:
            await updater.reject(message=say(problem))
            return
        await self._run(question, job_id, request, updater, say, conversation_for(context_id))

    async def _run(
        self,
        question: str,
        job_id: str,
        request: JobRequest,
        updater: TaskUpdater,
        say: Callable[[str], Message],
        conversation_id: str,
    ) -> None:
        """Run the job with progress and heartbeats; end the task in its final state. This runs
        in the SDK's ActiveTask, not in the HTTP request, so it outlives a returned send."""
        progress = Progress(updater, self.heartbeat_s)
        beat = asyncio.get_running_loop().create_task(progress.beat())
        try:
            result = await self.link.run_job(
                question, job_id, request, progress.on_event, conversation_id=conversation_id
            )
        except asyncio.CancelledError:
            progress.abandon(beat)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.link.cancel(job_id, "A2A task canceled"))
            raise
        except Exception as exc:  # noqa: BLE001 - the task fails with the reason; the server keeps serving
            await progress.drain(beat)
            await updater.failed(message=say(f"{type(exc).__name__}: {exc}"))
            return
        await progress.drain(beat)
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


#: the states after which a task no longer changes without the client (SDK's terminal and
#: interrupted states)
SETTLED = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_REJECTED,
    TaskState.TASK_STATE_INPUT_REQUIRED,
    TaskState.TASK_STATE_AUTH_REQUIRED,
}


class HoldingRequestHandler(DefaultRequestHandler):
    """The SDK's handler, except that a blocking `message/send` holds for at most `hold_s`.

    The send is made non-blocking underneath (the SDK then returns the first task event and
    leaves the executor running), and the task store is read every `poll_s` until the task
    settles or the hold ends; whichever comes first is the answer. A store read, not a timed
    wait on the SDK's event subscription: that subscription swallows cancellation, so a timeout
    around it is not reliable. The store is in memory, so a read every 50 ms costs nothing.
    """

    def __init__(
        self, executor: AgentExecutor, tasks: InMemoryTaskStore, card: AgentCard, hold_s: float, poll_s: float = 0.05
    ) -> None:
        super().__init__(agent_executor=executor, task_store=tasks, agent_card=card)
        self.tasks = tasks
        self.hold_s = hold_s
        self.poll_s = poll_s

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Message | Task:
        if params.configuration.return_immediately:
            return await super().on_message_send(params, context)
        at_once = SendMessageRequest()
        at_once.CopyFrom(params)
        at_once.configuration.return_immediately = True
        first = await super().on_message_send(at_once, context)
        if isinstance(first, Message):
            return first
        return apply_history_length(await self._hold(first, context), params.configuration)

    async def _hold(self, task: Task, context: ServerCallContext) -> Task:
        deadline = time.monotonic() + self.hold_s
        while task.status.state not in SETTLED and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(self.poll_s, left))
            task = await self.tasks.get(task.id, context) or task
        return task


#: A2A 0.2's methods: named in the error so a 0.2 client's user knows why
V02_METHODS = ("tasks/send", "tasks/sendSubscribe", "tasks/pushNotification/set", "tasks/pushNotification/get")
#: JSON-RPC errors after which a client may be speaking another protocol version
VERSION_HINTED_CODES = {-32600, -32601, -32602, -32009}


def versions_hint(card_url: str) -> str:
    return (
        "this server speaks A2A 1.0 (JSON-RPC SendMessage, SendStreamingMessage, GetTask, CancelTask, "
        "SubscribeToTask; header A2A-Version: 1.0) and A2A 0.3 (message/send, message/stream, tasks/get, "
        "tasks/cancel, tasks/resubscribe; parts with `kind`); A2A 0.2 (tasks/send, tasks/sendSubscribe) is not "
        f"served: use an A2A 1.0 or 0.3 client. The agent card: {card_url}"
    )


def jsonrpc_routes(
    handler: DefaultRequestHandler, public_url: str, paths: tuple[str, ...] = ("/a2a", "/")
) -> list[Route]:
    """The SDK's JSON-RPC endpoint with 0.3 compat on, and a clear answer to other versions:
    a method neither version knows gets an error naming the served versions and the card URL,
    and so does any request the SDK refuses as invalid."""
    dispatcher = JsonRpcDispatcher(request_handler=handler, enable_v0_3_compat=True)
    known = set(JsonRpcDispatcher.METHOD_TO_MODEL) | set(JSONRPC03Adapter.METHOD_TO_MODEL)
    hint = versions_hint(f"{public_url}{AGENT_CARD_WELL_KNOWN_PATH}")

    async def endpoint(request: Request) -> Response:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - the dispatcher answers bad JSON itself
            body = None
        method = body.get("method") if isinstance(body, dict) else None
        if isinstance(method, str) and method and method not in known:
            request_id = body.get("id") if isinstance(body, dict) else None
            old = " is A2A 0.2's" if method in V02_METHODS else " is not an A2A method"
            return JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": request_id if isinstance(request_id, str | int) else None,
                    "error": {"code": -32601, "message": f"method {method!r}{old}: {hint}"},
                }
            )
        return with_hint(await dispatcher.handle_requests(request), hint)

    return [Route(path=path, endpoint=endpoint, methods=["POST"]) for path in paths]


def with_hint(response: Response, hint: str) -> Response:
    """A JSON-RPC error the SDK wrote about the request's shape, with the versions hint added."""
    if not isinstance(response, JSONResponse):
        return response  # a stream: its errors are events
    try:
        data = json.loads(bytes(response.body))
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict) or error.get("code") not in VERSION_HINTED_CODES:
            return response
        error["message"] = f"{error.get('message') or 'invalid request'}: {hint}"
    except (ValueError, TypeError):
        return response
    return JSONResponse(data, status_code=response.status_code)


def build_app(link: FederationLink, public_url: str) -> Starlette:
    card = build_card(public_url, [])
    executor = FederationExecutor(link, link.settings.a2a_heartbeat_s)
    handler = HoldingRequestHandler(executor, InMemoryTaskStore(), card, hold_s=link.settings.a2a_hold_s)

    async def live_card(_: AgentCard) -> AgentCard:
        try:
            agents = await link.agents()
        except Exception as exc:  # noqa: BLE001 - a card without the summary beats no card
            log.warning("agent card without the live summary: %s", exc)
            agents = []
        return build_card(public_url, agents)

    routes = [*create_agent_card_routes(card, card_modifier=live_card), *jsonrpc_routes(handler, public_url)]
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
