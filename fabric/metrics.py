"""Prometheus metrics for one service (router, orchestrator, agent worker).

Each `Metrics` owns its `CollectorRegistry`, so several services in one process (tests, `foa
up`) keep separate numbers and nothing is global. Bus counters are read from `Bus.stats` at
scrape time (`watch_bus`), so the bus itself needs no metrics code.

Names follow Prometheus conventions: `foa_` prefix, `_total` counters, `_seconds` histograms.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from fabric.bus import Bus
    from fabric.messages import Usage
    from fabric.settings import Settings

log = logging.getLogger("foa.metrics")

#: latency buckets from sub-millisecond routing to minutes-long LLM jobs
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)


class _BusCollector(Collector):
    """Exposes the live counters of the buses a service uses, labelled by client id."""

    def __init__(self) -> None:
        self.buses: list[Bus] = []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        published = CounterMetricFamily("foa_bus_published", "MQTT messages published", labels=["client_id"])
        received = CounterMetricFamily("foa_bus_received", "MQTT messages received", labels=["client_id"])
        delivered = CounterMetricFamily("foa_bus_delivered", "messages handled without error", labels=["client_id"])
        duplicates = CounterMetricFamily(
            "foa_bus_duplicates", "QoS 1 redeliveries dropped by envelope id", labels=["client_id"]
        )
        rejected = CounterMetricFamily(
            "foa_bus_rejected", "messages rejected before a handler", labels=["client_id", "reason"]
        )
        errors = CounterMetricFamily("foa_bus_handler_errors", "handlers that raised", labels=["client_id"])
        reconnects = CounterMetricFamily("foa_bus_reconnects", "reconnect attempts", labels=["client_id"])
        connected = GaugeMetricFamily("foa_bus_connected", "1 while connected to the broker", labels=["client_id"])
        for bus in self.buses:
            cid, stats = bus.client_id, bus.stats
            published.add_metric([cid], stats.published)
            received.add_metric([cid], stats.received)
            delivered.add_metric([cid], stats.delivered)
            duplicates.add_metric([cid], stats.duplicates)
            errors.add_metric([cid], stats.handler_errors)
            reconnects.add_metric([cid], stats.reconnects)
            connected.add_metric([cid], 1.0 if bus.connected else 0.0)
            for reason, count in dict(stats.rejected).items():
                rejected.add_metric([cid, reason], count)
        yield from (published, received, delivered, duplicates, rejected, errors, reconnects, connected)


class Metrics:
    """The metrics of one service. `service` becomes a constant label on `foa_service_info`."""

    def __init__(self, service: str, instance: str = "") -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge("foa_service_info", "always 1; labels name the service", ["service", "instance"], registry=r)
        self.info.labels(service, instance or service).set(1)
        self.heartbeat_ts = Gauge("foa_heartbeat_timestamp_seconds", "last time the service loop was alive", registry=r)
        self.started_ts = Gauge("foa_start_timestamp_seconds", "when the service started", registry=r)
        self.started_ts.set(time.time())
        self.heartbeat_ts.set(time.time())

        # routing
        self.routes = Counter("foa_routes", "route queries served", ["outcome"], registry=r)
        self.route_latency = Histogram(
            "foa_route_latency_seconds", "time to answer a route query", buckets=LATENCY_BUCKETS, registry=r
        )
        self.agents_indexed = Gauge("foa_agents_indexed", "agents in the router's index", registry=r)
        # jobs
        self.job_transitions = Counter("foa_job_transitions", "jobs entering a state", ["state"], registry=r)
        self.jobs_in_state = Gauge("foa_jobs", "jobs currently in each state", ["state"], registry=r)
        self.job_duration = Histogram(
            "foa_job_duration_seconds", "submit to final result", ["status"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tasks = Counter("foa_tasks", "tasks run by agents", ["task_kind", "outcome"], registry=r)
        self.task_latency = Histogram(
            "foa_task_latency_seconds", "time to run one task", ["task_kind"], buckets=LATENCY_BUCKETS, registry=r
        )
        # LLM
        self.llm_tokens = Counter("foa_llm_tokens", "LLM tokens", ["model", "direction"], registry=r)
        self.llm_cost = Counter("foa_llm_cost", "LLM cost in the VCV's currency units", ["model"], registry=r)
        self.llm_calls = Counter("foa_llm_calls", "LLM calls", ["model", "outcome"], registry=r)
        self.llm_latency = Histogram(
            "foa_llm_latency_seconds", "one LLM call", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        # messages refused or lost on purpose (bus-level rejections come from watch_bus)
        self.dropped = Counter(
            "foa_messages_dropped", "messages dropped (late, expired, over capacity)", ["reason"], registry=r
        )
        self.rejected = Counter(
            "foa_messages_rejected",
            "messages refused by service logic (signature, policy, ...)",
            ["reason"],
            registry=r,
        )
        self._buses = _BusCollector()
        r.register(self._buses)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ---- recording helpers ----------------------------------------------------------------

    def heartbeat(self) -> None:
        self.heartbeat_ts.set(time.time())

    async def beat_forever(self, interval_s: float = 5.0) -> None:
        """Refresh the heartbeat from the service's event loop: a stale value means a stuck loop."""
        while True:
            self.heartbeat()
            await asyncio.sleep(interval_s)

    @contextmanager
    def time_route(self) -> Iterator[None]:
        """Count and time one route query; an exception counts as outcome=error."""
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.routes.labels("error").inc()
            raise
        finally:
            self.route_latency.observe(time.perf_counter() - started)
        self.routes.labels("ok").inc()

    def job_state(self, state: str, previous: str | None = None) -> None:
        """A job moved from `previous` (None = new) to `state`."""
        self.job_transitions.labels(state).inc()
        self.jobs_in_state.labels(state).inc()
        if previous is not None:
            self.jobs_in_state.labels(previous).dec()

    def llm_usage(self, model: str, usage: Usage, latency_s: float | None = None, ok: bool = True) -> None:
        self.llm_tokens.labels(model, "input").inc(usage.input_tokens)
        self.llm_tokens.labels(model, "output").inc(usage.output_tokens)
        self.llm_cost.labels(model).inc(usage.cost)
        self.llm_calls.labels(model, "ok" if ok else "error").inc(max(1, usage.calls))
        if latency_s is not None:
            self.llm_latency.labels(model).observe(latency_s)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped.labels(reason).inc(n)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected.labels(reason).inc(n)

    def watch_bus(self, bus: Bus) -> None:
        """Expose `bus.stats` (published, received, rejected by reason, ...) on every scrape."""
        if bus not in self._buses.buses:
            self._buses.buses.append(bus)

    # ---- exposition -----------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format, as /metrics serves it."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value (tests, `foa status`)."""
        return self.registry.get_sample_value(name, labels or {})

    def serve(self, port: int, host: str = "0.0.0.0") -> int | None:
        """Serve /metrics on `port` in a daemon thread; 0 = off. Returns the bound port."""
        if not port:
            return None
        if self._server is not None:
            raise RuntimeError("metrics are already being served")
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("serving metrics", extra={"service": self.service, "url": f"http://{host}:{bound}/metrics"})
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._thread = None


def metrics_for(settings: Settings, service: str, instance: str = "") -> Metrics:
    """A service's Metrics, served on FOA_METRICS_PORT unless it is 0."""
    metrics = Metrics(service, instance)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    return metrics
