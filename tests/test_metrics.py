"""Observability: Prometheus metrics per service and trace propagation across hops."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fabric import telemetry as telemetry_mod
from fabric import topics
from fabric.broker import free_port
from fabric.bus import Bus, Incoming
from fabric.envelope import make, trace_id_of
from fabric.messages import TaskRequest, Usage
from fabric.metrics import Metrics, metrics_for
from fabric.settings import Settings
from fabric.telemetry import Telemetry, otel_available, telemetry_for


def test_services_keep_separate_registries() -> None:
    router, orchestrator = Metrics("router"), Metrics("orchestrator")
    with router.time_route():
        pass
    with pytest.raises(ValueError):
        with router.time_route():
            raise ValueError("bad query")
    assert router.value("foa_routes_total", {"outcome": "ok"}) == 1
    assert router.value("foa_routes_total", {"outcome": "error"}) == 1
    assert router.value("foa_route_latency_seconds_count") == 2
    assert orchestrator.value("foa_routes_total", {"outcome": "ok"}) is None


def test_jobs_llm_and_rejections() -> None:
    m = Metrics("orchestrator")
    for state, previous in [("decompose", None), ("draft", "decompose"), ("completed", "draft"), ("decompose", None)]:
        m.job_state(state, previous)
    assert m.value("foa_jobs", {"state": "decompose"}) == 1
    assert m.value("foa_jobs", {"state": "draft"}) == 0
    assert m.value("foa_jobs", {"state": "completed"}) == 1
    assert m.value("foa_job_transitions_total", {"state": "decompose"}) == 2
    m.llm_usage("qwen", Usage(input_tokens=120, output_tokens=30, cost=0.002, calls=1), latency_s=0.8)
    m.llm_usage("qwen", Usage(input_tokens=80, output_tokens=20, cost=0.001, calls=1), latency_s=1.2, ok=False)
    assert m.value("foa_llm_tokens_total", {"model": "qwen", "direction": "input"}) == 200
    assert m.value("foa_llm_tokens_total", {"model": "qwen", "direction": "output"}) == 50
    assert m.value("foa_llm_cost_total", {"model": "qwen"}) == pytest.approx(0.003)
    assert m.value("foa_llm_calls_total", {"model": "qwen", "outcome": "error"}) == 1
    m.reject("bad-signature")
    m.drop("deadline", 3)
    assert m.value("foa_messages_rejected_total", {"reason": "bad-signature"}) == 1
    assert m.value("foa_messages_dropped_total", {"reason": "deadline"}) == 3


def test_bus_stats_and_http_endpoint(settings: Settings) -> None:
    """A real bus on mosquitto: its published/received/rejected counters appear on /metrics."""
    metrics = Metrics("agent", "pharmacist-0")
    port = metrics.serve(free_port(), "127.0.0.1")
    assert port is not None
    got: list[str] = []

    async def main() -> None:
        async with Bus(settings, "metrics-test-sub") as sub, Bus(settings, "metrics-test-pub") as pub:
            metrics.watch_bus(sub)
            metrics.watch_bus(pub)
            await sub.subscribe(
                "foa/test/metrics",
                lambda m: got.append(m.envelope.body.task_id),  # type: ignore[union-attr]  # subscribed without accept_empty: never None
                body_types=TaskRequest,
            )
            for i in range(3):
                await pub.publish("foa/test/metrics", TaskRequest(task_id=f"t{i}", task_kind="draft", agent_id="a"))
            await pub.publish("foa/test/metrics", b"{not json")
            for _ in range(100):
                if len(got) == 3 and sub.stats.rejected_total:
                    break
                await asyncio.sleep(0.02)
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert samples[("foa_bus_published_total", (("client_id", "metrics-test-pub"),))] == 4
            assert samples[("foa_bus_received_total", (("client_id", "metrics-test-sub"),))] == 4
            assert (
                samples[("foa_bus_rejected_total", (("client_id", "metrics-test-sub"), ("reason", "malformed")))] == 1
            )
            assert samples[("foa_bus_connected", (("client_id", "metrics-test-sub"),))] == 1
            assert samples[("foa_service_info", (("instance", "pharmacist-0"), ("service", "agent")))] == 1

    try:
        asyncio.run(main())
    finally:
        metrics.stop()
    assert got == ["t0", "t1", "t2"]


def test_metrics_off_by_default() -> None:
    m = metrics_for(Settings(), "router")
    assert m._server is None  # FOA_METRICS_PORT=0: nothing listens
    assert b"foa_routes" in m.render()


# ---- tracing ----------------------------------------------------------------------------


def test_noop_telemetry_still_propagates_trace_ids() -> None:
    tel = Telemetry("router", "none")
    assert not tel.enabled and tel.current_traceparent() is None
    incoming = make(TaskRequest(task_id="t", task_kind="draft", agent_id="a")).model_copy(
        update={"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    )
    with tel.span("route", incoming.traceparent) as outer:
        assert trace_id_of(outer.traceparent) == "ab" * 16
        assert outer.traceparent != incoming.traceparent
        assert tel.current_traceparent() == outer.traceparent
        with tel.span("score") as inner:  # no explicit parent: continues the current span
            assert inner.trace_id == "ab" * 16
        outer.set_attribute("k", "v")  # no-op, must not fail
    assert tel.current_traceparent() is None
    with tel.span("fresh") as fresh:
        assert fresh.trace_id not in (None, "ab" * 16)


def test_exporter_without_sdk_degrades(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(telemetry_mod, "otel_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="foa.telemetry"):
        tel = telemetry_for(Settings(otel_exporter="console"), "router")
    assert not tel.enabled
    assert any("opentelemetry-sdk is not installed" in r.getMessage() for r in caplog.records)
    with tel.span("x") as span:
        assert span.trace_id


def _console_spans(text: str) -> list[dict[str, Any]]:
    decoder, spans, i = json.JSONDecoder(), [], 0
    while (start := text.find("{", i)) != -1:
        obj, i = decoder.raw_decode(text, start)
        spans.append(obj)
    return spans


@pytest.mark.skipif(not otel_available(), reason="opentelemetry-sdk not installed (the optional telemetry extra)")
def test_one_trace_across_services_over_mqtt(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """orchestrator -> agent over a real broker: the agent's span is a child of the orchestrator's."""
    orchestrator = Telemetry("orchestrator", "console")
    agent = Telemetry("agent", "console")
    assert orchestrator.enabled and agent.enabled

    async def main() -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_task(msg: Incoming) -> None:
            assert msg.envelope is not None
            with agent.span("task", msg.envelope.traceparent, {"task_id": msg.envelope.body.task_id}) as span:
                done.set_result(span.traceparent)

        async with Bus(settings, "otel-orch") as orch_bus, Bus(settings, "otel-agent") as agent_bus:
            await agent_bus.subscribe(topics.agent_tasks("otel-agent"), on_task, body_types=TaskRequest)
            with orchestrator.span("job", attributes={"job_id": "j1", "none": None}) as job:
                env = make(
                    TaskRequest(task_id="t1", task_kind="draft", agent_id="otel-agent"), traceparent=job.traceparent
                )
                await orch_bus.publish(topics.agent_tasks("otel-agent"), env)
                agent_tp = await asyncio.wait_for(done, 5)
            assert trace_id_of(agent_tp) == job.trace_id
            return job.traceparent

    job_tp = asyncio.run(main())
    orchestrator.shutdown()
    agent.shutdown()
    spans = {s["name"]: s for s in _console_spans(capsys.readouterr().err) if "context" in s}
    assert set(spans) >= {"job", "task"}
    job, task = spans["job"], spans["task"]
    assert job["context"]["trace_id"] == task["context"]["trace_id"] == "0x" + job_tp.split("-")[1]
    assert task["parent_id"] == job["context"]["span_id"]
    assert job["resource"]["attributes"]["service.name"] == "orchestrator"
    assert task["resource"]["attributes"]["service.name"] == "agent"
    assert task["attributes"]["task_id"] == "t1"


# ---- foa status -------------------------------------------------------------------------


def test_status_reads_retained_topics_and_service_metrics(settings: Settings, embedder) -> None:
    from fabric.bloom import BloomFilter
    from fabric.cli.status import collect, render
    from fabric.messages import AgentStatus
    from fabric.vcv import VCV

    vecs = embedder.embed(["Status probe agent: answers health checks.", "spec"])
    vcv = VCV(
        agent_id="status-probe", version=7, description="Status probe agent: answers health checks.",
        capability=vecs[0].tolist(), spec_embedding=vecs[1].tolist(), skills_bloom=BloomFilter.of([]).to_b64(),
        embedding_model=embedder.model_name, llm_model="probe-model",
    )  # fmt: skip
    router = Metrics("router", "router-0")
    port = router.serve(free_port(), "127.0.0.1")
    with router.time_route():
        pass
    router.job_state("draft")
    dead = f"http://127.0.0.1:{free_port()}/metrics"

    async def main() -> dict[str, Any]:
        async with Bus(settings, "status-probe-0") as bus:
            await bus.publish(topics.agent_vcv("status-probe"), vcv, retain=True)
            await bus.publish(
                topics.agent_status("status-probe"),
                AgentStatus(agent_id="status-probe", status="online", replica_id="0"),
                retain=True,
            )
            try:
                return await collect(settings, 1.0, [f"http://127.0.0.1:{port}/metrics", dead])
            finally:
                await bus.publish(topics.agent_vcv("status-probe"), None, retain=True)
                await bus.publish(topics.agent_status("status-probe"), None, retain=True)

    try:
        report = asyncio.run(main())
    finally:
        router.stop()
    probe = next(a for a in report["agents"] if a["agent_id"] == "status-probe")
    assert (probe["version"], probe["status"], probe["replicas_seen"], probe["llm_model"]) == (
        7,
        "online",
        ["0"],
        "probe-model",
    )
    live, down = report["services"]
    assert live["up"] and live["service"] == "router" and live["routes"] == 1 and live["jobs"] == {"draft": 1}
    assert live["heartbeat_age_s"] < 60
    assert not down["up"]
    text = render(report)
    assert "status-probe" in text and "DOWN" in text
