"""The orchestrator service: consumes jobs from the bus, runs them, publishes events and results.

Jobs arrive on `$share/orchestrators/foa/jobs/submit` (replicas split them) on a durable
subscription: a job is acknowledged once it is recorded in the store, so a crash after that
point is recovered by `resume()` at the next start, and a crash before it by the broker's
redelivery. A job id already in the store is not run again: its stored result is re-published.

Cancels arrive on `foa/jobs/+/cancel` (every replica hears them; the one running the job acts):
its pending calls are abandoned and it ends `canceled` with its usage so far. A cancel for a job
not running here is remembered for `CANCEL_MEMORY_S`, so a job whose submission arrives after its
cancel ends `canceled` at once; a cancel for a finished job changes nothing. The subscription is
not durable: a cancel sent while no orchestrator is connected is lost (send it again).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from fabric import topics
from fabric.bus import Bus, Incoming, RequestTimeout
from fabric.dispatch import Answer, dispatch_task
from fabric.embeddings import EmbedBatcher, Embedder
from fabric.envelope import make
from fabric.messages import (
    AssignQuery,
    AssignResponse,
    ChannelMessage,
    ErrorReply,
    JobCancel,
    JobEvent,
    JobResult,
    JobSubmit,
    NodeOutcome,
    Reputation,
    RouteQuery,
    RouteResponse,
)
from fabric.metrics import Metrics
from fabric.orchestrator.budget import BudgetError, check_feasible
from fabric.orchestrator.engine import JobRunner
from fabric.orchestrator.leases import LeaseKeeper
from fabric.orchestrator.reputation import ReputationBook
from fabric.orchestrator.store import ConversationTurn, FencedOut, JobStore, conversation_of, open_store
from fabric.registry import Registry
from fabric.security import orchestrator_key, sign_outcome
from fabric.settings import Settings
from fabric.tasks import InT, OutT, TaskKind
from fabric.vcv import VCV

log = logging.getLogger("foa.orchestrator")

RESULT_EXPIRY_S = 7 * 24 * 3600
REPUTATION_FLUSH_S = 0.5
#: how long a cancel for a job not running here is remembered (a submission re-sent after it still ends canceled)
CANCEL_MEMORY_S = 3600.0
CANCELS_KEPT = 10_000


class BusPorts:
    """The federation as a job sees it, over MQTT."""

    def __init__(self, bus: Bus, registry: Registry, embedder: Embedder, settings: Settings) -> None:
        self.bus = bus
        self.registry = registry
        self.embedder = embedder
        self.batcher = EmbedBatcher(embedder)
        self.settings = settings
        self._reputation_pending: dict[str, Reputation] = {}
        self._reputation_flusher: asyncio.Task[None] | None = None
        self._outcome_key = orchestrator_key(settings)

    async def route(self, query: RouteQuery) -> RouteResponse:
        if query.vector is not None and not query.embedding_model:  # the job embedded it with ours
            query.embedding_model = self.embedder.model_name
        return (await self._ask_router(query, RouteResponse)).body

    async def assign(self, query: AssignQuery) -> AssignResponse:
        if not query.embedding_model and any(s.vector is not None for s in query.subtasks):
            query.embedding_model = self.embedder.model_name
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
        self,
        agent_id: str,
        kind: TaskKind[InT, OutT],
        payload: InT,
        *,
        job_id: str,
        node_id: str | None,
        timeout: float,
        max_tokens: int | None,
        traceparent: str | None = None,
    ) -> Answer[OutT]:
        return await dispatch_task(
            self.bus,
            agent_id,
            kind,
            payload,
            timeout=timeout,
            node_id=node_id,
            job_id=job_id,
            max_tokens=max_tokens,
            traceparent=traceparent,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    async def embed_ahead(self, texts: Sequence[str]) -> np.ndarray:
        """Off the event loop, in one model call with what concurrent jobs and nodes embed at the
        same time; the embedder's cache keeps the vectors for `embed`."""
        return await self.batcher.embed(texts)

    def vcv(self, agent_id: str) -> VCV | None:
        entry = self.registry.get(agent_id)
        return entry.vcv if entry else None

    def live_agents(self) -> list[VCV]:
        return [e.vcv for e in self.registry.live() if e.vcv is not None and e.status != "offline"]

    async def emit(self, event: JobEvent) -> None:
        # QoS 0: progress is best effort (the store keeps every event; `foa job show` reads it),
        # and a job emits ~17 of them, so acknowledgements would be a third of its messages
        await self.bus.publish(
            topics.job_events(event.job_id), make(event, job_id=event.job_id, sender=self.bus.client_id), qos=0
        )

    async def channel(self, message: ChannelMessage) -> None:
        # QoS 0 like progress events: the channel is a live window onto the refinement, nothing
        # reads it back (each turn reached the orchestrator as a task reply); acknowledging its
        # 36 messages per job (4 nodes x 3 agents x k = 3) cost ~1 ms of the job's critical path
        await self.bus.publish(
            topics.cluster_channel(message.cluster_id), make(message, sender=self.bus.client_id), qos=0, wait=False
        )

    async def publish_outcome(self, outcome: NodeOutcome) -> None:
        """QoS 1 without waiting: routers should learn from every node, but a job's result must
        not wait for it. Signed with the orchestrators' key where keys are configured."""
        outcome = outcome.model_copy(update={"embedding_model": self.embedder.model_name})
        if self._outcome_key is not None:
            outcome = sign_outcome(outcome, self._outcome_key)
        await self.bus.publish(
            topics.ROUTER_OUTCOMES, make(outcome, job_id=outcome.job_id, sender=self.bus.client_id), wait=False
        )

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
                await self.bus.publish(
                    topics.reputation(record.agent_id), make(record, sender=self.bus.client_id), retain=True, wait=False
                )
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
        self.store = store or open_store(settings)
        self.registry = Registry()
        self.reputation = ReputationBook()
        self.ports = BusPorts(bus, self.registry, embedder, settings)
        self.running: dict[str, asyncio.Task[JobResult]] = {}
        self.runners: dict[str, JobRunner] = {}
        # jobs taken over by another replica whose task is still unwinding (see `_abandon`)
        self.abandoned: dict[str, asyncio.Task[JobResult]] = {}
        self.completed = 0
        self.failed = 0
        self.canceled = 0
        # job_id -> (reason, when): cancels for jobs not running here (yet)
        self.cancels: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        # leases in the store: renewed while jobs run, expired ones taken over (fabric/orchestrator/leases.py)
        self.leases = LeaseKeeper(
            self.store, bus.client_id, settings, start_job=self._start_job, abandon=self._abandon, takeover=resume
        )

    async def start(self) -> None:
        await self.registry.attach(self.bus)
        await self.bus.subscribe(topics.REPUTATION_WILDCARD, self._on_reputation, body_types=Reputation)
        await self.registry.settle(quiet_s=0.2, max_s=3.0)
        await self.bus.subscribe(topics.JOBS_CANCEL_WILDCARD, self._on_cancel, body_types=JobCancel)
        if self.resume_on_start:
            await self.resume()
        elif self.leases.enabled:
            await self.leases.start()  # renew the leases of jobs this process admits
        await self.bus.subscribe(
            topics.shared(topics.SHARE_GROUP_ORCHESTRATOR, topics.JOBS_SUBMIT),
            self._on_submit,
            body_types=JobSubmit,
            durable=True,
        )
        log.info("orchestrator ready", extra={"client_id": self.bus.client_id, "agents": len(self.registry.live())})

    async def resume(self) -> None:
        if self.leases.enabled:
            await self.leases.start()  # own jobs back at once, others' once their leases expire
            return
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
        cancel = self._cancel_for(submit.job_id)
        if cancel is not None:
            await self._reject(msg, submit, cancel, status="canceled")
            return
        if not self.store.admit(submit, owner=self.bus.client_id):
            stored = self.store.result(submit.job_id)
            log.info(
                "duplicate job submission ignored", extra={"job_id": submit.job_id, "finished": stored is not None}
            )
            if stored is not None:
                await self._publish_result(stored)
            return
        self._start_job(submit, traceparent=msg.envelope.traceparent, fresh=True)

    async def _reject(
        self, msg: Incoming, submit: JobSubmit, reason: str, status: Literal["failed", "canceled"] = "failed"
    ) -> None:
        conversation = conversation_of(submit)
        if status == "canceled":
            result = JobResult(
                job_id=submit.job_id, status="canceled", failure_reason=reason, conversation_id=conversation
            )
        else:
            result = JobResult(
                job_id=submit.job_id,
                status="failed",
                failure_reason=f"rejected: {reason}",
                conversation_id=conversation,
            )
        if self.store.admit(submit, owner=self.bus.client_id):
            self.store.finish(result)
        await self._publish_result(result)
        if status == "failed" and msg.envelope and msg.envelope.reply_to:
            await self.bus.reply(msg.envelope, ErrorReply(code="bad_budget", message=reason))

    async def _on_cancel(self, msg: Incoming) -> None:
        """Cancel the job if it runs here; otherwise remember the cancel (see the module docstring)."""
        assert msg.envelope is not None
        cancel: JobCancel = msg.envelope.body
        if msg.topic != topics.job_cancel(cancel.job_id):
            log.warning(
                "cancel ignored: its job id does not match its topic",
                extra={"topic": msg.topic, "job_id": cancel.job_id},
            )
            return
        reason = cancel.reason or "canceled by request"
        runner, task = self.runners.get(cancel.job_id), self.running.get(cancel.job_id)
        if runner is not None and task is not None:
            if runner.cancel(reason):
                log.info("canceling job", extra={"job_id": cancel.job_id, "reason": reason})
                task.cancel()
            else:
                log.info("cancel ignored: the job is already ending", extra={"job_id": cancel.job_id})
            return
        if self.store.result(cancel.job_id) is not None:
            log.info("cancel for a finished job ignored", extra={"job_id": cancel.job_id})
            return
        log.info("cancel for a job not running here: remembered", extra={"job_id": cancel.job_id})
        self.cancels[cancel.job_id] = (reason, time.monotonic())
        self.cancels.move_to_end(cancel.job_id)
        while len(self.cancels) > CANCELS_KEPT:
            self.cancels.popitem(last=False)

    def _cancel_for(self, job_id: str) -> str | None:
        """The reason of a remembered, recent cancel for `job_id` (None: not canceled)."""
        while self.cancels and time.monotonic() - next(iter(self.cancels.values()))[1] > CANCEL_MEMORY_S:
            self.cancels.popitem(last=False)
        found = self.cancels.get(job_id)
        return found[0] if found else None

    def _start_job(self, submit: JobSubmit, traceparent: str | None = None, fresh: bool = False) -> None:
        if submit.job_id in self.running:
            return
        unwinding = self.abandoned.get(submit.job_id)
        if unwinding is not None and not unwinding.done():
            # this replica took the job again while its fenced-out runner still unwinds: one
            # runner per job in a process, so the new one starts when the old one has ended
            unwinding.add_done_callback(lambda _: self._start_job(submit, traceparent, fresh))
            return
        runner = JobRunner(
            submit,
            self.ports,
            self.settings,
            self.store,
            self.reputation,
            traceparent=traceparent,
            fresh=fresh,
            history=self._history(submit),
        )
        cancel = self._cancel_for(submit.job_id)
        if cancel is not None:  # canceled while it waited (e.g. before a resume): run() ends it at once
            runner.cancel(cancel)
        if self.metrics is not None:
            self.metrics.job_state("running")
        token = self.store.token(submit.job_id)  # the lease this runner writes under
        task = asyncio.create_task(self._run(runner, token), name=f"job-{submit.job_id}")
        self.running[submit.job_id] = task
        self.runners[submit.job_id] = runner

    def _history(self, submit: JobSubmit) -> list[ConversationTurn]:
        """The recent turns of the conversation a job continues (from the store: a conversation
        outlives the orchestrator that served its earlier turns)."""
        if not submit.conversation_id or self.settings.conversation_turns == 0:
            return []
        try:
            return self.store.turns(
                submit.conversation_id, limit=self.settings.conversation_turns, before=submit.job_id
            )
        except Exception:  # noqa: BLE001 - the job still runs, without its context
            log.exception("could not read the conversation", extra={"job_id": submit.job_id})
            return []

    def _abandon(self, job_id: str) -> None:
        """Another replica took this job over (our lease expired while we were paused or cut off).
        The task is cancelled; until it has unwound it stays in `abandoned`, so that taking the
        job again later starts a new runner after it, not beside it."""
        task = self.running.pop(job_id, None)
        self.runners.pop(job_id, None)
        if task is not None and not task.done():
            self.abandoned[job_id] = task
            task.cancel()

    async def _run(self, runner: JobRunner, token: int | None) -> JobResult:
        try:
            try:
                result = await runner.run()
            except FencedOut:
                log.warning("job abandoned: another replica owns it now", extra={"job_id": runner.job.job_id})
                raise asyncio.CancelledError from None
            if result.status == "completed":
                self.completed += 1
            elif result.status == "canceled":
                self.canceled += 1
            else:
                self.failed += 1
            if self.metrics is not None:
                self.metrics.job_state(result.status, previous="running")
                self.metrics.llm_usage("all", runner.budget.used)
            await self._publish_result(result)
            return result
        finally:
            job_id, task = runner.job.job_id, asyncio.current_task()
            # only this runner's entries: a newer runner of the same job may be registered by now
            if self.running.get(job_id) is task:
                del self.running[job_id]
            if self.runners.get(job_id) is runner:
                del self.runners[job_id]
            if self.abandoned.get(job_id) is task:
                del self.abandoned[job_id]
            self.store.release(job_id, token)  # unfinished (cancelled): free for another replica now

    async def _publish_result(self, result: JobResult) -> None:
        await self.bus.publish(
            topics.job_result(result.job_id),
            make(result, job_id=result.job_id, sender=self.bus.client_id),
            retain=True,
            expiry_s=RESULT_EXPIRY_S,
        )

    async def drain(self) -> None:
        if self.running or self.abandoned:
            await asyncio.gather(*self.running.values(), *self.abandoned.values(), return_exceptions=True)


async def run_orchestrator(
    settings: Settings, *, broker: Any = None, embedder: Embedder | None = None, stop: asyncio.Event | None = None
) -> None:
    """`foa orchestrator`: serve jobs until SIGINT/SIGTERM (or `stop`), then publish what is pending, close."""
    from fabric.service import ServiceRuntime

    client_id = f"orchestrator-{settings.instance_id}"  # stable: a restart takes over its broker session
    async with ServiceRuntime(settings, "orchestrator", instance=client_id, embedder=embedder, stop=stop) as rt:
        embedder = await rt.embedder()
        store = open_store(settings)
        try:
            async with Bus(settings, client_id, broker=broker or rt.broker()) as bus:
                rt.watch_bus(bus)
                service = OrchestratorService(settings, bus, embedder, store, metrics=rt.metrics)
                rt.on_drain(service.ports.close)  # pending reputation goes out while the bus is open
                rt.on_drain(service.leases.stop)  # runs first: no renewals once draining
                await service.start()
                rt.ready()
                await rt.serve()
        finally:
            store.close()
