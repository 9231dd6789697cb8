"""`foa ui`, its HTTP API: a real console server (uvicorn) over a real federation (mosquitto, the
router service, an orchestrator and scripted agents: ScriptedLLM answers, for orchestration
logic only), asked with httpx like a page would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabric import topics
from fabric.broker import Mosquitto, free_port
from fabric.bus import BrokerAddress, Bus, Incoming
from fabric.envelope import make
from fabric.federation import LocalFederation
from fabric.messages import JobCancel, JobResult, JobUsage
from fabric.settings import Settings
from fabric.ui import create_app
from fabric.ui.app import make_server
from fabric.ui.jobs import JobBook
from tests.conftest import make_settings
from tests.scripted_federation import SPECS, backend_factory

pytest.importorskip("fastapi", reason="the console needs the ui extra: pip install -e '.[ui]'")


def fed_settings(url: str, tmp_path: Path, **kw: object) -> Settings:
    return make_settings(url, tmp_path, request_timeout_s=10.0, **kw)


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@asynccontextmanager
async def running_console(
    settings: Settings, *, allow_submit: bool = False, wait_connected: bool = True
) -> AsyncIterator[str]:
    """The console's real server on a free port, in this event loop; yields its base URL."""
    port = free_port()
    app = create_app(settings, BrokerAddress.parse(settings.broker_url or ""), allow_submit=allow_submit)
    server = make_server(app, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:

            async def up() -> bool:
                try:
                    health = (await http.get("/api/health")).json()
                except httpx.HTTPError:
                    return False
                return bool(health["connected"]) or not wait_connected

            await until(up, 20, "the console to serve and reach the broker")
        yield base
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def federation_and_console(settings: Settings, embedder: Any, *, allow_submit: bool = False,
                                 latency_s: float = 0.0) -> AsyncIterator[tuple[LocalFederation, str]]:
    factory = backend_factory(latency_s=latency_s, done_from_round=2)
    async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
        async with running_console(settings, allow_submit=allow_submit) as base:
            yield fed, base


async def agents_settled(http: httpx.AsyncClient, n: int) -> list[dict[str, Any]] | None:
    rows = (await http.get("/api/agents")).json()
    return rows if len(rows) == n and all(r["status"] == "online" for r in rows) else None


def test_agents_vcv_detail_and_capability_map(mosquitto, tmp_path, embedder) -> None:
    settings = fed_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with federation_and_console(settings, embedder) as (fed, base), httpx.AsyncClient(base_url=base) as http:
            rows = await until(lambda: agents_settled(http, len(SPECS)), what="4 online agents")
            by_id = {r["agent_id"]: r for r in rows}
            assert set(by_id) == {s.id for s in SPECS}
            assert by_id["cardio"]["skills"] == ["cardiology"] and by_id["cardio"]["cost_per_1k_output"] == 0.003
            assert by_id["writer"]["policies"] == ["public"] and by_id["writer"]["signed"] is False

            detail = (await http.get("/api/agents/er-doc")).json()
            assert detail["vcv"]["agent_id"] == "er-doc" and "capability" not in detail["vcv"]
            assert detail["dims"] == {"capability": 384, "spec_embedding": 384}
            assert detail["vcv"]["resources"]["max_concurrency"] == 8
            assert detail["vcv"]["policies"] == ["clinical", "hipaa"]

            missing = await http.get("/api/agents/nobody")
            assert missing.status_code == 404 and "no agent 'nobody'" in missing.json()["detail"]

            cmap = (await http.get("/api/map")).json()
            assert {p["agent_id"] for p in cmap["points"]} == set(by_id) and cmap["dim"] == 384
            assert len(cmap["explained"]) == 2 and 0 < cmap["explained"][1] <= cmap["explained"][0] < 1
            xy = {p["agent_id"]: (p["x"], p["y"]) for p in cmap["points"]}
            # the three clinical agents sit closer to each other than to the writer
            def dist(a: str, b: str) -> float:
                return float(((xy[a][0] - xy[b][0]) ** 2 + (xy[a][1] - xy[b][1]) ** 2) ** 0.5)
            assert dist("cardio", "er-doc") < dist("cardio", "writer")

            page = await http.get("/")
            assert page.status_code == 200 and "FoA console" in page.text
            assert (await http.get("/static/app.js")).status_code == 200

    asyncio.run(main())


def test_route_playground_factors_gates_and_bad_input(mosquitto, tmp_path, embedder) -> None:
    settings = fed_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with federation_and_console(settings, embedder) as (fed, base), httpx.AsyncClient(base_url=base) as http:
            await until(lambda: agents_settled(http, len(SPECS)), what="agents")
            question = "my father has chest pain, is it a heart attack?"
            res = (await http.post("/api/route", json={"text": question})).json()
            matches = res["response"]["matches"]
            assert matches and matches[0]["agent_id"] in {"er-doc", "cardio"}
            assert {"sim", "lexical", "resources", "spec", "reputation"} <= set(matches[0]["factors"])
            assert res["gated"] == [] and res["elapsed_ms"] > 0

            query = {"text": "summarise and edit the answers", "policies": ["hipaa"], "top_k": 4}
            gated = (await http.post("/api/route", json=query)).json()
            ranked = [m["agent_id"] for m in gated["response"]["matches"]]
            assert "writer" not in ranked
            writer = next(g for g in gated["gated"] if g["agent_id"] == "writer")
            assert writer["reasons"] == ["policy: lacks hipaa"] and writer["score_without_gate"] > 0

            costly = (await http.post("/api/route", json={"text": "chest pain", "max_cost": 0.0008, "top_k": 4})).json()
            assert any(r.startswith("budget: expected cost") for g in costly["gated"] for r in g["reasons"])

            async def calibrated() -> dict[str, Any] | None:  # the router calibrates itself shortly after start
                body = {"text": "tune the carburettor of a 1970s motorbike"}
                res = (await http.post("/api/route", json=body)).json()["response"]
                return res if res["threshold"] is not None else None

            off_topic = await until(calibrated, 30, "the router's self-calibrated abstention threshold")
            assert off_topic["abstained"] is True and off_topic["matches"] == [] and off_topic["threshold"] > 0
            # the router's status: where its abstention came from, what it learned
            status = (await http.get("/api/router")).json()
            assert status["agents"] == len(SPECS) and status["abstention"]["kind"] == "model"
            assert status["abstention"]["provenance"]["source"] and status["learning"]["agents"] >= 0

            empty = await http.post("/api/route", json={"text": "   "})
            assert empty.status_code == 422 and "the task is empty" in empty.json()["detail"]
            typo = await http.post("/api/route", json={"text": "chest pain", "policies": ["hipa"]})
            assert typo.status_code == 502 and "unknown policy flag" in typo.json()["detail"]
            wrong = await http.post("/api/route", json={"text": "x", "top_k": 0})
            assert wrong.status_code == 422 and "top_k" in wrong.json()["detail"]

    asyncio.run(main())


async def sse_events(base: str, into: list[tuple[str, dict[str, Any]]]) -> None:
    """Read the console's event stream like a browser does."""
    async with httpx.AsyncClient(base_url=base, timeout=None) as http, http.stream("GET", "/api/stream") as resp:
        event = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                into.append((event, json.loads(line[6:])))


def test_a_submitted_job_streams_live_and_its_page_fills_in(mosquitto, tmp_path, embedder) -> None:
    settings = fed_settings(mosquitto.url, tmp_path, assign_floor=0.0)  # full teams: every node has channel rounds

    async def main() -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], dict[str, Any]]:
        events: list[tuple[str, dict[str, Any]]] = []
        async with federation_and_console(settings, embedder, allow_submit=True, latency_s=0.05) as (fed, base):
            reader = asyncio.create_task(sse_events(base, events))
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                await until(lambda: agents_settled(http, len(SPECS)), what="agents")
                empty = await http.post("/api/jobs", json={"question": " "})
                assert empty.status_code == 422 and "the question is empty" in empty.json()["detail"]
                job = {"question": "My father has chest pain. What should we do?",
                       "options": {"max_proposers": 2, "agents_per_node": 3}}
                job_id = (await http.post("/api/jobs", json=job)).json()["job_id"]

                async def finished() -> dict[str, Any] | None:
                    detail = (await http.get(f"/api/jobs/{job_id}")).json()
                    return detail if detail["summary"]["state"] in ("completed", "failed") else None

                detail = await until(finished, 90, "the job to finish")

                async def streamed_end() -> bool:  # the stream may trail the HTTP answer by a moment
                    return any(kind == "job" and data["job_id"] == job_id and data["state"] == "completed"
                               for kind, data in events)

                await until(streamed_end, 10, "the stream to carry the job's end")
                listed = (await http.get("/api/jobs")).json()
                assert listed[0]["job_id"] == job_id and listed[0]["question"].startswith("My father")
            reader.cancel()
        # a console started after the job finished finds it on its retained result
        async with running_console(settings) as base, httpx.AsyncClient(base_url=base) as http:
            late = (await http.get(f"/api/jobs/{job_id}")).json()
            unknown = await http.get("/api/jobs/job-that-never-was")
            bad = await http.get("/api/jobs/a+b")
            assert unknown.status_code == 404 and "no job 'job-that-never-was'" in unknown.json()["detail"]
            assert bad.status_code == 400 and "invalid job id" in bad.json()["detail"]
            read_only = await http.post("/api/jobs", json={"question": "hi"})
            assert read_only.status_code == 403 and "--allow-submit" in read_only.json()["detail"]
        return detail, events, late

    detail, events, late = asyncio.run(main())
    summary = detail["summary"]
    assert summary["state"] == "completed", detail["failure_reason"]
    assert summary["tokens"] > 0 and summary["cost"] > 0
    nodes = {n["node_id"]: n for n in detail["nodes"]}
    assert len(nodes) == 4 and len(detail["edges"]) == 4 and all(n["state"] == "done" for n in nodes.values())
    assert all(len(n["assigned"]) == 3 and "sim" in n["assigned"][0]["factors"] for n in nodes.values())
    refined = [info for n in nodes.values() for info in n["rounds"].values() if info["stopped"] == "consensus"]
    assert refined and all(len(info["rounds"]) == 2 and info["representative"] for info in refined)
    assert all(all(info["rounds"][-1]["votes"].values()) for info in refined)  # everyone voted done in round 2
    assert any(n["drafts"] for n in nodes.values()) and all(n["representative"] for n in nodes.values())
    assert "(revised)" in detail["answer"] and detail["usage"]["calls"] >= 14 and detail["timings"]["total"] > 0
    phases = [t["phase"] for t in detail["timeline"]]
    assert phases[0] == "decompose" and phases[-1] == "done" and "refine" in phases
    # live: the stream carried the job through its phases, and the page saw the plan before the end
    job_states = [data["state"] for kind, data in events if kind == "job" and data["job_id"] == summary["job_id"]]
    assert "running" in job_states and job_states[-1] == "completed"
    assert len({data["phase"] for kind, data in events if kind == "job"}) >= 5
    # the late console rebuilt the same page from the retained result alone
    assert late["summary"]["state"] == "completed" and late["answer"] == detail["answer"]
    assert {n["node_id"] for n in late["nodes"]} == set(nodes) and late["edges"] == detail["edges"]
    assert late["summary"]["question"] is None  # the question travels in the submission, which it did not see


