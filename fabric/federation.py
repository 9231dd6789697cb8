"""A whole federation in one process: broker, router, orchestrator and agents.

`foa up` and `foa run` use it; so do the end-to-end tests and the benchmarks. Every part talks
over the same MQTT broker exactly as separate processes would (a local mosquitto, or iotcore
when mosquitto is not installed, unless FOA_BROKER_URL names another), so nothing here is a
shortcut around the protocol.

Supervised: a federation that starts its own broker owns its data directory (`DataDirLock`: a
second `foa up` there refuses and names the holder's pid), stops brokers a dead run left on it
before starting one (`fabric.broker.reap_orphans`), makes its broker die with it, and restarts
the broker on the same port when it exits; the clients reconnect and resubscribe on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from agents.sdk import Agent
from agents.spec import AgentSpec, default_specs_dir, load_specs
from fabric.broker import LocalBroker, Mosquitto, free_port, local_broker, reap_orphans
from fabric.bus import BrokerAddress, Bus
from fabric.client import submit_and_follow
from fabric.embeddings import Embedder
from fabric.errors import ConfigError
from fabric.llm import BackendPool, LLMBackend
from fabric.messages import Budget, JobEvent, JobOptions, JobResult
from fabric.orchestrator.service import OrchestratorService
from fabric.settings import Settings

log = logging.getLogger("foa.federation")

#: builds the backend of one agent; default: backend_for(settings, spec.llm), shared per endpoint
BackendFactory = Callable[[AgentSpec], LLMBackend]

#: how often the supervisor checks that its broker still runs
BROKER_WATCH_S = 0.5


class DataDirLock:
    """One live federation per data directory: an exclusive `flock` on `<data_dir>/federation.lock`
    holding the owner's pid. The kernel drops the lock when the owner dies (SIGKILL included), so
    a stale file never blocks a restart; a second live owner is refused with the holder's pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "federation.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(
                f"another federation (pid {holder}) is running from {self.path.parent}: stop it first "
                f"(kill {holder}), talk to it (`foa submit`, `foa agents`), or use another FOA_DATA_DIR"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


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
        port_fallback: bool = False,
    ) -> None:
        """`port_fallback`: when the configured broker port is taken by another program, take a
        free one instead of failing (`foa up`'s default 1883)."""
        self.settings = settings
        self.specs = list(specs) if specs is not None else load_specs(default_specs_dir())
        self._backend_factory = backend_factory
        self._embedder = embedder
        self.with_router = with_router
        self.with_orchestrator = with_orchestrator
        self.resume_jobs = resume_jobs
        self.broker: LocalBroker | None = None
        self.address: BrokerAddress | None = None
        self.agents: list[Agent] = []
        self.gateways: list[Any] = []  # A2A / MCP gateways of `a2a:` / `mcp:` specs
        self.orchestrator: OrchestratorService | None = None
        self.router: Any = None
        self._buses: list[Bus] = []
        self._client: Bus | None = None
        self._backends = BackendPool(settings)
        self.port_fallback = port_fallback
        self.broker_restarts = 0
        self._lock: DataDirLock | None = None
        self._watch: asyncio.Task[None] | None = None

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

        if not self.settings.broker_url:  # first, so a second `foa up` here refuses at once
            self._lock = DataDirLock(self.settings.data_dir).acquire()
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(Embedder.from_settings, self.settings)
        if self.settings.broker_url:
            self.address = BrokerAddress.parse(self.settings.broker_url)
        else:
            self._start_local_broker()
            assert self.broker is not None
            self.address = self.broker.address
        log.info("federation broker", extra={"url": self.address.url})
        if self.with_router:
            from fabric.security import VcvGate
            from router.service import RouterService

            bus = await self._bus("router", persistent=False)  # nothing to keep: queries are retried
            gate = VcvGate.from_settings(self.settings)
            self.router = RouterService(
                self.settings, bus, self.embedder, verify_vcv=gate.check, verify_outcome=gate.check_outcome
            )
            await self.router.start()
        native = [spec for spec in self.specs if spec.a2a is None and spec.mcp is None]
        self.agents = [
            make_worker(
                spec,
                self.settings,
                backend=self._backend(spec),
                broker=self.address,
                embedder=self.embedder,
                replica_id="local",
            )
            for spec in native
        ]
        await asyncio.gather(*(agent.start() for agent in self.agents))
        if len(native) < len(self.specs):  # `a2a:` / `mcp:` specs join through gateways (fabric/interop)
            from fabric.interop.runner import start_gateways

            self.gateways = await start_gateways(
                self.specs, self.settings, broker=self.address, embedder=self.embedder, backend=self._backends.get()
            )
        if self.with_orchestrator:
            bus = await self._bus("orchestrator", client_id=f"orchestrator-{self.settings.instance_id}")
            self.orchestrator = OrchestratorService(self.settings, bus, self.embedder, resume=self.resume_jobs)
            await self.orchestrator.start()

    def _start_local_broker(self) -> None:
        """Clear what a dead run left in the (locked) data dir, start the broker and watch it."""
        assert self._lock is not None
        try:
            reaped = reap_orphans(self.settings.data_dir / "broker")
            if reaped:
                log.warning("stopped brokers left by a dead federation", extra={"pids": reaped})
            port = self.settings.embedded_broker_port
            if port and self.port_fallback and _port_busy(self.settings.embedded_broker_host, port):
                self.settings.embedded_broker_port = free_port(self.settings.embedded_broker_host)
                log.warning(
                    "broker port busy (another program); using another",
                    extra={"port": port, "instead": self.settings.embedded_broker_port},
                )
            self.broker = local_broker(self.settings)
            self.broker.start()
        except BaseException:
            self._lock.release()
            raise
        if isinstance(self.broker, Mosquitto):
            self._watch = asyncio.create_task(self._supervise_broker(), name="broker-supervisor")

    async def _supervise_broker(self) -> None:
        """Restart the broker on its port when it exits (crash, OOM kill, `kill`): the clients'
        buses reconnect to it, resubscribe and re-send their unacknowledged QoS 1 messages."""
        broker = self.broker
        assert isinstance(broker, Mosquitto)
        while True:
            await asyncio.sleep(BROKER_WATCH_S)
            if broker.running:
                continue
            log.warning("the broker exited; restarting it", extra={"url": broker.url, "restarts": self.broker_restarts})
            try:
                broker.stop()  # reap the exited process, drop its pid file
                broker.start()  # on this (the main) thread: the parent-death signal follows this thread
                self.broker_restarts += 1
                log.warning("broker restarted", extra={"url": broker.url})
            except Exception:  # noqa: BLE001 - keep trying: every client waits for it
                log.exception("broker restart failed; retrying")
                await asyncio.sleep(1.0)

    async def _bus(self, role: str, *, persistent: bool = True, client_id: str | None = None) -> Bus:
        bus = Bus(
            self.settings, client_id or f"{role}-{uuid.uuid4().hex[:8]}", broker=self.address, persistent=persistent
        )
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
        conversation_id: str | None = None,
    ) -> JobResult:
        bus = await self.client()
        return await submit_and_follow(
            bus,
            question,
            job_id=job_id,
            options=options,
            budget=budget,
            policies=policies,
            on_event=on_event,
            timeout=timeout,
            conversation_id=conversation_id,
        )

    async def stop(self) -> None:
        if self.orchestrator is not None:
            await self.orchestrator.leases.stop()
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
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.broker is not None:
            self.broker.stop()
        if self._lock is not None:
            self._lock.release()
