"""What every long-running FoA process sets up the same way: `ServiceRuntime`.

The router, the orchestrator, an LLM worker and an agent host each need the shared embedding
model, a /metrics endpoint with a heartbeat, the startup heap frozen once they are up
(fabric/heap.py), SIGINT/SIGTERM turned into a clean drain, and their own shutdown steps run in
order before the broker connection closes. Written four times, those drifted (three ways of
calling the embedder cache, signals handled in two of four services); here they are written once:

    async with ServiceRuntime(settings, "router", instance=client_id) as rt:
        embedder = await rt.embedder()
        async with Bus(settings, client_id, broker=rt.broker()) as bus:
            rt.watch_bus(bus)
            service = RouterService(settings, bus, embedder)
            await service.start()
            rt.on_drain(service.stop)
            rt.ready()          # freezes the startup heap
            await rt.serve()    # until SIGINT/SIGTERM or rt.stop(); then the drain hooks, newest first

Drain hooks run inside the caller's `async with Bus`, so they can still publish (an agent's
`offline`, pending reputation scores). Hooks registered but not run by `serve()` (an exception,
a cancellation) run at `__aexit__`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from fabric.aio import wait_within
from fabric.embeddings import Embedder
from fabric.heap import freeze_startup_heap
from fabric.metrics import Metrics, metrics_for
from fabric.settings import Settings
from fabric.transports.paho import install_paho_speedups

if TYPE_CHECKING:
    from fabric.bus import BrokerAddress, Bus

__all__ = ["DrainHook", "ServiceRuntime"]

log = logging.getLogger("foa.service")

DrainHook = Callable[[], Awaitable[object] | object]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ServiceRuntime:
    """The set-up shared by every service process (module docstring).

    `stop`: an event the caller already owns (e.g. `foa orchestrator`'s); one is made otherwise.
    `handle_signals`: SIGINT/SIGTERM set `stop` (only possible in the main thread's loop; tests
    that embed a service in their own loop pass False). `heartbeat_s`: how often the heartbeat
    gauge is refreshed from the event loop (a stale value means a stuck loop).
    `drain_timeout_s`: the longest one drain hook may take before it is abandoned.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        *,
        instance: str = "",
        embedder: Embedder | None = None,
        stop: asyncio.Event | None = None,
        handle_signals: bool = True,
        heartbeat_s: float = 5.0,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.name = name
        self.instance = instance or name
        self.stop_event = stop or asyncio.Event()
        self.handle_signals = handle_signals
        self.heartbeat_s = heartbeat_s
        self.drain_timeout_s = drain_timeout_s
        self.metrics: Metrics | None = None
        self.stop_reason: str | None = None
        self.frozen_objects: int | None = None
        self._embedder = embedder
        self._hooks: list[DrainHook] = []
        self._signals: list[signal.Signals] = []
        self._beat: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> ServiceRuntime:
        install_paho_speedups()  # every service talks MQTT through paho; idempotent
        self.metrics = metrics_for(self.settings, self.name, self.instance)
        self._beat = asyncio.create_task(self.metrics.beat_forever(self.heartbeat_s), name=f"{self.name}-heartbeat")
        if self.handle_signals:
            self._install_signals()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.drain()
        finally:
            self._remove_signals()
            if self._beat is not None:
                self._beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._beat
                self._beat = None
            if self.metrics is not None:
                self.metrics.stop()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: signals are left to the caller", extra={"service": self.name})
            return
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.stop, sig.name)
            except (NotImplementedError, RuntimeError, ValueError):  # e.g. Windows' event loops
                log.debug("cannot handle %s in this event loop", sig.name)
                continue
            self._signals.append(sig)

    def _remove_signals(self) -> None:
        if not self._signals:
            return
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    # ---- the shared parts -----------------------------------------------------------------

    async def embedder(self) -> Embedder:
        """The process's one embedding model (`Embedder.from_settings`), loaded off the event loop."""
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(Embedder.from_settings, self.settings)
        return self._embedder

    def broker(self) -> BrokerAddress:
        """The broker this service connects to (FOA_BROKER_URL, else a `foa up` in this directory)."""
        from fabric.runtime import resolve_broker

        return resolve_broker(self.settings)

    def watch_bus(self, bus: Bus) -> None:
        """Expose the bus's counters on this service's /metrics."""
        if self.metrics is None:
            raise RuntimeError("use ServiceRuntime as `async with` before watching a bus")
        self.metrics.watch_bus(bus)

    def on_drain(self, hook: DrainHook) -> None:
        """Run `hook` (sync or async) when the service stops; hooks run newest first, as with
        nested `async with`: what started last stops first."""
        self._hooks.append(hook)

    def ready(self) -> int:
        """The service is up: freeze the startup heap (fabric/heap.py). Returns the objects frozen."""
        self.frozen_objects = freeze_startup_heap()
        log.info("%s ready", self.name, extra={"service": self.name, "instance": self.instance})
        return self.frozen_objects

    # ---- stopping -----------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the service to stop (what SIGINT/SIGTERM do); `serve()` then drains and returns."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            log.info("%s stopping: %s", self.name, reason)
        self.stop_event.set()

    async def serve(self) -> None:
        """Wait until asked to stop, then run the drain hooks."""
        try:
            await self.stop_event.wait()
        finally:
            await self.drain()

    async def drain(self) -> None:
        """Run the registered hooks, newest first, each at most `drain_timeout_s`. A hook that
        fails or hangs is logged and the rest still run: a half-stopped service is worse."""
        while self._hooks:
            hook = self._hooks.pop()
            name = getattr(hook, "__qualname__", repr(hook))
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await wait_within(_awaited(result), self.drain_timeout_s)
            except TimeoutError:
                log.warning("drain step timed out", extra={"service": self.name, "step": name})
            except Exception:  # one failed shutdown step must not skip the others
                log.warning("drain step failed", extra={"service": self.name, "step": name}, exc_info=True)


async def _awaited(result: Awaitable[object]) -> object:
    return await result
