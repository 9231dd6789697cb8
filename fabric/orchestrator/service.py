"""The orchestrator service: consumes jobs from the bus, runs them, publishes events and results.

Jobs arrive on `$share/orchestrators/foa/jobs/submit` (replicas split them) on a durable
subscription: a job is acknowledged once it is recorded in the store, so a crash after that
point is recovered by `resume()` at the next start, and a crash before it by the broker's
redelivery. A job id already in the store is not run again: its stored result is re-published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from fabric import topics
from fabric.bus import Bus, Incoming, RequestTimeout
from fabric.dispatch import dispatch
from fabric.embeddings import Embedder
from fabric.envelope import make
from fabric.heap import freeze_startup_heap
from fabric.messages import (
    AssignQuery,
    AssignResponse,
    ChannelMessage,
    ErrorReply,
    JobEvent,
    JobResult,
    JobSubmit,
    Reputation,
    RouteQuery,
    RouteResponse,
    TaskResult,
)
from fabric.orchestrator.budget import BudgetError, check_feasible
from fabric.orchestrator.engine import JobRunner
from fabric.orchestrator.reputation import ReputationBook
from fabric.orchestrator.store import JobStore
from fabric.metrics import Metrics
from fabric.registry import Registry
from fabric.settings import Settings
from fabric.transports.paho import install_paho_speedups
from fabric.vcv import VCV

log = logging.getLogger("foa.orchestrator")

RESULT_EXPIRY_S = 7 * 24 * 3600
REPUTATION_FLUSH_S = 0.5


class BusPorts:
    """The federation as a job sees it, over MQTT."""

    def __init__(self, bus: Bus, registry: Registry, embedder: Embedder, settings: Settings) -> None:
        self.bus = bus
        self.registry = registry
        self.embedder = embedder
        self.settings = settings
        self._reputation_pending: dict[str, Reputation] = {}
        self._reputation_flusher: asyncio.Task[None] | None = None

    async def route(self, query: RouteQuery) -> RouteResponse:
        return (await self._ask_router(query, RouteResponse)).body

    async def assign(self, query: AssignQuery) -> AssignResponse:
        return (await self._ask_router(query, AssignResponse)).body

    async def _ask_router(self, query: RouteQuery | AssignQuery, expect: type[Any], attempts: int = 3) -> Any:
        """Ask again when no router answered: a query published while the broker restarted can
        reach it before any router re-subscribed (routers hold clean sessions) and be dropped.
        Queries are read-only, so asking twice is harmless."""
        for attempt in range(1, attempts + 1):
            try:
                return await self.bus.request(topics.ROUTER_QUERY, query, expect=expect, what="a router (foa router)")
            except RequestTimeout:
                if attempt == attempts:
                    raise
                log.warning("no router answered; asking again", extra={"attempt": attempt})
        raise AssertionError("unreachable")

    async def call(
        self, agent_id: str, kind: str, payload: BaseModel, *, job_id: str, node_id: str | None, timeout: float,
        max_tokens: int | None, traceparent: str | None = None,
    ) -> TaskResult:
        return await dispatch(
            self.bus, agent_id, kind, payload.model_dump(mode="json"), timeout=timeout, node_id=node_id, job_id=job_id,
            max_tokens=max_tokens, traceparent=traceparent,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    def vcv(self, agent_id: str) -> VCV | None:
        entry = self.registry.get(agent_id)
        return entry.vcv if entry else None

    def live_agents(self) -> list[VCV]:
        return [e.vcv for e in self.registry.live() if e.vcv is not None and e.status != "offline"]

    async def emit(self, event: JobEvent) -> None:
        # QoS 0: progress is best effort (the store keeps every event; `foa job show` reads it),
        # and a job emits ~17 of them, so acknowledgements would be a third of its messages
        await self.bus.publish(topics.job_events(event.job_id), make(event, job_id=event.job_id, sender=self.bus.client_id), qos=0)

    async def channel(self, message: ChannelMessage) -> None:
        await self.bus.publish(topics.cluster_channel(message.cluster_id), make(message, sender=self.bus.client_id), wait=False)

    async def publish_reputation(self, record: Reputation) -> None:
        """Coalesced: the retained topic only needs each agent's latest score, and a busy agent
        is scored by every job it serves. Pending scores go out every `REPUTATION_FLUSH_S`."""
        self._reputation_pending[record.agent_id] = record
        if self._reputation_flusher is None or self._reputation_flusher.done():
            self._reputation_flusher = asyncio.create_task(self._flush_reputation_later(), name="reputation-flush")

    async def _flush_reputation_later(self) -> None:
        await asyncio.sleep(REPUTATION_FLUSH_S)
        await self.flush_reputation()

    async def flush_reputation(self) -> None:
        pending, self._reputation_pending = self._reputation_pending, {}
        for record in pending.values():
            try:
                await self.bus.publish(topics.reputation(record.agent_id), make(record, sender=self.bus.client_id), retain=True, wait=False)
            except Exception:  # noqa: BLE001 - reputation is advisory; the next score goes out
                log.warning("could not publish reputation", extra={"agent_id": record.agent_id})

    async def close(self) -> None:
        """Publish what is still pending (called before the bus closes)."""
        if self._reputation_flusher is not None:
            self._reputation_flusher.cancel()
        await self.flush_reputation()


class OrchestratorService:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        embedder: Embedder,
        store: JobStore | None = None,
        *,
        resume: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.resume_on_start = resume
        self.bus = bus
        self.embedder = embedder
        self.store = store or JobStore(settings.job_store_path)
        self.registry = Registry()
        self.reputation = ReputationBook()
        self.ports = BusPorts(bus, self.registry, embedder, settings)
        self.running: dict[str, asyncio.Task[JobResult]] = {}
        self.completed = 0
        self.failed = 0

    async def start(self) -> None:
        await self.registry.attach(self.bus)
        await self.bus.subscribe(topics.REPUTATION_WILDCARD, self._on_reputation, body_types=Reputation)
        await self.registry.settle(quiet_s=0.2, max_s=3.0)
        if self.resume_on_start:
            await self.resume()
        await self.bus.subscribe(
            topics.shared(topics.SHARE_GROUP_ORCHESTRATOR, topics.JOBS_SUBMIT), self._on_submit, body_types=JobSubmit, durable=True
        )
        log.info("orchestrator ready", extra={"client_id": self.bus.client_id, "agents": len(self.registry.live())})

    async def resume(self) -> None:
        for submit in self.store.unfinished():
            log.info("resuming job", extra={"job_id": submit.job_id})
            self._start_job(submit)

    def _on_reputation(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        self.reputation.load(msg.envelope.body)

    async def _on_submit(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        submit: JobSubmit = msg.envelope.body
        try:
            check_feasible(submit.budget, min_tokens=16)
        except BudgetError as exc:
            await self._reject(msg, submit, str(exc))
            return
        if not self.store.admit(submit, owner=self.bus.client_id):
            stored = self.store.result(submit.job_id)
            log.info("duplicate job submission ignored", extra={"job_id": submit.job_id, "finished": stored is not None})
            if stored is not None:
                await self._publish_result(stored)
            return
        self._start_job(submit, traceparent=msg.envelope.traceparent, fresh=True)

    async def _reject(self, msg: Incoming, submit: JobSubmit, reason: str) -> None:
        result = JobResult(job_id=submit.job_id, status="failed", failure_reason=f"rejected: {reason}")
        if self.store.admit(submit, owner=self.bus.client_id):
            self.store.finish(result)
        await self._publish_result(result)
        if msg.envelope and msg.envelope.reply_to:
            await self.bus.reply(msg.envelope, ErrorReply(code="bad_budget", message=reason))

    def _start_job(self, submit: JobSubmit, traceparent: str | None = None, fresh: bool = False) -> None:
        if submit.job_id in self.running:
            return
        runner = JobRunner(submit, self.ports, self.settings, self.store, self.reputation, traceparent=traceparent, fresh=fresh)
        if self.metrics is not None:
            self.metrics.job_state("running")
        task = asyncio.create_task(self._run(runner), name=f"job-{submit.job_id}")
        self.running[submit.job_id] = task

    async def _run(self, runner: JobRunner) -> JobResult:
        try:
            result = await runner.run()
            if result.status == "completed":
                self.completed += 1
            else:
                self.failed += 1
            if self.metrics is not None:
                self.metrics.job_state(result.status, previous="running")
                self.metrics.llm_usage("all", runner.budget.used)
            await self._publish_result(result)
            return result
        finally:
            self.running.pop(runner.job.job_id, None)

    async def _publish_result(self, result: JobResult) -> None:
        await self.bus.publish(
            topics.job_result(result.job_id), make(result, job_id=result.job_id, sender=self.bus.client_id), retain=True, expiry_s=RESULT_EXPIRY_S
        )

    async def drain(self) -> None:
        if self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)


async def run_orchestrator(settings: Settings, *, broker: Any = None, embedder: Embedder | None = None, stop: asyncio.Event | None = None) -> None:
    from fabric.embeddings import shared_embedder

    install_paho_speedups()
    embedder = embedder or await asyncio.to_thread(shared_embedder, settings.embedding_model, settings.embedding_dim,
                                                   settings.embedding_device, settings.embedding_threads)
    # a stable client id: a restarted orchestrator takes over its own broker session
    from fabric.metrics import metrics_for

    bus = Bus(settings, f"orchestrator-{settings.instance_id}", broker=broker)
    await bus.connect()
    metrics = metrics_for(settings, "orchestrator", bus.client_id)
    metrics.watch_bus(bus)
    service = OrchestratorService(settings, bus, embedder, metrics=metrics)
    beat = asyncio.create_task(metrics.beat_forever())
    try:
        await service.start()
        freeze_startup_heap()
        await (stop or asyncio.Event()).wait()
    finally:
        beat.cancel()
        metrics.stop()
        await service.ports.close()
        await bus.close()
        service.store.close()
