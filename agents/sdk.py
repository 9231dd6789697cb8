"""The agent SDK: define an agent in a few lines, `run()` it, and it joins the federation.

    agent = Agent(AgentSpec(id="echo", description="repeats text"), settings)

    @agent.handler("draft")
    async def draft(task: TaskRequest) -> dict:
        return {"answer": task.input["text"]}

    await agent.run()

What the agent does on the bus:
- publishes its VCV retained on `foa/agents/{id}/vcv`; the version continues from the retained
  VCV on the broker (the broker is the source of truth, so restarts and replicas agree) and is
  bumped only when the content changed;
- publishes `online` retained on `foa/agents/{id}/status` with an `offline` last-will; a replica
  that sees `offline` while it is alive re-asserts `online`, so one replica's death does not take
  the agent out of routing;
- serves `foa/agents/{id}/tasks` through the shared subscription `$share/agent/...`, so replicas
  split the work, acknowledging a task only after its handler answered (a crash redelivers);
- `leave()` clears the retained VCV (the agent left for good).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from fabric import topics
from fabric.bloom import BloomFilter
from fabric.bus import Bus, BrokerAddress, Incoming, Will
from fabric.embeddings import Embedder, shared_embedder
from fabric.envelope import make, trace_id_of
from fabric.messages import AgentStatus, TaskRequest, TaskResult, Usage
from fabric.settings import Settings
from fabric.vcv import VCV
from agents.spec import AgentSpec

log = logging.getLogger("foa.agent")

HandlerResult = dict[str, Any] | BaseModel | tuple[dict[str, Any] | BaseModel, Usage]
TaskHandler = Callable[[TaskRequest], Awaitable[HandlerResult] | HandlerResult]


class TaskFailed(Exception):
    """Raise from a handler to answer with a clear error instead of a traceback."""


def build_vcv(spec: AgentSpec, embedder: Embedder, version: int = 1) -> VCV:
    vecs = embedder.embed([spec.description, spec.spec_text])
    return VCV(
        agent_id=spec.id,
        version=version,
        name=spec.name or spec.id,
        description=spec.description,
        capability=vecs[0].tolist(),
        skills=spec.skills,
        skills_bloom=BloomFilter.of(spec.skills).to_b64(),
        resources=spec.resources,
        policies=spec.policies,
        spec_embedding=vecs[1].tolist(),
        embedding_model=embedder.model_name,
        llm_model=spec.llm.model,
    )


def content_hash(vcv: VCV) -> str:
    """What counts as a change of capabilities: everything but version, time and signature."""
    data = vcv.model_dump_json(exclude={"version", "issued_at", "signature", "public_key"})
    return hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


class Agent:
    def __init__(
        self,
        spec: AgentSpec,
        settings: Settings,
        *,
        broker: BrokerAddress | None = None,
        embedder: Embedder | None = None,
        replica_id: str | None = None,
        signer: Callable[[VCV], VCV] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.replica_id = replica_id or uuid.uuid4().hex[:8]
        self.client_id = f"{spec.id}-{self.replica_id}"
        self._broker = broker
        self._embedder = embedder
        self._signer = signer
        self._handlers: dict[str, TaskHandler] = {}
        self._slots = asyncio.Semaphore(spec.resources.max_concurrency)
        self.bus: Bus | None = None
        self.vcv: VCV | None = None
        self.served = 0
        self.failed = 0
        self._stopped = asyncio.Event()
        # task_id -> result (or a future while running): a re-sent task is answered, not re-run
        self._results: collections.OrderedDict[str, asyncio.Future[TaskResult]] = collections.OrderedDict()
        self._results_kept = 2048

    @property
    def agent_id(self) -> str:
        return self.spec.id

    def handler(self, task_kind: str) -> Callable[[TaskHandler], TaskHandler]:
        """Decorator: serve tasks of `task_kind` with the decorated function."""

        def register(fn: TaskHandler) -> TaskHandler:
            self._handlers[task_kind] = fn
            return fn

        return register

    def add_handler(self, task_kind: str, fn: TaskHandler) -> None:
        self._handlers[task_kind] = fn

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, publish the VCV and `online`, and start serving the inbox."""
        embedder = self._embedder or await asyncio.to_thread(
            shared_embedder, self.settings.embedding_model, self.settings.embedding_dim, self.settings.embedding_device
        )
        offline = make(AgentStatus(agent_id=self.agent_id, status="offline", replica_id=self.replica_id), sender=self.client_id)
        self.bus = Bus(
            self.settings,
            self.client_id,
            broker=self._broker,
            will=Will(topics.agent_status(self.agent_id), offline.to_json(), qos=1, retain=True),
        )
        await self.bus.connect()
        fresh = await asyncio.to_thread(build_vcv, self.spec, embedder)
        await self._publish_vcv(fresh)
        await self._publish_status("online")
        await self.bus.subscribe(topics.agent_status(self.agent_id), self._on_status, body_types=AgentStatus)
        await self.bus.subscribe(
            topics.shared(topics.SHARE_GROUP_AGENT, topics.agent_tasks(self.agent_id)),
            self._on_task,
            body_types=TaskRequest,
            durable=True,
        )
        log.info("agent online", extra={"agent_id": self.agent_id, "replica": self.replica_id, "version": self.vcv and self.vcv.version})

    async def run(self) -> None:
        """Start and serve until cancelled or `stop()`."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Leave temporarily: `offline` (a clean disconnect does not fire the last-will)."""
        self._stopped.set()
        if self.bus is None:
            return
        bus, self.bus = self.bus, None
        if bus.connected:
            try:
                await self._publish_status("offline", bus)
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.debug("could not publish offline", exc_info=True)
        await bus.close()

    async def leave(self) -> None:
        """Leave for good: clear the retained VCV, then go offline."""
        if self.bus is not None:
            await self.bus.publish(topics.agent_vcv(self.agent_id), None, retain=True)
        await self.stop()

    async def update(self, **changes: Any) -> VCV:
        """Change the spec (description, skills, resources, ...), bump the version, republish."""
        self.spec = self.spec.model_copy(update=changes)
        embedder = self._embedder or shared_embedder(self.settings.embedding_model, self.settings.embedding_dim)
        fresh = await asyncio.to_thread(build_vcv, self.spec, embedder)
        await self._publish_vcv(fresh)
        assert self.vcv is not None
        return self.vcv

    # ---- publishing ------------------------------------------------------------------------

    async def _retained_vcv(self) -> VCV | None:
        """The VCV the broker holds for this agent (from an earlier run or another replica)."""
        assert self.bus is not None
        found: asyncio.Future[VCV | None] = asyncio.get_running_loop().create_future()

        def on_vcv(msg: Incoming) -> None:
            if not found.done():
                found.set_result(msg.envelope.body if msg.envelope else None)

        topic = topics.agent_vcv(self.agent_id)
        await self.bus.subscribe(topic, on_vcv, body_types=VCV, accept_empty=True)
        try:
            # the broker sends a retained message right after SUBACK; none within a beat = none held
            return await asyncio.wait_for(found, 0.3)
        except TimeoutError:
            return None
        finally:
            await self.bus.unsubscribe(topic)

    async def _publish_vcv(self, fresh: VCV) -> None:
        assert self.bus is not None
        current = self.vcv or await self._retained_vcv()
        if current is not None:
            same = content_hash(current) == content_hash(fresh)
            version = current.version if same else current.version + 1
        else:
            version = 1
        vcv = fresh.model_copy(update={"version": version})
        if self._signer is not None:
            vcv = self._signer(vcv)
        self.vcv = vcv
        env = make(vcv, sender=self.client_id)
        await self.bus.publish(topics.agent_vcv(self.agent_id), env, retain=True)

    async def _publish_status(self, status: str, bus: Bus | None = None) -> None:
        bus = bus or self.bus
        assert bus is not None
        body = AgentStatus(agent_id=self.agent_id, status=status, replica_id=self.replica_id)  # type: ignore[arg-type]
        await bus.publish(topics.agent_status(self.agent_id), make(body, sender=self.client_id), retain=True)

    async def _on_status(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        status: AgentStatus = msg.envelope.body
        if status.status == "offline" and status.replica_id != self.replica_id and not self._stopped.is_set():
            log.info("another replica went offline; re-asserting online", extra={"agent_id": self.agent_id})
            await self._publish_status("online")

    # ---- serving ---------------------------------------------------------------------------

    async def _on_task(self, msg: Incoming) -> None:
        assert msg.envelope is not None and self.bus is not None
        env = msg.envelope
        task: TaskRequest = env.body
        if task.deadline_at is not None and time.time() > task.deadline_at:
            log.warning("dropping expired task", extra={"agent_id": self.agent_id, "task_id": task.task_id})
            await self._answer(env, TaskResult(task_id=task.task_id, agent_id=self.agent_id, ok=False, error="deadline passed before the task started"))
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
            log.debug("task", extra={"agent_id": self.agent_id, "task_id": task.task_id, "kind": task.task_kind,
                                     "job_id": env.job_id, "trace_id": trace_id_of(env.traceparent)})
            result = await self._execute(task)
        fut.set_result(result)
        await self._answer(env, result)

    async def _execute(self, task: TaskRequest) -> TaskResult:
        started = time.perf_counter()
        base = {"task_id": task.task_id, "agent_id": self.agent_id, "replica_id": self.replica_id}
        fn = self._handlers.get(task.task_kind)
        if fn is None:
            self.failed += 1
            return TaskResult(**base, ok=False, error=f"agent {self.agent_id} has no handler for task kind {task.task_kind!r}; it serves {sorted(self._handlers)}")
        try:
            out = fn(task)
            if inspect.isawaitable(out):
                out = await out
        except TaskFailed as exc:
            self.failed += 1
            return TaskResult(**base, ok=False, error=str(exc), latency_ms=(time.perf_counter() - started) * 1000)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the agent down
            self.failed += 1
            log.exception("task handler failed", extra={"agent_id": self.agent_id, "task_id": task.task_id})
            return TaskResult(**base, ok=False, error=f"{type(exc).__name__}: {exc}", latency_ms=(time.perf_counter() - started) * 1000)
        usage = Usage()
        if isinstance(out, tuple):
            out, usage = out
        output = out.model_dump(mode="json") if isinstance(out, BaseModel) else dict(out)
        self.served += 1
        return TaskResult(**base, ok=True, output=output, usage=usage, latency_ms=(time.perf_counter() - started) * 1000)

    async def _answer(self, request: Any, result: TaskResult) -> None:
        assert self.bus is not None
        if request.reply_to:
            await self.bus.reply(request, result)