def test_cancel_is_published_and_the_canceled_result_shows(mosquitto, tmp_path) -> None:
    settings = fed_settings(mosquitto.url, tmp_path)

    async def main() -> tuple[list[JobCancel], dict[str, Any], int]:
        seen: list[JobCancel] = []
        async with running_console(settings, allow_submit=True) as base, httpx.AsyncClient(base_url=base) as http, \
                Bus(settings, "orchestrator-test-cancel", persistent=False) as bus:

            def on_cancel(msg: Incoming) -> None:
                assert msg.envelope is not None
                seen.append(msg.envelope.body)

            await bus.subscribe(topics.JOBS_CANCEL_WILDCARD, on_cancel, body_types=JobCancel)
            res = await http.post("/api/jobs/job-c1/cancel")
            assert res.status_code == 200 and res.json()["cancel_requested"] is True
            await until(lambda: asyncio.sleep(0, result=bool(seen)), 5, "the cancel message")
            # what the owning orchestrator answers: the job's result, status canceled
            result = JobResult(job_id="job-c1", status="canceled", failure_reason="canceled from the console",
                               usage=JobUsage(tokens=12, cost=0.001))
            envelope = make(result, job_id="job-c1", sender=bus.client_id)
            await bus.publish(topics.job_result("job-c1"), envelope, retain=True)

            async def canceled() -> dict[str, Any] | None:
                detail = (await http.get("/api/jobs/job-c1")).json()
                return detail if detail["summary"]["state"] == "canceled" else None

            detail = await until(canceled, 5, "the canceled result")
            # garbage on a job's topic is refused and counted; the console keeps serving
            await bus.publish(topics.job_events("job-c1"), b"{not json")

            async def counted() -> bool:
                return bool((await http.get("/api/health")).json()["rejected_messages"] == 1)

            await until(counted, 5, "the bad message to be counted")
            await bus.publish(topics.job_result("job-c1"), None, retain=True)  # clear the retained result
            bad = await http.post("/api/jobs/bad+id/cancel")
            return seen, detail, bad.status_code

    seen, detail, bad = asyncio.run(main())
    assert seen[0].job_id == "job-c1" and seen[0].reason == "canceled from the console"
    assert detail["failure_reason"] == "canceled from the console" and detail["summary"]["tokens"] == 12
    assert bad == 400


