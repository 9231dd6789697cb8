"""A multiplexed agent host: many lightweight agents behind ONE broker connection.

One `Agent` per process (agents/sdk.py) costs a process, a connection and an embedding model
each, which is right for an LLM worker and wrong for thousands of small agents (tools, rule
engines, per-tenant wrappers). An `AgentHost` serves any number of them from one process:

    host = AgentHost(settings, "tools-1")
    calc = host.add(AgentSpec(id="calc", description="evaluates arithmetic expressions"))

    @calc.handler
    async def draft(task: DraftInput) -> DraftOutput:
        return DraftOutput(answer=str(evaluate(task.subtask)))

    await host.run()

Every hosted agent is a full federation member with its own identity on the bus: its own
retained VCV on `foa/agents/{id}/vcv` (versions continue from the broker's retained copy, as in
the SDK), its own retained `online` status, and its own inbox, served through the shared
subscription `$share/agent/foa/agents/{id}/tasks`, so the same agent can be hosted by several
hosts (replicas) and a task goes to one of them. Task handling is the SDK's `TaskServer`
(agents/server.py), which `Agent` uses too: typed handlers, de-duplication of re-sent task ids,
deadlines, concurrency slots, errors as answers.

What differs from one-agent-per-process:
- registration is batched: descriptions are embedded in one batch (or VCVs come precomputed,
  `add(spec, vcv=...)`), and VCVs, statuses and subscriptions are sent with bounded
  concurrency instead of one round trip each;
- MQTT has one last-will per connection, so a crash marks only the host offline
  (`foa/agents/{host_id}/status`); its agents' statuses stay `online` until the host comes back
  with the same `host_id` (it takes over its broker session, and the tasks queued there are
  served) or stops cleanly (each agent publishes `offline`). Run hosts under a supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Literal, TypeVar

from agents.sdk import content_hash, vcv_with_vectors, view_texts
from agents.server import ServesTasks, Signer, TaskHandler, TaskServer
from agents.spec import AgentSpec
from fabric import topics
from fabric.bus import BrokerAddress, Bus, Incoming, Will
from fabric.embeddings import Embedder
from fabric.envelope import make
from fabric.messages import AgentStatus
from fabric.settings import Settings
from fabric.vcv import VCV

log = logging.getLogger("foa.host")

T = TypeVar("T")


class HostedAgent(ServesTasks):
    """One agent of an `AgentHost`: its own `TaskServer` on the host's shared connection.

    Register handlers exactly as on an `Agent` (`@agent.handler`, `add_handler`). Lifecycle
    belongs to the host: `stop()` takes just this agent offline.
    """

    def __init__(self, host: AgentHost, spec: AgentSpec, vcv: VCV | None = None, signer: Signer | None = None) -> None:
        self.host = host
        self.spec = spec
        self.prebuilt = vcv
        self.vcv: VCV | None = None
        self.tasks = TaskServer(spec.id, host.host_id, max_concurrency=spec.resources.max_concurrency, signer=signer)

    async def stop(self) -> None:
        """Take this one agent offline (the host and its other agents keep running)."""
        await self.host.remove(self.agent_id)

    async def update(self, **changes: Any) -> VCV:
        """Change this agent's spec, bump its version, republish (as `Agent.update`)."""
        return await self.host.update(self.agent_id, **changes)


