"""A whole federation in one process: broker, router, orchestrator and agents.

`foa up` and `foa run` use it; so do the end-to-end tests and the benchmarks. Every part talks
over the same MQTT broker exactly as separate processes would (the embedded iotcore broker
unless FOA_BROKER_URL names another), so nothing here is a shortcut around the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from agents.sdk import Agent
from agents.spec import AgentSpec, default_specs_dir, load_specs
from fabric.broker import EmbeddedBroker, Mosquitto, local_broker
from fabric.bus import BrokerAddress, Bus
from fabric.client import submit_and_follow
from fabric.embeddings import Embedder, shared_embedder
from fabric.llm import BackendPool, LLMBackend
from fabric.messages import Budget, JobEvent, JobOptions, JobResult
from fabric.orchestrator.service import OrchestratorService
from fabric.settings import Settings

log = logging.getLogger("foa.federation")

#: builds the backend of one agent; default: backend_for(settings, spec.llm), shared per endpoint
BackendFactory = Callable[[AgentSpec], LLMBackend]


class LocalFederation:
    def __init__(
        self,
        settings: Settings,
        specs: Sequence[AgentSpec] | None = None,
        *,
        backend_factory: BackendFactory | None = None,
        embedder: Embedder | None = None,
        with_router: bool = True,
        with_orchestrator: bool = True,
        resume_jobs: bool = True,
    ) -> None:
        self.settings = settings
        self.specs = list(specs) if specs is not None else load_specs(default_specs_dir())
        self._backend_factory = backend_factory
        self._embedder = embedder
        self.with_router = with_router
        self.with_orchestrator = with_orchestrator
        self.resume_jobs = resume_jobs
        self.broker: EmbeddedBroker | Mosquitto | None = None
        self.address: BrokerAddress | None = None
        self.agents: list[Agent] = []
        self.gateways: list[Any] = []  # A2A / MCP gateways of `a2a:` / `mcp:` specs
        self.orchestrator: OrchestratorService | None = None
        self.router: Any = None
        self._buses: list[Bus] = []
        self._client: Bus | None = None
        self._backends = BackendPool(settings)

    async def __aenter__(self) -> LocalFederation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def embedder(self) -> Embedder:
        assert self._embedder is not None
        return self._embedder

    def _backend(self, spec: AgentSpec) -> LLMBackend:
        if self._backend_factory is not None:
            return self._backend_factory(spec)
        return self._backends.get(spec.llm)

    async def start(self) -> None:
        from agents.worker import make_worker

        if self._embedder is None:
            self._embedder = await asyncio.to_thread(
                shared_embedder, self.settings.embedding_model, self.settings.embedding_dim, self.settings.embedding_device
            )
        if self.settings.broker_url:
            self.address = BrokerAddress.parse(self.settings.broker_url)
        else:
            self.broker = local_broker(self.settings)
            self.broker.start()
            self.address = self.broker.address
        log.info("federation broker", extra={"url": self.address.url})
        if self.with_router:
            from fabric.security import VcvGate
            from router.service import RouterService

            bus = await self._bus("router", persistent=False)  # nothing to keep: queries are retried
            self.router = RouterService(self.settings, bus, self.embedder, verify_vcv=VcvGate.from_settings(self.settings).check)
            await self.router.start()
        native = [spec for spec in self.specs if spec.a2a is None and spec.mcp is None]
        self.agents = [
            make_worker(spec, self.settings, backend=self._backend(spec), broker=self.address, embedder=self.embedder, replica_id="local")
            for spec in native
        ]
        await asyncio.gather(*(agent.start() for agent in self.agents))
        if len(native) < len(self.specs):  # `a2a:` / `mcp:` specs join through gateways (fabric/interop)
            from fabric.interop.runner import start_gateways

            self.gateways = await start_gateways(self.specs, self.settings, broker=self.address, embedder=self.embedder,
                                                 backend=self._backends.get())  # fmt: skip
        if self.with_orchestrator:
            bus = await self._bus("orchestrator", client_id=f"orchestrator-{self.settings.instance_id}")
            self.orchestrator = OrchestratorService(self.settings, bus, self.embedder, resume=self.resume_jobs)
            await self.orchestrator.start()

    async def _bus(self, role: str, *, persistent: bool = True, client_id: str | None = None) -> Bus:
        bus = Bus(self.settings, client_id or f"{role}-{uuid.uuid4().hex[:8]}", broker=self.address, persistent=persistent)
        await bus.connect()
        self._buses.append(bus)
        return bus

    async def client(self) -> Bus:
        if self._client is None:
            self._client = Bus(self.settings, f"client-{uuid.uuid4().hex[:8]}", broker=self.address, persistent=False)
            await self._client.connect()
        return self._client

    async def run_job(
        self,
        question: str,
        options: JobOptions | None = None,
        *,
        budget: Budget | None = None,
        policies: list[str] | None = None,
        job_id: str | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
        timeout: float = 900.0,
    ) -> JobResult:
        bus = await self.client()
        return await submit_and_follow(
            bus, question, job_id=job_id, options=options, budget=budget, policies=policies, on_event=on_event, timeout=timeout
        )

    async def stop(self) -> None:
        if self.orchestrator is not None:
            for task in list(self.orchestrator.running.values()):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.orchestrator.ports.close()  # pending reputation scores
        if self.gateways:
            from fabric.interop.runner import stop_gateways

            await stop_gateways(self.gateways)
        for agent in self.agents:
            with contextlib.suppress(Exception):
                await agent.stop()
        for bus in [*self._buses, *([self._client] if self._client else [])]:
            with contextlib.suppress(Exception):
                await bus.close()
        if self.orchestrator is not None:
            self.orchestrator.store.close()
        await self._backends.aclose()
        if self.broker is not None:
            self.broker.stop()