def test_broker_gone_gives_clear_errors_and_the_server_keeps_serving(tmp_path) -> None:
    broker = Mosquitto(data_dir=tmp_path / "broker").start()
    settings = fed_settings(broker.url, tmp_path)

    async def main() -> None:
        try:
            async with running_console(settings, allow_submit=True) as base, httpx.AsyncClient(base_url=base) as http:
                broker.stop()

                async def disconnected() -> dict[str, Any] | None:
                    health = (await http.get("/api/health")).json()
                    return None if health["connected"] else health

                health = await until(disconnected, 15, "the console to notice the broker left")
                assert "broker" in health["error"]
                route = await http.post("/api/route", json={"text": "chest pain"})
                assert route.status_code == 503 and "not connected to the broker" in route.json()["detail"]
                submit = await http.post("/api/jobs", json={"question": "anything"})
                assert submit.status_code == 503
                assert (await http.get("/api/agents")).status_code == 200 and (await http.get("/")).status_code == 200
                assert (await http.get("/api/health")).json()["refused"] == {"503": 2}  # counted, by status
                broker.start()  # same port: the bus reconnects by itself

                async def back() -> bool:
                    return bool((await http.get("/api/health")).json()["connected"])

                await until(back, 30, "the console to reconnect")
        finally:
            broker.stop()

    asyncio.run(main())


