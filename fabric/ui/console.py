"""The console's side of the bus: it follows agents and jobs and answers the HTTP handlers.

One MQTT connection (the `client` role's rights are enough: it reads VCVs, statuses,
reputations and `foa/jobs/#`, and writes route queries, submissions and cancels). Every change
it hears is pushed to the open pages over server-sent events (`Broadcaster`), so a page never
polls. The connection is opened in the background and retried: a console started before its
broker, or whose broker went away, keeps serving pages that say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from fabric import topics
from fabric.aio import wait_within
from fabric.bus import BrokerAddress, Bus, BusError, Incoming
from fabric.client import JobFailed, cancel_job, new_job_id, submit_and_follow
from fabric.errors import FoAError
from fabric.messages import AgentStatus, Budget, JobEvent, JobOptions, JobResult, JobSubmit, Reputation, RouteQuery
from fabric.registry import AgentEntry, Registry
from fabric.settings import Settings
from fabric.ui.jobs import JobBook, JobRecord
from fabric.ui.models import (
    AgentDetail,
    AgentRow,
    CapabilityMap,
    Gated,
    Health,
    JobDetail,
    MapPoint,
    RouteRequest,
    RouteView,
    SubmitRequest,
)
from fabric.vcv import VCV
from router.client import RouterClient

log = logging.getLogger("foa.ui")

#: vector fields of a VCV: left out of the detail view (hundreds of numbers nobody reads)
VECTOR_FIELDS = ("capability", "spec_embedding")


def pca_2d(centred: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Rows of a centred n × d matrix on its first two principal components, and each axis's share
    of the variance. Few agents: an SVD of the data (cost n²d); many: eigh of the d × d scatter
    matrix (d³ + nd², flat in n). Single-threaded on this 2-core machine under load, 384-d:
    4 agents 0.2 ms by SVD (32 ms by eigh); 1000 agents 40 ms by eigh (194 ms by SVD); 10k 137 ms
    (883 ms)."""
    n, d = centred.shape
    xy = np.zeros((n, 2))
    if n < 2:
        return xy, []
    top = min(2, n - 1)
    if n <= d:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        variances, axes = s**2, vt[:top].T
    else:
        values, vectors = np.linalg.eigh(centred.T @ centred)  # ascending
        variances, axes = values[::-1], vectors[:, ::-1][:, :top]
    xy[:, :top] = centred @ axes
    total = float(variances.sum()) or 1.0
    return xy, [round(float(v) / total, 4) for v in variances[:top]]


class Broadcaster:
    """Fan-out of (event, JSON) pairs to every open page. A page that cannot keep up loses
    messages and is told to reload its view (`resync`) instead of stalling the others."""

    def __init__(self, queue_size: int = 512) -> None:
        self.queue_size = queue_size
        self._queues: set[asyncio.Queue[tuple[str, str] | None]] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queues)

    def publish(self, event: str, data: Any) -> None:
        text = json.dumps(data, default=str)
        for queue in list(self._queues):
            try:
                queue.put_nowait((event, text))
            except asyncio.QueueFull:
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
                queue.put_nowait(("resync", "{}"))

    async def stream(self) -> AsyncIterator[tuple[str, str]]:
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(self.queue_size)
        self._queues.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)


