"""The agent SDK on a real broker: discovery, last-will, versions, replicas, redelivery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml

from agents.sdk import Agent
from fabric import topics
from fabric.broker import Mosquitto
from fabric.bus import Bus
from fabric.dispatch import TaskError, dispatch
from fabric.messages import TaskRequest
from fabric.registry import Registry
from fabric.vcv import VCV
from tests.conftest import make_settings
from tests.fabric_helpers import eventually, spec


def vcv_of(registry: Registry, agent_id: str) -> VCV | None:
    entry = registry.get(agent_id)
    return entry.vcv if entry is not None else None


def test_discovery_from_retained_vcvs_by_a_late_client(any_broker, tmp_path, embedder) -> None:
    settings = make_settings(any_broker.url, tmp_path)

    async def main() -> None:
        agents = [
            Agent(spec(f"late-{i}", d), settings, broker=any_broker.address, embedder=embedder)
            for i, d in enumerate(["cardiology", "translation", "maths"])
        ]
        for a in agents:
            await a.start()
        registry = Registry()
        async with Bus(settings, "late-client", broker=any_broker.address) as bus:  # connects after the agents
            await registry.attach(bus)
            await eventually(
                lambda: (
                    {f"late-{i}" for i in range(3)}
                    <= {e.vcv.agent_id for e in registry.live() if e.status == "online" and e.vcv}
                ),
                what="retained VCVs and statuses",
            )
            entry = registry.get("late-1")
            assert entry is not None and entry.status == "online" and entry.vcv is not None
            assert entry.vcv.description == "translation" and entry.vcv.embedding_model.endswith("all-MiniLM-L6-v2")
        for a in agents:
            await a.leave()

    asyncio.run(main())


@pytest.mark.in_memory
def test_versions_bump_on_change_and_survive_restart(settings, embedder) -> None:
    async def main() -> None:
        registry = Registry()
        async with Bus(settings, "watch-v") as bus:
            await registry.attach(bus)
            a = Agent(spec("versioned", "first description"), settings, embedder=embedder)
            await a.start()
            assert a.vcv is not None and a.vcv.version == 1
            await a.update(description="second description")
            assert a.vcv.version == 2
            await eventually(lambda: (v := vcv_of(registry, "versioned")) is not None and v.version == 2, what="v2")
            await a.stop()
            again = Agent(spec("versioned", "second description"), settings, embedder=embedder)  # restart, same content
            await again.start()
            assert again.vcv is not None and again.vcv.version == 2  # continues from the broker's retained VCV
            changed = Agent(spec("versioned", "third description"), settings, embedder=embedder)
            await changed.start()
            assert changed.vcv is not None and changed.vcv.version == 3
            await eventually(
                lambda: (v := vcv_of(registry, "versioned")) is not None and v.description == "third description",
                what="v3",
            )
            # a late, older VCV (e.g. a stale replica) is ignored by receivers
            await bus.publish(topics.agent_vcv("versioned"), a.vcv, retain=False)
            await asyncio.sleep(0.3)
            assert (v := vcv_of(registry, "versioned")) is not None and v.version == 3 and registry.stale_versions >= 1
            await changed.leave()
            await again.stop()
            await eventually(lambda: registry.get("versioned") is None, what="tombstone on leave")

    asyncio.run(main())


@pytest.mark.in_memory
def test_two_replicas_split_100_tasks_none_lost_none_twice(settings, embedder) -> None:
    async def main() -> None:
        served: Counter[str] = Counter()
        runs: Counter[str] = Counter()
        replicas = []
        for rid in ("r1", "r2"):
            agent = Agent(spec("pair", "echo agent"), settings, embedder=embedder, replica_id=rid)

            async def handle(task: TaskRequest, rid: str = rid) -> dict[str, str]:
                served[rid] += 1
                runs[task.task_id] += 1
                await asyncio.sleep(0.005)
                return {"by": rid}

            agent.add_handler("echo", handle)
            await agent.start()
            replicas.append(agent)
        async with Bus(settings, "boss") as boss:
            results = await asyncio.gather(
                *(dispatch(boss, "pair", "echo", {"i": i}, timeout=20, task_id=f"t{i}") for i in range(100))
            )
        assert len(results) == 100 and {r.task_id for r in results} == {f"t{i}" for i in range(100)}
        assert sum(runs.values()) == 100 and max(runs.values()) == 1  # none twice
        assert served["r1"] > 10 and served["r2"] > 10, served  # both replicas took a share
        for a in replicas:
            await a.stop()

    asyncio.run(main())


@pytest.mark.in_memory
def test_handler_errors_and_unknown_kinds_answer_clearly(settings, embedder) -> None:
    async def main() -> None:
        agent = Agent(spec("fragile", "breaks"), settings, embedder=embedder)

        def boom(task: TaskRequest) -> dict[str, str]:
            raise ZeroDivisionError("division by zero")

        agent.add_handler("boom", boom)
        await agent.start()
        async with Bus(settings, "asker") as bus:
            with pytest.raises(TaskError, match="ZeroDivisionError: division by zero"):
                await dispatch(bus, "fragile", "boom", {}, timeout=5)
            with pytest.raises(TaskError, match="no handler for task kind 'nope'"):
                await dispatch(bus, "fragile", "nope", {}, timeout=5)
            # the agent keeps serving after both
            agent.add_handler("ok", lambda t: {"fine": True})
            assert (await dispatch(bus, "fragile", "ok", {}, timeout=5)).output == {"fine": True}
        await agent.stop()

    asyncio.run(main())


def test_tasks_survive_a_broker_restart_via_resend(tmp_path, embedder) -> None:
    """Shared-subscription queues may be lost with the broker; dispatch re-sends, the agent runs each once."""
    broker = Mosquitto(data_dir=tmp_path / "b").start()
    settings = make_settings(broker.url, tmp_path)
    runs: Counter[str] = Counter()

    async def main() -> None:
        agent = Agent(spec("steady", "slow worker"), settings, embedder=embedder)

        async def slow(task: TaskRequest) -> dict[str, str]:
            runs[task.task_id] += 1
            await asyncio.sleep(0.3)
            return {}

        agent.add_handler("work", slow)
        await agent.start()
        async with Bus(settings, "client-r") as bus:
            jobs = [
                asyncio.create_task(dispatch(bus, "steady", "work", {}, timeout=40, retry_every=3, task_id=f"t{i}"))
                for i in range(20)
            ]
            await asyncio.sleep(0.15)
            await asyncio.to_thread(broker.restart)
            results = await asyncio.gather(*jobs)
        assert sorted(r.task_id for r in results) == sorted(f"t{i}" for i in range(20))
        assert max(runs.values()) == 1, runs
        await agent.stop()

    try:
        asyncio.run(main())
    finally:
        broker.stop()


def test_sigkilled_agent_shows_offline_within_keepalive(mosquitto, tmp_path) -> None:
    spec_file = tmp_path / "victim.yaml"
    spec_file.write_text(yaml.safe_dump({"id": "victim", "description": "an agent about to be killed"}))
    env = os.environ | {"FOA_BROKER_URL": mosquitto.url, "FOA_KEEPALIVE_S": "2", "FOA_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric.cli", "agent", "run", str(spec_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        registry = Registry()
        async with Bus(settings, "undertaker") as bus:
            await registry.attach(bus)
            await eventually(
                lambda: (e := registry.get("victim")) is not None and e.status == "online",
                timeout=90,
                what="victim online",
            )
            killed_at = time.monotonic()
            os.killpg(proc.pid, signal.SIGKILL)
            await eventually(
                lambda: (e := registry.get("victim")) is not None and e.status == "offline",
                timeout=10,
                what="offline via last-will",
            )
            # MQTT: the will fires after 1.5 × keep-alive without traffic
            assert time.monotonic() - killed_at <= 2 * 1.5 + 1.5

    try:
        asyncio.run(main())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_typed_handlers_over_the_bus(settings, embedder) -> None:
    """A handler typed by its input model serves that kind; `dispatch_task` returns the output
    model; a malformed input is refused by the SDK with the field that is wrong."""
    from fabric.dispatch import dispatch_task
    from fabric.tasks import DRAFT, DraftInput, DraftOutput

    async def main() -> None:
        agent = Agent(spec("typed", "answers drafts in capitals"), settings, embedder=embedder)

        @agent.handler
        async def draft(task: DraftInput) -> DraftOutput:
            return DraftOutput(answer=task.subtask.upper(), confidence=0.8)

        await agent.start()
        async with Bus(settings, "typed-asker") as bus:
            answer = await dispatch_task(bus, "typed", DRAFT, DraftInput(question="q", subtask="shout"), timeout=5)
            assert (
                isinstance(answer.output, DraftOutput)
                and answer.output.answer == "SHOUT"
                and answer.result.agent_id == "typed"
            )
            with pytest.raises(TaskError, match="invalid draft input.*subtask"):
                await dispatch(bus, "typed", "draft", {"question": "q"}, timeout=5)
        assert agent.served == 1 and agent.failed == 1
        await agent.stop()

    asyncio.run(main())