class AgentHost:
    """Many agents, one connection, one embedding model. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        host_id: str,
        *,
        broker: BrokerAddress | None = None,
        embedder: Embedder | None = None,
        concurrency: int = 512,
    ) -> None:
        self.settings = settings
        self.host_id = topics.validate_id(host_id, "host_id")
        self.broker = broker
        self._embedder = embedder
        self.concurrency = concurrency
        self.agents: dict[str, HostedAgent] = {}
        self.bus: Bus | None = None
        self.timings: dict[str, float] = {}
        self._stopped = asyncio.Event()

    # ---- building the population ---------------------------------------------------------

    def add(self, spec: AgentSpec, *, vcv: VCV | None = None, signer: Signer | None = None) -> HostedAgent:
        """Host one more agent. `vcv` (optional) is a ready VCV for it, e.g. with a precomputed
        embedding; otherwise it is built from the spec at `start()` (descriptions in one batch).
        `signer` signs each version before it is published (see fabric/security.py)."""
        if self.bus is not None:
            raise RuntimeError("add agents before start(), or use add_live()")
        return self._new(spec, vcv, signer)

    def _new(self, spec: AgentSpec, vcv: VCV | None, signer: Signer | None = None) -> HostedAgent:
        if spec.id in self.agents:
            raise ValueError(f"agent {spec.id!r} is already hosted by {self.host_id}")
        if vcv is not None and vcv.agent_id != spec.id:
            raise ValueError(f"VCV of {vcv.agent_id!r} given for agent {spec.id!r}")
        agent = HostedAgent(self, spec, vcv, signer)
        self.agents[spec.id] = agent
        return agent

    async def add_live(
        self, spec: AgentSpec, *, vcv: VCV | None = None, handlers: dict[str, TaskHandler] | None = None
    ) -> HostedAgent:
        """Host one more agent while the host runs: registered at once."""
        if self.bus is None:
            raise RuntimeError("the host is not started; use add()")
        agent = self._new(spec, vcv)
        for kind, fn in (handlers or {}).items():
            agent.add_handler(kind, fn)
        await asyncio.to_thread(self._vcvs, [agent])
        await self._register([agent], retained={})
        return agent

    def _vcvs(self, agents: Sequence[HostedAgent]) -> list[VCV]:
        """The agents' VCVs: the precomputed ones, the rest embedded in one batch."""
        todo = [a for a in agents if a.prebuilt is None]
        if todo:
            embedder = self._embedder or Embedder.from_settings(self.settings)
            texts = [[a.spec.description, a.spec.spec_text, *view_texts(a.spec)] for a in todo]
            vecs = embedder.embed([t for group in texts for t in group])
            at = 0
            for agent, group in zip(todo, texts, strict=True):
                mine = vecs[at : at + len(group)]
                at += len(group)
                agent.prebuilt = vcv_with_vectors(
                    agent.spec, mine[0].tolist(), mine[1].tolist(), embedder.model_name,
                    views=[v.tolist() for v in mine[2:]],
                )
        return [a.prebuilt for a in agents if a.prebuilt is not None]

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once, then register every agent: VCV, `online`, inbox subscription."""
        started = time.perf_counter()
        offline = make(
            AgentStatus(agent_id=self.host_id, status="offline", replica_id=self.host_id), sender=self.host_id
        )
        self.bus = Bus(
            self.settings, f"host-{self.host_id}", broker=self.broker,
            will=Will(topics.agent_status(self.host_id), offline.to_json(), qos=1, retain=True),
        )  # fmt: skip
        await self.bus.connect()
        await asyncio.to_thread(self._vcvs, list(self.agents.values()))
        self.timings["build_s"] = time.perf_counter() - started
        retained = await self._retained_versions()
        await self._register(list(self.agents.values()), retained)
        await self._publish_status(self.host_id, "online")
        self.timings["start_s"] = time.perf_counter() - started
        log.info(
            "agent host online",
            extra={"host_id": self.host_id, "agents": len(self.agents), "seconds": round(self.timings["start_s"], 2)},
        )

    async def _retained_versions(self, quiet_s: float = 0.5, max_s: float = 30.0) -> dict[str, VCV]:
        """The VCVs the broker retains for our agents (from an earlier run or another host)."""
        assert self.bus is not None
        found: dict[str, VCV] = {}
        last = [time.monotonic()]

        def on_vcv(msg: Incoming) -> None:
            last[0] = time.monotonic()
            agent_id = topics.agent_id_of(msg.topic)
            if msg.envelope is not None and agent_id in self.agents:
                found[agent_id] = msg.envelope.body

        await self.bus.subscribe(topics.AGENT_VCV_WILDCARD, on_vcv, body_types=VCV, accept_empty=True)
        deadline = time.monotonic() + max_s
        try:
            while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:
                await asyncio.sleep(quiet_s / 5)
        finally:
            await self.bus.unsubscribe(topics.AGENT_VCV_WILDCARD)
        return found

    async def _register(self, agents: Sequence[HostedAgent], retained: dict[str, VCV]) -> None:
        assert self.bus is not None
        bus = self.bus
        t0 = time.perf_counter()

        async def vcv(agent: HostedAgent) -> None:
            await self._publish_vcv(agent, retained.get(agent.agent_id))

        async def online(agent: HostedAgent) -> None:
            await self._publish_status(agent.agent_id, "online")

        async def inbox(agent: HostedAgent) -> None:
            await agent.tasks.serve(bus)

        await bounded(self.concurrency, (vcv(a) for a in agents))
        self.timings["vcvs_s"] = time.perf_counter() - t0
        await bounded(self.concurrency, (online(a) for a in agents))
        self.timings["status_s"] = time.perf_counter() - t0 - self.timings["vcvs_s"]
        t1 = time.perf_counter()
        await bounded(self.concurrency, (inbox(a) for a in agents))
        self.timings["inboxes_s"] = time.perf_counter() - t1

    async def _publish_vcv(self, agent: HostedAgent, current: VCV | None) -> None:
        """Sign and publish `agent.prebuilt`, versioned after `current` (bumped only on a change)."""
        assert self.bus is not None
        fresh = agent.prebuilt
        assert fresh is not None  # _vcvs ran
        if current is None:
            version = 1
        elif content_hash(current) == content_hash(fresh):
            version = current.version
        else:
            version = current.version + 1
        unsigned = fresh.model_copy(update={"version": version, "public_key": None, "signature": None})
        agent.vcv = agent.tasks.sign(unsigned)
        envelope = make(agent.vcv, sender=self.bus.client_id)
        await self.bus.publish(topics.agent_vcv(agent.agent_id), envelope, retain=True)

    async def update(self, agent_id: str, **changes: Any) -> VCV:
        """Change a hosted agent's spec (description, skills, ...), bump its version, republish."""
        agent = self.agents.get(agent_id)
        if agent is None or self.bus is None:
            raise RuntimeError(f"agent {agent_id!r} is not hosted by a running host")
        agent.spec = agent.spec.model_copy(update=changes)
        agent.prebuilt = None
        await asyncio.to_thread(self._vcvs, [agent])
        await self._publish_vcv(agent, agent.vcv)
        assert agent.vcv is not None
        return agent.vcv

    async def _publish_status(self, agent_id: str, status: Literal["online", "offline"]) -> None:
        assert self.bus is not None
        body = AgentStatus(agent_id=agent_id, status=status, replica_id=self.host_id)
        await self.bus.publish(topics.agent_status(agent_id), make(body, sender=self.bus.client_id), retain=True)

    async def remove(self, agent_id: str, *, leave: bool = False) -> None:
        """Stop hosting one agent: unsubscribe its inbox, `offline` (and clear its VCV if `leave`)."""
        agent = self.agents.pop(agent_id, None)
        if agent is None or self.bus is None:
            return
        await agent.tasks.close()
        if leave:
            await self.bus.publish(topics.agent_vcv(agent_id), None, retain=True)
        await self._publish_status(agent_id, "offline")

    async def run(self) -> None:
        """Start and serve until cancelled or `stop()`."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    async def stop(self, *, leave: bool = False) -> None:
        """Every agent `offline` (and its VCV cleared with `leave`), then disconnect cleanly."""
        self._stopped.set()
        if self.bus is None:
            return
        bus = self.bus
        if bus.connected:
            try:
                ids = list(self.agents)
                if leave:
                    await bounded(self.concurrency, (bus.publish(topics.agent_vcv(a), None, retain=True) for a in ids))
                await bounded(self.concurrency, (self._publish_status(a, "offline") for a in ids))
                await self._publish_status(self.host_id, "offline")
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.debug("could not publish offline", exc_info=True)
        self.bus = None
        await bus.close()

    @property
    def served(self) -> int:
        return sum(a.served for a in self.agents.values())


async def bounded(limit: int, coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run awaitables with at most `limit` in flight (10k publishes without flooding the socket)."""
    slots = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[T]) -> T:
        async with slots:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))