class ConsoleError(FoAError):
    """A request the console cannot serve; `status` is the HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Console:
    def __init__(
        self,
        settings: Settings,
        broker: BrokerAddress,
        *,
        allow_submit: bool = False,
        max_jobs: int = 500,
        retained_lookup_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.allow_submit = allow_submit
        self.registry = Registry()
        self.reputation: dict[str, dict[str, Any]] = {}
        self.jobs = JobBook(max_jobs=max_jobs)
        self.events = Broadcaster()
        self.retained_lookup_s = retained_lookup_s
        self.bus: Bus | None = None
        self.error: str | None = "connecting to the broker"
        self.rejected = 0  # bus messages that did not make sense (counted, never fatal)
        self.refused: dict[int, int] = {}  # HTTP requests answered with an error, by status
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._connect_forever(), "ui-connect")
        self._spawn(self._watch_connection(), "ui-watch")

    async def stop(self) -> None:
        self.events.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect_forever(self) -> None:
        """Connect and subscribe; on failure retry with backoff (the bus reconnects by itself after)."""
        delay = 0.5
        while True:
            bus = Bus(self.settings, f"client-ui-{uuid.uuid4().hex[:8]}", broker=self.broker, persistent=False)
            try:
                await bus.connect()
                await self._subscribe(bus)
            except (BusError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await bus.close()
                self.error = f"cannot reach the broker at {self.broker.host}:{self.broker.port} ({exc}); retrying"
                log.warning(self.error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.bus = bus
            self.error = None
            return

    async def _subscribe(self, bus: Bus) -> None:
        await bus.subscribe(topics.AGENT_VCV_WILDCARD, self._on_vcv, body_types=VCV, accept_empty=True)
        await bus.subscribe(topics.AGENT_STATUS_WILDCARD, self._on_status, body_types=AgentStatus)
        await bus.subscribe(topics.REPUTATION_WILDCARD, self._on_reputation, body_types=Reputation)
        await bus.subscribe(topics.JOBS_SUBMIT, self._on_submit, body_types=JobSubmit)
        await bus.subscribe(topics.JOBS_EVENTS_WILDCARD, self._on_job_event, body_types=JobEvent)
        await bus.subscribe(topics.JOBS_RESULT_WILDCARD, self._on_job_result, body_types=JobResult, accept_empty=True)

    async def _watch_connection(self) -> None:
        """Tell the pages when the broker goes away or comes back (the bus reconnects by itself)."""
        was_connected = False
        while True:
            if self.connected != was_connected:
                was_connected = self.connected
                self.events.publish("health", self.health().model_dump())
            await asyncio.sleep(0.5)

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.connected

    def problem(self) -> str | None:
        """Why the console cannot talk to the federation right now, or None."""
        if self.connected:
            return None
        if self.bus is None:
            return self.error or "connecting to the broker"
        where = f"{self.broker.host}:{self.broker.port}"
        return f"lost the broker at {where}; reconnecting (the pages update when it is back)"

    def health(self) -> Health:
        return Health(
            broker=f"{self.broker.host}:{self.broker.port}",
            connected=self.connected,
            error=self.problem(),
            allow_submit=self.allow_submit,
            agents=len(self.registry.live()),
            jobs=len(self.jobs),
            refused=dict(self.refused),
            dropped_events=self.events.dropped,
            rejected_messages=self.rejected + (self.bus.stats.rejected_total if self.bus else 0),
        )

    def _need_bus(self) -> Bus:
        if self.bus is None or not self.bus.connected:
            raise ConsoleError(503, f"the console is not connected to the broker ({self.problem()}): "
                                    "check that the federation is running (`foa up`) and retry")
        return self.bus

    # ---- agents ---------------------------------------------------------------------------

    def _on_vcv(self, msg: Incoming) -> None:
        agent_id = topics.agent_id_of(msg.topic)
        if agent_id is None:
            return
        if self.registry.apply_vcv(agent_id, msg.envelope.body if msg.envelope else None):
            row = self.agent_row(agent_id)
            self.events.publish("agent", row.model_dump() if row else {"agent_id": agent_id, "removed": True})

    def _on_status(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        status: AgentStatus = msg.envelope.body
        self.registry.apply_status(status)
        row = self.agent_row(status.agent_id)
        if row is not None:
            self.events.publish("agent", row.model_dump())

    def _on_reputation(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        record = msg.envelope.body.model_dump(mode="json")
        self.reputation[str(record["agent_id"])] = record
        row = self.agent_row(str(record["agent_id"]))
        if row is not None:
            self.events.publish("agent", row.model_dump())

    def _row(self, entry: AgentEntry) -> AgentRow:
        assert entry.vcv is not None
        rep = self.reputation.get(entry.vcv.agent_id, {})
        return AgentRow.model_validate(
            entry.summary()
            | {
                "reputation": rep.get("score"),
                "reputation_jobs": int(rep.get("jobs") or 0),
                "replicas": sorted(entry.replicas_seen),
                "updated_at": entry.updated_at,
            }
        )

    def agent_row(self, agent_id: str) -> AgentRow | None:
        entry = self.registry.get(agent_id)
        return self._row(entry) if entry else None

    def agent_rows(self) -> list[AgentRow]:
        return sorted((self._row(e) for e in self.registry.live()), key=lambda r: r.agent_id)

    def agent_detail(self, agent_id: str) -> AgentDetail:
        entry = self.registry.get(agent_id)
        if entry is None or entry.vcv is None:
            raise ConsoleError(404, f"no agent {agent_id!r} on this federation: it never published a VCV or has left")
        data = entry.vcv.model_dump(mode="json")
        dims = {"capability": entry.vcv.dim, "spec_embedding": len(entry.vcv.spec_array())}
        vcv = {k: v for k, v in data.items() if k not in VECTOR_FIELDS}
        return AgentDetail(row=self._row(entry), vcv=vcv, dims=dims)

    def capability_map(self) -> CapabilityMap:
        """The live agents' capability vectors on their first two principal components (`pca_2d`),
        recomputed per request: the page asks again, debounced, whenever an agent changes."""
        entries = [e for e in self.registry.live() if e.vcv is not None]
        entries.sort(key=lambda e: e.vcv.agent_id if e.vcv else "")
        if not entries:
            return CapabilityMap(points=[], note="no agents yet")
        dims = {e.vcv.dim for e in entries if e.vcv}
        if len(dims) > 1:
            dim = max(dims, key=lambda d: sum(1 for e in entries if e.vcv and e.vcv.dim == d))
            entries = [e for e in entries if e.vcv and e.vcv.dim == dim]
        matrix = np.stack([e.vcv.capability_array() for e in entries if e.vcv]).astype(np.float64)
        centred = matrix - matrix.mean(axis=0)
        xy, explained = pca_2d(centred)
        points = []
        for entry, (x, y) in zip(entries, xy, strict=True):
            row = self._row(entry)
            points.append(MapPoint(agent_id=row.agent_id, name=row.name, status=row.status, reputation=row.reputation,
                                   x=round(float(x), 5), y=round(float(y), 5)))
        note = None if len(dims) <= 1 else f"agents with other embedding sizes than {matrix.shape[1]} are left out"
        return CapabilityMap(points=points, explained=explained, dim=int(matrix.shape[1]), note=note)

    # ---- routing --------------------------------------------------------------------------

    async def router_status(self) -> dict[str, Any]:
        """One router replica's status (the abstention in force and its provenance, learning)."""
        client = RouterClient(self._need_bus(), timeout=self.settings.request_timeout_s)
        try:
            status = await client.status()
        except BusError as exc:  # RemoteError, RequestTimeout (no router)
            raise ConsoleError(
                502, f"the router could not answer: {exc}; is `foa router` (or `foa up`) running?"
            ) from None
        return status.model_dump(mode="json")

    async def route(self, request: RouteRequest) -> RouteView:
        """The router's ranking, plus the agents its gates removed: a second, ungated query names
        the agents that would have ranked, and their VCVs and matches say which gate each failed."""
        if not request.text.strip():
            raise ConsoleError(422, "the task is empty: describe the work to route, e.g. 'summarise a contract'")
        try:
            query = RouteQuery(text=request.text, top_k=request.top_k, policies=request.policies, skills=request.skills,
                               max_cost=request.max_cost, deadline_ms=request.deadline_ms, abstain=request.abstain)
        except ValueError as exc:
            raise ConsoleError(422, f"bad route query: {exc}") from None
        client = RouterClient(self._need_bus(), timeout=self.settings.request_timeout_s)
        started = time.perf_counter()
        try:
            response = await client.route(query)
            gated: list[Gated] = []
            if query.policies or query.skills or query.max_cost is not None or query.deadline_ms is not None:
                open_query = query.model_copy(
                    update={"policies": [], "skills": [], "max_cost": None, "deadline_ms": None, "abstain": False}
                )
                ungated = await client.route(open_query)
                gated = self._gated(query, response.model_dump(mode="json"), ungated.model_dump(mode="json"))
        except BusError as exc:  # RemoteError (the router refused), RequestTimeout (no router)
            raise ConsoleError(502, f"the router could not answer: {exc}") from None
        return RouteView(response=response.model_dump(mode="json"), gated=gated,
                         elapsed_ms=round((time.perf_counter() - started) * 1000, 2))

    def _gated(self, query: RouteQuery, response: dict[str, Any], ungated: dict[str, Any]) -> list[Gated]:
        ranked = {m["agent_id"] for m in response.get("matches", [])}
        out = []
        for match in ungated.get("matches", []):
            if match["agent_id"] in ranked:
                continue
            entry = self.registry.get(match["agent_id"])
            reasons = []
            if entry and entry.vcv:
                missing = sorted({p.strip().lower() for p in query.policies} - set(entry.vcv.policies))
                if missing:
                    reasons.append(f"policy: lacks {', '.join(missing)}")
                if query.skills and not entry.vcv.has_skills(query.skills):
                    reasons.append(f"skills: lacks some of {', '.join(query.skills)}")
            if query.max_cost is not None and match.get("expected_cost", 0) > query.max_cost:
                reasons.append(f"budget: expected cost {match['expected_cost']:.4g} > {query.max_cost:.4g}")
            if query.deadline_ms is not None and match.get("expected_latency_ms", 0) > query.deadline_ms:
                latency = match["expected_latency_ms"]
                reasons.append(f"deadline: expected latency {latency:.0f} ms > {query.deadline_ms:.0f} ms")
            if response.get("abstained") and not reasons:
                continue  # not gated: the whole query abstained
            out.append(Gated(agent_id=match["agent_id"], score_without_gate=float(match.get("score", 0.0)),
                             reasons=reasons or ["ranked below the gated top k"]))
        return out

    # ---- jobs -----------------------------------------------------------------------------

    def _on_submit(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        record = self.jobs.on_submit(msg.envelope.body.model_dump(mode="json"))
        self.events.publish("job", record.summary().model_dump())

    def _on_job_event(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        record = self.jobs.on_event(msg.envelope.body.model_dump(mode="json"))
        self.events.publish("job", record.summary().model_dump())

    def _on_job_result(self, msg: Incoming) -> None:
        if msg.envelope is None:  # a cleared retained result
            return
        result = msg.envelope.body.model_dump(mode="json")
        if msg.topic != topics.job_result(str(result.get("job_id"))):  # a result on another job's topic
            self.rejected += 1
            log.warning("job result on another job's topic ignored", extra={"topic": msg.topic})
            return
        record = self.jobs.on_result(result, at=msg.envelope.sent_at if msg.retain else None)
        self.events.publish("job", record.summary().model_dump())

    async def job(self, job_id: str) -> JobDetail:
        """A job's page data; a job this console has not heard of is looked up on its retained result."""
        try:
            topics.validate_id(job_id, "job id")
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        record = self.jobs.get(job_id)
        if record is None:
            record = await self._retained_result(job_id)
        if record is None:
            raise ConsoleError(404, f"no job {job_id!r}: this console has not seen it and the broker holds no "
                                    "result for it (results expire); check the id, or `foa job show` where the "
                                    "orchestrator runs")
        return self.jobs.detail(record)

    async def _retained_result(self, job_id: str) -> JobRecord | None:
        bus = self._need_bus()
        got = asyncio.Event()

        def on_result(msg: Incoming) -> None:
            if msg.envelope is not None:
                self.jobs.on_result(msg.envelope.body.model_dump(mode="json"), at=msg.envelope.sent_at)
                got.set()

        topic = topics.job_result(job_id)
        await bus.subscribe(topic, on_result, body_types=JobResult, accept_empty=True)
        try:
            with contextlib.suppress(TimeoutError):
                await wait_within(got.wait(), self.retained_lookup_s)
        finally:
            await bus.unsubscribe(topic)
        return self.jobs.get(job_id)

    def _require_submit(self) -> None:
        if not self.allow_submit:
            raise ConsoleError(403, "this console is read-only: start it with `foa ui --allow-submit` "
                                    "to submit and cancel jobs")

    async def submit(self, request: SubmitRequest) -> str:
        self._require_submit()
        if not request.question.strip():
            raise ConsoleError(422, "the question is empty: type what the federation should answer")
        try:
            options = JobOptions.model_validate(request.options)
            budget = Budget(max_tokens=request.max_tokens, max_cost=request.max_cost, deadline_s=request.deadline_s)
        except ValueError as exc:
            raise ConsoleError(422, f"bad job options: {exc}") from None
        bus = self._need_bus()
        job_id = new_job_id()
        record = self.jobs.touch(job_id)
        record.question = request.question
        if request.conversation_id:  # the thread shows it before the submission comes back from the broker
            record.submit = {"job_id": job_id, "conversation_id": request.conversation_id}
        self.events.publish("job", record.summary().model_dump())
        self._spawn(self._follow(bus, job_id, request, options, budget), f"ui-job-{job_id}")
        return job_id

    async def _follow(self, bus: Bus, job_id: str, request: SubmitRequest, options: JobOptions, budget: Budget) -> None:
        """Submit and keep re-sending until an orchestrator shows life (the results themselves
        arrive through the console's own subscriptions)."""
        try:
            await submit_and_follow(bus, request.question, job_id=job_id, options=options, budget=budget,
                                    policies=request.policies, conversation_id=request.conversation_id)
        except (JobFailed, BusError) as exc:
            record = self.jobs.touch(job_id)
            if record.result is None:
                record.error = str(exc)
                self.events.publish("job", record.summary().model_dump())

    async def cancel(self, job_id: str) -> None:
        self._require_submit()
        try:
            topics.validate_id(job_id, "job id")
        except ValueError as exc:
            raise ConsoleError(400, str(exc)) from None
        try:
            await cancel_job(self._need_bus(), job_id, reason="canceled from the console")
        except BusError as exc:
            raise ConsoleError(502, f"could not publish the cancel request: {exc}") from None
        record = self.jobs.touch(job_id)
        record.cancel_requested = True
        self.events.publish("job", record.summary().model_dump())
