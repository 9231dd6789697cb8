"""The per-job breakdown of wall time by kind of work (`path.*` and `hops.*` in JobResult.timings):
every kind is reported, the kinds never sum to more than the job's wall time, and overlapping
work is counted once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fabric.federation import LocalFederation
from fabric.messages import JobOptions, JobResult
from fabric.orchestrator.critical_path import HOPS_PREFIX, KINDS, PATH_PREFIX, WAITS, CriticalPath
from fabric.orchestrator.store import JobStore
from tests.conftest import make_settings
from tests.scripted_federation import SPECS, backend_factory


def test_overlapping_waits_and_work_are_counted_once() -> None:
    async def main() -> tuple[dict[str, float], float]:
        path = CriticalPath()
        started = time.perf_counter()

        async def call(seconds: float) -> None:
            await path.waiting("calls", asyncio.sleep(seconds))
            path.call_done(seconds, seconds / 2)  # the agent says it spent half of the round trip

        async def work_while_calls_fly() -> None:
            await asyncio.sleep(0.01)
            with path.doing("cluster"):
                time.sleep(0.02)  # on-loop work: the loop cannot serve anything else meanwhile
                with path.doing("embed"):
                    time.sleep(0.01)

        # two parallel calls, a router query and a publish overlapping them, on-loop work inside
        await asyncio.gather(
            call(0.06),
            call(0.05),
            path.waiting("router", asyncio.sleep(0.03)),
            path.waiting("publish", asyncio.sleep(0.01)),
            work_while_calls_fly(),
        )
        await path.waiting("router", asyncio.sleep(0.02))  # alone: all of it is the router's
        return path.breakdown(), time.perf_counter() - started

    out, wall = asyncio.run(main())
    assert set(out) == {PATH_PREFIX + k for k in KINDS} | {HOPS_PREFIX + w for w in WAITS}
    assert sum(out[PATH_PREFIX + k] for k in KINDS) <= wall
    assert 0.02 <= out["path.cluster"] < 0.03 and 0.01 <= out["path.embed"] < 0.02
    # the calls hid the router and the publish: only the lone router query is the router's
    assert 0.02 <= out["path.router"] < 0.03 and out["path.publish"] == 0.0
    calls = out["path.agents"] + out["path.broker"]
    assert 0.03 - 0.005 <= calls < 0.06  # the calls' 60 ms less the 30 ms of on-loop work inside them
    assert abs(out["path.agents"] - out["path.broker"]) < 1e-5  # agents reported half of every call
    assert out["hops.calls"] == 1.0 and out["hops.router"] == 2.0 and out["hops.publish"] == 1.0


def test_store_commits_are_counted_as_store_time(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    path = CriticalPath(store_busy=lambda: store.busy_s)
    before = store.busy_s
    for i in range(50):
        store.checkpoint("job-1", f"k{i}", {"i": i})  # no loop running: committed at once
    assert store.busy_s > before
    out = path.breakdown()
    assert 0 < out["path.store"] <= store.busy_s - before + 1e-6
    store.close()


def test_a_job_reports_where_its_time_went(mosquitto, tmp_path, embedder) -> None:
    # full teams (no floor): every node drafts with several agents and refines
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0, assign_floor=0.0)

    async def main() -> tuple[JobResult, float]:
        factory = backend_factory(done_from_round=99)  # every round runs
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            started = time.perf_counter()
            result = await fed.run_job(
                "My father has sudden chest pain. What should we do?",
                JobOptions(max_proposers=2, agents_per_node=3, refine_rounds=3, subtasks_max=4),
            )
            return result, time.perf_counter() - started

    result, wall = asyncio.run(main())
    assert result.status == "completed", result.failure_reason
    timings = result.timings
    assert {"decompose", "assign", "execute", "synthesise", "total"} <= set(timings)  # the keys from before stay
    path = {k: v for k, v in timings.items() if k.startswith(PATH_PREFIX)}
    assert set(path) == {PATH_PREFIX + k for k in KINDS}
    assert sum(path.values()) <= wall
    assert sum(path.values()) >= 0.5 * timings["execute"]  # the breakdown covers the job, not a sliver of it
    # route and assign (and the synthesiser's route when synthesis asks an agent) went to the router
    assert timings["hops.router"] >= 2 and timings["path.router"] > 0
    # decompose, 4 nodes' drafts, 3 refine rounds each: at least 1 + 4 + 3 sequential call rounds
    assert timings["hops.calls"] >= 8 and timings["path.agents"] > 0 and timings["path.broker"] > 0
    assert timings["path.cluster"] > 0 and timings["path.store"] > 0 and timings["hops.publish"] > 0