def test_foa_ui_command_serves_the_console(mosquitto, tmp_path) -> None:
    port = free_port()
    env = os.environ | {"FOA_BROKER_URL": mosquitto.url, "FOA_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "fabric.cli", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
                if health["connected"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert health and health["connected"] and health["allow_submit"] is False, (health, proc.poll())
        assert "FoA console" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert f"FoA console on http://127.0.0.1:{port}/" in err


def test_job_book_is_bounded_and_sketches_a_running_job_from_its_events() -> None:
    """Pure logic, no broker: the in-memory view forgets the least recently active job first,
    caps events per job, ignores repeated events (QoS 1 redelivery) and draws a running job's
    page from its events alone."""
    book = JobBook(max_jobs=3, max_events=5)
    for i in range(4):
        book.on_submit({"job_id": f"j{i}", "question": f"q{i}"})
    assert [s.job_id for s in book.summaries()] == ["j3", "j2", "j1"]  # j0 forgotten
    dag = {"nodes": [{"id": "n1", "text": "first"}, {"id": "n2", "text": "second"}], "edges": [["n1", "n2"]]}
    events = [
        {"job_id": "j1", "seq": 0, "phase": "decompose", "message": "plan", "data": {"dag": dag}, "at": 100.0},
        {"job_id": "j1", "seq": 1, "phase": "assign", "message": "assigned", "at": 100.5,
         "data": {"assignments": {"n1": [{"agent_id": "a", "score": 0.5}, {"agent_id": "b", "score": 0.4}],
                                  "n2": [{"agent_id": "a", "score": 0.3}]}}},
        {"job_id": "j1", "seq": 2, "phase": "draft", "message": "2 drafts", "at": 101.0,
         "data": {"node": "n1", "drafts": {"a": "x"}}},
        {"job_id": "j1", "seq": 3, "phase": "refine", "message": "round 1", "at": 102.0,
         "data": {"node": "n1", "cluster": "c1", "round": 1, "votes": {"a": False, "b": True}}},
    ]
    for event in events + events[:2]:  # redelivered
        book.on_event(event)
    detail = book.jobs["j1"].detail()
    assert detail.summary.state == "running" and detail.summary.events == 4 and detail.summary.question == "q1"
    n1, n2 = detail.nodes
    assert (n1.state, n2.state, n2.depends_on) == ("refining", "pending", ["n1"])  # n2 waits for n1
    assert n1.rounds["c1"]["rounds"] == [{"round": 1, "votes": {"a": False, "b": True}}]
    assert n1.drafts == {"a": "x"} and [m["agent_id"] for m in n1.assigned] == ["a", "b"]
    assert [t.t for t in detail.timeline] == [0.0, 0.5, 1.0, 2.0]
    for seq in range(4, 9):
        book.on_event({"job_id": "j1", "seq": seq, "phase": "refine", "message": "", "data": {}, "at": 103.0})
    assert len(book.jobs["j1"].events) == 5  # capped
    book.on_result({"job_id": "j1", "status": "failed", "failure_reason": "budget"})
    failed = book.jobs["j1"].detail()
    assert failed.summary.state == "failed" and failed.failure_reason == "budget"
    assert all(n.state == "pending" for n in failed.nodes)  # nothing finished: the result lists no rounds


def test_capability_map_projection_matches_an_svd_on_both_paths() -> None:
    """Pure logic: the projection takes an SVD for few agents and eigh for many; both must be the
    data's first two principal components (up to sign) with the same variance shares."""
    import numpy as np

    from fabric.ui.console import pca_2d

    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 64, 300):  # d = 32: n ≤ d takes the SVD, n > d eigh
        data = rng.standard_normal((n, 32)) * np.linspace(3, 0.1, 32)
        centred = data - data.mean(axis=0)
        xy, explained = pca_2d(centred)
        assert xy.shape == (n, 2)
        if n == 1:
            assert explained == [] and not xy.any()
            continue
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        k = min(2, n - 1)
        assert np.allclose(np.abs(xy[:, :k]), np.abs(centred @ vt[:k].T), atol=1e-8)
        assert explained == [round(float(v**2 / (s**2).sum()), 4) for v in s[:k]]
