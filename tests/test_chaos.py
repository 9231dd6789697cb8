"""Fault tolerance with real processes: the short version of benchmarks/chaos.py.

mosquitto (persistence on), `foa router`, `foa orchestrator` and five scripted agent worker
processes (er-doc with two replicas); 15 jobs while two agents are SIGKILLed and restarted, the
broker restarts once and the orchestrator is SIGKILLed and restarted once. Every job must end
completed; none lost, none answered twice. Also the bus behaviour the chaos run depends on: a
restarted replica serves the tasks that were queued in its broker session while it was dead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.chaos import ChaosConfig, run_chaos
from fabric.broker import Mosquitto
from fabric.bus import Bus, Incoming
from fabric.messages import AgentStatus
from fabric.settings import Settings


def test_jobs_survive_agent_broker_and_orchestrator_crashes(tmp_path: Path) -> None:
    config = ChaosConfig(
        jobs=15,
        concurrency=4,
        pace_s=1.5,
        replicas={"er-doc": 2, "cardio": 1, "gp": 1, "writer": 1},
        agent_kills=2,
        kill_every_s=4.0,
        broker_restart_at=0.2,
        orchestrator_restart_at=0.5,
        job_timeout_s=120,
    )
    started = time.monotonic()
    out = run_chaos(config, tmp_path)
    assert time.monotonic() - started < 180, "the short chaos run must stay under 3 minutes"
    assert out["broker_restarts"] == 1 and out["orchestrator_restarts"] == 1
    assert out["agent_kills"] == 2 and out["agent_restarts"] == 2
    assert (out["lost"], out["duplicated"], out["failed"]) == (0, 0, 0), out
    assert out["completed"] == 15
    assert out["store_states"] == {"completed": 15}  # the orchestrator's own record agrees


def test_restarted_replica_serves_tasks_queued_in_its_session(mosquitto: Mosquitto) -> None:
    """mosquitto gives a dead member of a shared subscription its share of the messages; the
    restarted client (same id) gets them right after CONNACK, before it re-subscribed: they
    must wait for its handler instead of being acknowledged and dropped."""
    settings = Settings(broker_url=mosquitto.url, keepalive_s=2, request_timeout_s=5)
    topic = "foa/agents/queued-test/tasks"
    shared = f"$share/agent/{topic}"

    async def main() -> tuple[int, int]:
        got = {"a": 0, "b": 0}

        def count(name: str) -> Callable[[Incoming], None]:
            def handler(msg: Incoming) -> None:
                got[name] += 1

            return handler

        a, b = Bus(settings, "queued-a"), Bus(settings, "queued-b")
        await a.connect()
        await b.connect()
        await a.subscribe(shared, count("a"), body_types=AgentStatus, durable=True)
        await b.subscribe(shared, count("b"), body_types=AgentStatus, durable=True)
        await b.close(clean=False)  # dies like a SIGKILL: the session stays
        async with Bus(settings, "queued-pub", persistent=False) as pub:
            for _ in range(10):
                await pub.publish(topic, AgentStatus(agent_id="queued-test", status="online"))
        await asyncio.sleep(0.5)
        b2 = Bus(settings, "queued-b")
        await b2.connect()
        await asyncio.sleep(0.3)  # the queued messages arrive now, with no handler yet
        await b2.subscribe(shared, count("b"), body_types=AgentStatus, durable=True)
        await asyncio.sleep(0.5)
        await a.close()
        await b2.close()
        return got["a"], got["b"]

    a_got, b_got = asyncio.run(main())
    assert a_got + b_got == 10, (a_got, b_got)
    assert b_got > 0  # the broker did queue some for the dead member, and none were dropped


def test_two_replicas_on_postgres_one_killed_for_good(tmp_path: Path) -> None:
    """Two orchestrators share a PostgreSQL job store (a throwaway cluster the run starts); one is
    SIGKILLed mid-run and never comes back: the other takes over its jobs when their leases
    expire and every job completes, once."""
    config = ChaosConfig(
        jobs=12, concurrency=4, pace_s=1.0, replicas={"er-doc": 1, "cardio": 1, "gp": 1, "writer": 1}, agent_kills=0,
        broker_restart_at=2.0, orchestrator_restart_at=0.3, job_timeout_s=150, orchestrators=2, store="postgres",
        lease_s=4.0, llm_latency_s=0.3,
    )  # fmt: skip
    out = run_chaos(config, tmp_path)
    assert out["orchestrator_kills"] == 1 and out["orchestrator_restarts"] == 0
    assert (out["lost"], out["duplicated"], out["failed"]) == (0, 0, 0), out
    assert out["completed"] == 12 and out["store_states"] == {"completed": 12}
    assert out["takeovers"] >= 1, out  # the dead replica held jobs, and they finished on the other
    assert out["takeover_p99_s"] <= 4.0 + 2.0 + 2.0  # lease + scan interval + slack on 2 shared cores


def test_paused_replica_cannot_write_after_takeover(tmp_path: Path) -> None:
    """SIGSTOP one of two replicas past its lease: its jobs are taken over; after SIGCONT its
    writes carry a stale fencing token, are rejected, and it abandons the jobs (no duplicate)."""
    config = ChaosConfig(
        jobs=10, concurrency=4, pace_s=0.8, replicas={"er-doc": 1, "cardio": 1, "gp": 1, "writer": 1}, agent_kills=0,
        broker_restart_at=2.0, orchestrator_restart_at=0.3, job_timeout_s=150, orchestrators=2, store="postgres",
        lease_s=3.0, orchestrator_pause_s=9.0, llm_latency_s=0.3,
    )  # fmt: skip
    out = run_chaos(config, tmp_path)
    assert out["orchestrator_pauses"] == 1
    assert (out["lost"], out["duplicated"], out["failed"]) == (0, 0, 0), out
    assert out["completed"] == 10 and out["store_states"] == {"completed": 10}
    assert out["takeovers"] >= 1, out
    paused_log = (tmp_path / "logs" / "orchestrator.log").read_text()
    assert "lease lost" in paused_log  # it woke up, tried to go on, and was fenced out
