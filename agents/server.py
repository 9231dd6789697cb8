"""Serving one agent's inbox: the part `Agent` (one per process) and `AgentHost` (many on one
connection) share, by composition.

A `TaskServer` owns the handler table, the inbox subscription, the de-duplication cache of task
results, the concurrency slots, the answer, and the hook that signs each VCV version.

Handlers come in two styles, in the manner of autogen's `RoutedAgent` and FastStream's
subscribers:

    @server.handler                                   # the kind comes from the input model
    async def draft(task: DraftInput) -> DraftOutput: ...

    @server.handler                                   # with the request (ids, max_tokens)
    async def refine(task: RefineInput, ctx: TaskRequest) -> tuple[RefineOutput, Usage]: ...

    @server.handler("my-kind")                        # an agent's own kind, dict in and out
    async def mine(task: TaskRequest) -> dict: ...

The input is validated once, here, before the handler runs, and the output once, after (a
registered kind's output model, whichever style produced it), so a handler never re-validates
and a malformed answer never leaves the agent.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, overload

from pydantic import BaseModel, ValidationError

from agents.spec import AgentSpec
from fabric import topics
from fabric.bus import Bus, Incoming
from fabric.envelope import Envelope, trace_id_of
from fabric.errors import FoAError
from fabric.messages import TaskRequest, TaskResult, Usage
from fabric.tasks import REGISTRY, TaskKind, check_kind_name, kind_of_input
from fabric.vcv import VCV

log = logging.getLogger("foa.agent")

HandlerOutput = dict[str, Any] | BaseModel
HandlerResult = HandlerOutput | tuple[HandlerOutput, Usage]
#: any handler: (TaskRequest) for named kinds, (Input) or (Input, TaskRequest) for typed ones
TaskHandler = Callable[..., Awaitable[HandlerResult] | HandlerResult]
Signer = Callable[[VCV], VCV]


class TaskFailed(FoAError):
    """Raise from a handler to answer with a clear error instead of a traceback."""


class HandlerSignatureError(FoAError, TypeError):
    """A handler whose annotations do not say which kind it serves."""


@dataclass(frozen=True)
class Route:
    """How one kind is served: the function, and the models the server validates with."""

    kind: str
    fn: TaskHandler
    input: type[BaseModel] | None  # None: the handler takes the TaskRequest itself
    output: type[BaseModel] | None  # None: any dict (an agent's own kind without a model)
    with_request: bool  # a typed handler that also wants the TaskRequest


def route_for(fn: TaskHandler, kind: str | TaskKind[Any, Any] | None = None) -> Route:
    """Read a handler's kind and models from its annotations (see the module docstring)."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = _type_hints(fn)
    except Exception as exc:  # noqa: BLE001 - any failure to resolve is reported or tolerated below
        if kind is None:
            raise HandlerSignatureError(
                f"handler {name}: cannot resolve its annotations ({exc}); define its models at module level"
            ) from None
        hints = {}  # a named kind: served as an untyped handler, as before annotations were read
    params = [p for p in _parameters(fn) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    first = hints.get(params[0].name) if params else None
    model = first if isinstance(first, type) and issubclass(first, BaseModel) and first is not TaskRequest else None
    registered = (
        kind if isinstance(kind, TaskKind) else REGISTRY.get(kind) if kind else kind_of_input(model) if model else None
    )
    if kind is None and registered is None:
        raise HandlerSignatureError(
            f"handler {name}: annotate its first parameter with a task input model "
            f"({', '.join(k.input.__name__ for k in REGISTRY.values())}) or name its kind: @agent.handler('my-kind')"
        )
    if registered is not None and model is not None and model is not registered.input:
        raise HandlerSignatureError(
            f"handler {name} serves {registered.name!r}, whose input is {registered.input.__name__}, "
            f"but its first parameter is annotated {model.__name__}"
        )
    kind_name = registered.name if registered is not None else check_kind_name(str(kind))
    returns = hints.get("return")
    own_output = returns if isinstance(returns, type) and issubclass(returns, BaseModel) else None
    return Route(
        kind=kind_name,
        fn=fn,
        input=model,
        output=registered.output if registered is not None else own_output,
        with_request=model is not None and len(params) >= 2,
    )


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The handler's resolved annotations. With postponed annotations a model imported inside
    the function that defines the handler is not in its globals, so, as pydantic does for
    forward references, the names of the frames that registered it are tried too."""
    try:
        return typing.get_type_hints(fn)
    except NameError:
        local: dict[str, Any] = {}
        frame = inspect.currentframe()
        for _ in range(8):  # route_for <- add_handler <- handler/register <- Agent.handler <- the caller's scope
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            local = frame.f_locals | local  # nearer frames win
        return typing.get_type_hints(fn, localns=local)


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []


class TaskServer:
    """One agent's inbox: handlers, de-duplication, slots, answers. See the module docstring."""

    def __init__(
        self,
        agent_id: str,
        replica_id: str,
        *,
        max_concurrency: int = 1,
        signer: Signer | None = None,
        results_kept: int = 2048,
    ) -> None:
        self.agent_id = agent_id
        self.replica_id = replica_id
        self.signer = signer
        self.routes: dict[str, Route] = {}
        self.served = 0
        self.failed = 0
        self.bus: Bus | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        # task_id -> result (or a future while running): a re-sent task is answered, not re-run
        self._results: collections.OrderedDict[str, asyncio.Future[TaskResult]] = collections.OrderedDict()
        self._results_kept = results_kept

    # ---- handlers ------------------------------------------------------------------------

    @overload
    def handler(self, kind: TaskHandler) -> TaskHandler: ...
    @overload
    def handler(self, kind: str | TaskKind[Any, Any] | None = None) -> Callable[[TaskHandler], TaskHandler]: ...
    def handler(
        self, kind: TaskHandler | str | TaskKind[Any, Any] | None = None
    ) -> TaskHandler | Callable[[TaskHandler], TaskHandler]:
        """Decorator: `@handler` (kind from the input annotation), `@handler("my-kind")` or `@handler(DRAFT)`."""
        if callable(kind) and not isinstance(kind, TaskKind):
            self.add_handler(None, kind)
            return kind

        def register(fn: TaskHandler) -> TaskHandler:
            self.add_handler(kind, fn)
            return fn

        return register

    def add_handler(self, kind: str | TaskKind[Any, Any] | None, fn: TaskHandler) -> None:
        route = route_for(fn, kind)
        self.routes[route.kind] = route

    @property
    def kinds(self) -> list[str]:
        return sorted(self.routes)

    def sign(self, vcv: VCV) -> VCV:
        """The VCV as published: signed when the agent has a key (the version is part of what is signed)."""
        return self.signer(vcv) if self.signer is not None else vcv

    # ---- the inbox -----------------------------------------------------------------------

    @property
    def inbox(self) -> str:
        return topics.shared(topics.SHARE_GROUP_AGENT, topics.agent_tasks(self.agent_id))

    async def serve(self, bus: Bus) -> None:
        """Subscribe the inbox (durable: tasks queued while away are served on return)."""
        self.bus = bus
        await bus.subscribe(self.inbox, self.on_task, body_types=TaskRequest, durable=True)

    async def close(self) -> None:
        """Stop serving: unsubscribe the inbox (the connection stays, it may be shared)."""
        bus, self.bus = self.bus, None
        if bus is not None and bus.connected:
            await bus.unsubscribe(self.inbox)

    async def on_task(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        env: Envelope[TaskRequest] = msg.envelope
        task = env.body
        if task.deadline_at is not None and time.time() > task.deadline_at:
            log.warning("dropping expired task", extra={"agent_id": self.agent_id, "task_id": task.task_id})
            await self._answer(
                env,
                TaskResult(
                    task_id=task.task_id,
                    agent_id=self.agent_id,
                    ok=False,
                    error="deadline passed before the task started",
                ),
            )
            return
        known = self._results.get(task.task_id)
        if known is not None:  # a re-send: answer once the first run is done, never run twice
            await self._answer(env, await asyncio.shield(known))
            return
        fut: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._results[task.task_id] = fut
        while len(self._results) > self._results_kept:
            self._results.popitem(last=False)
        async with self._slots:
            log.debug(
                "task",
                extra={
                    "agent_id": self.agent_id,
                    "task_id": task.task_id,
                    "kind": task.task_kind,
                    "job_id": env.job_id,
                    "trace_id": trace_id_of(env.traceparent),
                },
            )
            result = await self.execute(task)
        fut.set_result(result)
        await self._answer(env, result)

    async def execute(self, task: TaskRequest) -> TaskResult:
        """Run the task's handler: input validated before, output after; errors become answers."""
        started = time.perf_counter()
        base: dict[str, Any] = {"task_id": task.task_id, "agent_id": self.agent_id, "replica_id": self.replica_id}

        def failed(error: str) -> TaskResult:
            self.failed += 1
            return TaskResult(**base, ok=False, error=error, latency_ms=(time.perf_counter() - started) * 1000)

        route = self.routes.get(task.task_kind)
        if route is None:
            return failed(
                f"agent {self.agent_id} has no handler for task kind {task.task_kind!r}; it serves {self.kinds}"
            )
        try:
            args: tuple[Any, ...] = (task,)
            if route.input is not None:
                args = (
                    (route.input.model_validate(task.input), task)
                    if route.with_request
                    else (route.input.model_validate(task.input),)
                )
        except ValidationError as exc:
            return failed(f"invalid {task.task_kind} input: {exc.error_count()} error(s): {_first_error(exc)}")
        try:
            out = route.fn(*args)
            if inspect.isawaitable(out):
                out = await out
            output, usage = _output(route, out)
        except TaskFailed as exc:
            return failed(str(exc))
        except ValidationError as exc:
            return failed(f"handler returned an invalid {task.task_kind} output: {_first_error(exc)}")
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the agent down
            log.exception("task handler failed", extra={"agent_id": self.agent_id, "task_id": task.task_id})
            return failed(f"{type(exc).__name__}: {exc}")
        self.served += 1
        return TaskResult(
            **base, ok=True, output=output, usage=usage, latency_ms=(time.perf_counter() - started) * 1000
        )

    async def _answer(self, request: Envelope[TaskRequest], result: TaskResult) -> None:
        if request.reply_to and self.bus is not None:
            await self.bus.reply(request, result)


def _output(route: Route, out: Any) -> tuple[dict[str, Any], Usage]:
    """The handler's answer as wire JSON, checked against the kind's output model once."""
    usage = Usage()
    if isinstance(out, tuple):
        out, usage = out
    if route.output is not None:
        if not isinstance(out, route.output):
            if isinstance(out, BaseModel):
                raise TaskFailed(
                    f"handler for {route.kind!r} returned {type(out).__name__}, expected {route.output.__name__}"
                )
            out = route.output.model_validate(out)
        return out.model_dump(mode="json"), usage
    if isinstance(out, BaseModel):
        return out.model_dump(mode="json"), usage
    return dict(out), usage


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"


class ServesTasks:
    """What `Agent` and `HostedAgent` expose of the `TaskServer` they each own (`self.tasks`)."""

    spec: AgentSpec
    tasks: TaskServer

    @property
    def agent_id(self) -> str:
        return self.spec.id

    @property
    def served(self) -> int:
        return self.tasks.served

    @property
    def failed(self) -> int:
        return self.tasks.failed

    @overload
    def handler(self, kind: TaskHandler) -> TaskHandler: ...
    @overload
    def handler(self, kind: str | TaskKind[Any, Any] | None = None) -> Callable[[TaskHandler], TaskHandler]: ...
    def handler(
        self, kind: TaskHandler | str | TaskKind[Any, Any] | None = None
    ) -> TaskHandler | Callable[[TaskHandler], TaskHandler]:
        """Decorator: `@agent.handler` on `async def draft(task: DraftInput) -> DraftOutput` (the
        kind comes from the input model), or `@agent.handler("my-kind")` for an agent's own kind."""
        return self.tasks.handler(kind)

    def add_handler(self, kind: str | TaskKind[Any, Any] | None, fn: TaskHandler) -> None:
        self.tasks.add_handler(kind, fn)
