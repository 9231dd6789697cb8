"""`foa.Client`: a running federation from Python, the way the CLI reaches it.

    async with Client() as client:
        result = await client.ask("what are the health benefits of cycling?")

A user had to assemble a `Bus`, `submit_and_follow` and settings by hand; this is the one object
that does it, and `foa submit` uses it too, so a script and the command line find the broker,
reconnect and re-send the same way (`fabric.client.follow_federation`: FOA_BROKER_URL, else the
`.foa/federation.json` of the running `foa up`, looked up again when the federation restarts).

It sits in the app layer, not in `fabric.client`, because `route` asks the router through
`router.client`, which the base may not import.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError

from fabric import topics
from fabric.aio import wait_within
from fabric.bus import BrokerAddress, Bus, BusError, Incoming
from fabric.client import cancel_job, follow_federation, new_job_id
from fabric.errors import ConfigError, readable
from fabric.messages import Budget, JobEvent, JobOptions, JobResult, RouteQuery, RouteResponse, RouterStatus
from fabric.registry import AgentInfo, Registry
from fabric.runtime import resolve_broker
from fabric.settings import Settings
from router.client import RouterClient

__all__ = ["Client", "Conversation", "new_conversation_id"]

#: the longest conversation id a `JobSubmit` carries
CONVERSATION_ID_MAX = 128


def new_conversation_id() -> str:
    return f"conv-{uuid.uuid4().hex[:16]}"


def check_conversation_id(value: str) -> str:
    """A conversation id a `JobSubmit` accepts, or a `ConfigError` that says what to give."""
    if not value.strip() or len(value) > CONVERSATION_ID_MAX:
        raise ConfigError(
            f"conversation id {value[:40]!r} must be 1 to {CONVERSATION_ID_MAX} non-blank characters: "
            "pass the `conversation_id` of an earlier answer, or none to start a conversation"
        )
    return value


class Client:
    """A running federation: ask questions, stream their progress, cancel, list agents, route.

    `settings` default to `Settings()` (FOA_* variables); `broker_url` pins one broker instead of
    looking it up. Entering raises `NoFederation` (a `ConfigError`) when neither names a broker.
    Every job is followed across a restarted federation (reconnect, re-send by job id) until
    `timeout` seconds pass (`JobTimeout`). Errors are `FoAError`s.
    """

    def __init__(self, settings: Settings | None = None, *, broker_url: str | None = None, timeout: float = 900.0):
        settings = settings or Settings()
        self.settings = settings.model_copy(update={"broker_url": broker_url}) if broker_url else settings
        self.timeout = timeout
        self._bus: Bus | None = None
        self._address: BrokerAddress | None = None
        self._registry: Registry | None = None
        self._lock = asyncio.Lock()

    def locate(self) -> BrokerAddress:
        """The federation's broker now: FOA_BROKER_URL / `broker_url`, else the running `foa up`'s."""
        return resolve_broker(self.settings)

    async def __aenter__(self) -> Client:
        self.locate()  # no federation at all: say so now, not after `timeout`
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        bus, self._bus, self._registry = self._bus, None, None
        if bus is not None:
            await bus.close()

    async def _connected(self) -> Bus:
        """The client's own connection (cancel, agents, route), moved when the federation moved."""
        async with self._lock:
            address = self.locate()
            if self._bus is not None and address == self._address:
                return self._bus
            await self.close()
            bus = Bus(self.settings, f"client-{uuid.uuid4().hex[:8]}", broker=address, persistent=False)
            try:
                await bus.connect(timeout=5.0)
            except (BusError, OSError, TimeoutError) as exc:
                raise BusError(
                    f"cannot reach the federation's broker at {address.url} ({exc}): "
                    "is `foa up` running, or FOA_BROKER_URL right?"
                ) from exc
            self._bus, self._address = bus, address
            return bus

    # ---- jobs ---------------------------------------------------------------------------------

    async def ask(
        self,
        question: str,
        *,
        job_id: str | None = None,
        options: JobOptions | None = None,
        budget: Budget | None = None,
        deadline: float | None = None,
        policies: list[str] | None = None,
        conversation_id: str | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
        timeout: float | None = None,
        **option_fields: Any,
    ) -> JobResult:
        """Submit `question` and wait for its result (any status: check `result.status`).

        `option_fields` are `JobOptions` fields (`plan="never"`, `refine_rounds=1`, ...);
        `deadline` is the job's budget in seconds; `conversation_id` continues a conversation
        (see `conversation()`); `on_event` sees each progress event once.
        """
        if not question.strip():
            raise ConfigError('the question is empty: ask something, e.g. client.ask("what is a fever?")')
        if conversation_id is not None:
            check_conversation_id(conversation_id)
        unknown = sorted(set(option_fields) - set(JobOptions.model_fields))
        if unknown:
            known = ", ".join(JobOptions.model_fields)
            raise ConfigError(f"ask() got unknown options {unknown}: give JobOptions fields ({known})")
        try:
            opts = JobOptions.model_validate((options.model_dump() if options else {}) | option_fields)
            limits = {"deadline_s": deadline} if deadline is not None else {}
            spend = Budget.model_validate((budget.model_dump() if budget else {}) | limits)
        except ValidationError as exc:
            raise ConfigError(f"job options: {readable(exc)}") from None
        return await follow_federation(
            self.settings,
            self.locate,
            question,
            job_id=job_id or new_job_id(),
            options=opts,
            budget=spend,
            policies=policies,
            on_event=on_event,
            timeout=self.timeout if timeout is None else timeout,
            conversation_id=conversation_id,
        )

    async def stream(self, question: str, **ask_options: Any) -> AsyncIterator[JobEvent | JobResult]:
        """`ask`, as it happens: each `JobEvent` as it comes, then the `JobResult`, last.

        Tell them apart with `isinstance(item, JobResult)`. Leaving the loop early stops
        following (at once inside `contextlib.aclosing(...)`), not the job: `cancel(job_id)` ends it.
        """
        if "on_event" in ask_options:
            raise ConfigError("stream() yields the events itself: drop on_event, or use ask(on_event=...)")
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        job = asyncio.create_task(self.ask(question, on_event=queue.put_nowait, **ask_options))
        try:
            while not job.done() or not queue.empty():
                if queue.empty():
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    yield getter.result()
                else:
                    yield queue.get_nowait()
            yield job.result()
        finally:
            if not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job

    async def cancel(self, job_id: str, reason: str = "canceled by the client", wait: float = 10.0) -> JobResult | None:
        """Cancel a running job; its result (`canceled`, or how it had already ended) within
        `wait` seconds, else None (then no orchestrator answered for it). `wait=0`: send only."""
        topics.validate_id(job_id, "job id")
        bus = await self._connected()
        if wait <= 0:
            await cancel_job(bus, job_id, reason)
            return None
        ended: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()

        def on_result(msg: Incoming) -> None:
            if msg.envelope is not None and not ended.done():
                ended.set_result(msg.envelope.body)

        await bus.subscribe(topics.job_result(job_id), on_result, body_types=JobResult)
        try:
            await cancel_job(bus, job_id, reason)
            return await wait_within(ended, wait)
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(BusError):
                await bus.unsubscribe(topics.job_result(job_id))

    def conversation(self, conversation_id: str | None = None) -> Conversation:
        """A handle whose questions are turns of one conversation (a new one unless `conversation_id`)."""
        return Conversation(self, conversation_id)

    # ---- the federation -----------------------------------------------------------------------

    async def agents(self, *, include_offline: bool = False, wait: float = 5.0) -> list[AgentInfo]:
        """The live registry's agents, sorted by id. The first call waits (≤ `wait` s) for the
        retained snapshot; later calls read the view the client keeps up to date."""
        bus = await self._connected()
        if self._registry is None:
            registry = Registry()
            await registry.attach(bus)
            await registry.settle(quiet_s=0.4, max_s=wait)
            self._registry = registry
        entries = sorted(self._registry.live(), key=lambda e: e.vcv.agent_id if e.vcv else "")
        found = [AgentInfo.model_validate(e.summary()) for e in entries]
        return found if include_offline else [a for a in found if a.status != "offline"]

    async def route(
        self,
        text: str,
        *,
        top_k: int = 5,
        policies: list[str] | None = None,
        timeout: float | None = None,
        **query_fields: Any,
    ) -> RouteResponse:
        """The router's ranking of the live agents for `text` (what `foa route` prints);
        `query_fields` are the other `RouteQuery` fields (`skills`, `max_cost`, `abstain`, ...)."""
        try:
            query = RouteQuery(text=text, top_k=top_k, policies=policies or [], **query_fields)
        except ValidationError as exc:
            raise ConfigError(f"route query: {readable(exc)}") from None
        return await RouterClient(await self._connected(), timeout=timeout).route(query)


    async def router_status(self, timeout: float | None = None) -> RouterStatus:
        """A router replica's status: the abstention in force and its provenance, learning, counters."""
        return await RouterClient(await self._connected(), timeout=timeout).status()


class Conversation:
    """Questions that follow up on each other: each `ask` is sent with this conversation's id, so
    the orchestrator gives the earlier turns to routing, planning and drafting ("and for a child?").

    The id is made here (`conv-…`) unless given, and sent from the first question on; when a
    result names another conversation (the orchestrator's word), the handle follows that one.
    """

    def __init__(self, client: Client, conversation_id: str | None = None) -> None:
        self.client = client
        self.id = check_conversation_id(conversation_id) if conversation_id is not None else new_conversation_id()
        self.results: list[JobResult] = []

    def _adopt(self, result: JobResult) -> JobResult:
        if result.conversation_id:
            self.id = result.conversation_id
        self.results.append(result)
        return result

    async def ask(self, question: str, **ask_options: Any) -> JobResult:
        """`Client.ask` as the next turn of this conversation."""
        return self._adopt(await self.client.ask(question, conversation_id=self.id, **ask_options))

    async def stream(self, question: str, **ask_options: Any) -> AsyncIterator[JobEvent | JobResult]:
        """`Client.stream` as the next turn of this conversation."""
        async for item in self.client.stream(question, conversation_id=self.id, **ask_options):
            yield self._adopt(item) if isinstance(item, JobResult) else item
