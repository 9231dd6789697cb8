"""The agent SDK: define an agent in a few lines, `run()` it, and it joins the federation.

    agent = Agent(AgentSpec(id="echo", description="repeats text"), settings)

    @agent.handler                          # the kind (draft) comes from the input model
    async def draft(task: DraftInput) -> DraftOutput:
        return DraftOutput(answer=task.subtask)

    await agent.run()

Handlers, their validation and the inbox are the `TaskServer`'s (agents/server.py), which
`AgentHost` shares; `@agent.handler("my-kind")` serves an agent's own kind with dict in and out.

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
import hashlib
import logging
import uuid
from typing import Any, Literal

from agents.server import HandlerResult, ServesTasks, Signer, TaskFailed, TaskHandler, TaskServer
from agents.spec import AgentSpec
from fabric import topics
from fabric.aio import wait_within
from fabric.bloom import BloomFilter
from fabric.bus import BrokerAddress, Bus, Incoming, Will
from fabric.embeddings import Embedder
from fabric.envelope import make
from fabric.messages import AgentStatus
from fabric.settings import Settings
from fabric.vcv import MAX_VIEWS, VCV

__all__ = ["Agent", "HandlerResult", "TaskFailed", "TaskHandler", "TaskServer", "build_vcv", "content_hash"]

log = logging.getLogger("foa.agent")


def view_texts(spec: AgentSpec) -> list[str]:
    """The texts embedded as the agent's views: its examples (a gateway fills them from skill
    examples or tool docs), at most MAX_VIEWS; router/scoring.py fuses the best one into α's
    similarity. Skills alone are not templated into views: the lexical factor already reads them,
    and every view adds 2 KB to the VCV on the wire."""
    texts = [t.strip() for t in spec.examples if t.strip()]
    return list(dict.fromkeys(texts))[:MAX_VIEWS]


def build_vcv(spec: AgentSpec, embedder: Embedder, version: int = 1) -> VCV:
    views = view_texts(spec)
    vecs = embedder.embed([spec.description, spec.spec_text, *views])
    return vcv_with_vectors(
        spec, vecs[0].tolist(), vecs[1].tolist(), embedder.model_name, version, views=[v.tolist() for v in vecs[2:]]
    )


def vcv_with_vectors(
    spec: AgentSpec,
    capability: list[float],
    spec_embedding: list[float],
    embedding_model: str,
    version: int = 1,
    *,
    views: list[list[float]] | None = None,
) -> VCV:
    """A VCV from a spec and ready embeddings (the agent host embeds many specs in one batch);
    `views`: the embeddings of `view_texts(spec)`, in order."""
    views = views or []
    return VCV(
        agent_id=spec.id,
        version=version,
        name=spec.name or spec.id,
        description=spec.description,
        capability=capability,
        skills=spec.skills,
        skills_bloom=BloomFilter.of(spec.skills).to_b64(),
        resources=spec.resources,
        policies=spec.policies,
        spec_embedding=spec_embedding,
        embedding_model=embedding_model,
        llm_model=spec.llm.model,
        tags=spec.tags,
        examples=view_texts(spec)[: len(views)],
        views=views,
    )


def content_hash(vcv: VCV) -> str:
    """What counts as a change of capabilities: everything but version, time and signature."""
    data = vcv.model_dump_json(exclude={"version", "issued_at", "signature", "public_key"})
    return hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


class Agent(ServesTasks):
    def __init__(
        self,
        spec: AgentSpec,
        settings: Settings,
        *,
        broker: BrokerAddress | None = None,
        embedder: Embedder | None = None,
        replica_id: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.replica_id = replica_id or uuid.uuid4().hex[:8]
        self.client_id = f"{spec.id}-{self.replica_id}"
        self._broker = broker
        self._embedder = embedder
        self.tasks = TaskServer(spec.id, self.replica_id, max_concurrency=spec.resources.max_concurrency, signer=signer)
        self.bus: Bus | None = None
        self.vcv: VCV | None = None
        self._stopped = asyncio.Event()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def wait_stopped(self) -> None:
        """Return once `stop()` was called (how a worker process waits for its signal)."""
        await self._stopped.wait()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, publish the VCV and `online`, and start serving the inbox."""
        embedder = self._embedder
        if embedder is None:
            embedder = await asyncio.to_thread(Embedder.from_settings, self.settings)
        offline = make(
            AgentStatus(agent_id=self.agent_id, status="offline", replica_id=self.replica_id), sender=self.client_id
        )
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
        await self.tasks.serve(self.bus)
        log.info(
            "agent online",
            extra={"agent_id": self.agent_id, "replica": self.replica_id, "version": self.vcv and self.vcv.version},
        )

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
        self.tasks.bus = None
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
        embedder = self._embedder or Embedder.from_settings(self.settings)
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
            return await wait_within(found, 0.3)
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
        vcv = self.tasks.sign(fresh.model_copy(update={"version": version}))
        self.vcv = vcv
        env = make(vcv, sender=self.client_id)
        await self.bus.publish(topics.agent_vcv(self.agent_id), env, retain=True)

    async def _publish_status(self, status: Literal["online", "offline"], bus: Bus | None = None) -> None:
        bus = bus or self.bus
        assert bus is not None
        body = AgentStatus(agent_id=self.agent_id, status=status, replica_id=self.replica_id)
        await bus.publish(topics.agent_status(self.agent_id), make(body, sender=self.client_id), retain=True)

    async def _on_status(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        status: AgentStatus = msg.envelope.body
        if status.status == "offline" and status.replica_id != self.replica_id and not self._stopped.is_set():
            log.info("another replica went offline; re-asserting online", extra={"agent_id": self.agent_id})
            await self._publish_status("online")
