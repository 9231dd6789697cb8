"""The bus: its own logic on the in-process broker; what needs a real broker (a dead one, a restart,
the iotcore broker) on mosquitto and iotcore. tests/test_transport_contract.py holds both transports
to the broker semantics."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fabric import topics
from fabric.aio import wait_within
from fabric.broker import Mosquitto
from fabric.bus import Bus, BusError, Incoming, PayloadTooLarge, RemoteError, RequestTimeout
from fabric.envelope import make
from fabric.messages import AgentStatus, ErrorReply, TaskRequest, TaskResult
from fabric.settings import Settings
from tests.conftest import make_settings
from tests.fabric_helpers import body, envelope, eventually


def test_request_response_and_shared_subscription(any_broker, tmp_path) -> None:
    settings = make_settings(any_broker.url, tmp_path)

    async def main() -> None:
        async with Bus(settings, "srv") as srv, Bus(settings, "cli") as cli:

            async def serve(msg: Incoming) -> None:
                assert msg.envelope is not None
                await srv.reply(msg.envelope, TaskResult(task_id=body(msg).task_id, agent_id="x"))

            await srv.subscribe(topics.shared("g", topics.agent_tasks("x")), serve, body_types=TaskRequest)
            reply = await cli.request(
                topics.agent_tasks("x"), TaskRequest(task_id="t1", task_kind="k", agent_id="x"), expect=TaskResult
            )
            assert reply.body.task_id == "t1" and reply.sender == "srv"

    asyncio.run(main())


def test_request_without_responder_times_out_clearly(memory_settings: Settings) -> None:
    settings = memory_settings

    async def main() -> None:
        async with Bus(settings, "lonely") as cli:
            with pytest.raises(
                RequestTimeout,
                match=r"no reply to task on foa/agents/nobody/tasks within 0.5s: is agent nobody running\?",
            ):
                await cli.request(
                    topics.agent_tasks("nobody"),
                    TaskRequest(task_id="t", task_kind="k", agent_id="nobody"),
                    timeout=0.5,
                    what="agent nobody",
                )

    asyncio.run(main())


def test_dead_broker_is_a_clear_error(tmp_path) -> None:
    from fabric.broker import free_port

    settings = make_settings(f"mqtt://127.0.0.1:{free_port()}", tmp_path)

    async def main() -> None:
        with pytest.raises(BusError, match="cannot reach MQTT broker"):
            await Bus(settings, "x").connect()

    asyncio.run(main())


def test_bad_payloads_are_rejected_counted_and_serving_continues(any_broker, tmp_path) -> None:
    """Malformed, oversized, wrong-kind and wrong-schema payloads on every subscribed topic."""
    settings = make_settings(any_broker.url, tmp_path, max_payload_bytes=4096)

    async def main() -> None:
        got: list[str] = []
        loose = make_settings(any_broker.url, tmp_path)  # the sender does not enforce the victim's limit
        async with Bus(settings, "victim") as victim, Bus(loose, "attacker", persistent=False) as attacker:
            # retained statuses left by earlier tests on this broker are not part of this test
            await victim.subscribe(
                "foa/agents/+/status",
                lambda m: None if m.retain else got.append(body(m).agent_id),
                body_types=AgentStatus,
            )
            await victim.subscribe("foa/agents/v/tasks", lambda m: got.append(body(m).task_id), body_types=TaskRequest)
            bad = [
                b"not json at all",
                b"{}",
                json.dumps({"schema": "foa/1", "kind": "status", "body": {"agent_id": 5}}).encode(),  # wrong field type
                json.dumps({"schema": "foa/999", "kind": "status", "body": {}}).encode(),  # unknown schema version
                make(TaskResult(task_id="t", agent_id="x")).to_json(),  # wrong kind for the topic
                b"x" * 5000,  # oversized
            ]
            for topic in ("foa/agents/a/status", "foa/agents/v/tasks", victim.reply_topic):
                for payload in bad:
                    await attacker.publish(topic, payload, qos=1)
            with pytest.raises(PayloadTooLarge):
                await victim.publish(
                    "foa/agents/v/tasks", make(TaskRequest(task_id="x" * 5000, task_kind="k", agent_id="v"))
                )
            await attacker.publish("foa/agents/a/status", AgentStatus(agent_id="a", status="online"))
            await attacker.publish("foa/agents/v/tasks", TaskRequest(task_id="good", task_kind="k", agent_id="v"))
            await eventually(lambda: len(got) == 2, what="the good messages")
            assert sorted(got) == ["a", "good"]
            assert victim.stats.rejected_total == 3 * len(bad)  # every one, on every topic
            assert victim.stats.rejected["oversized"] == 3
            assert victim.stats.rejected["malformed"] >= 10

    asyncio.run(main())


def test_duplicate_envelopes_are_dropped(memory_settings: Settings) -> None:
    settings = memory_settings

    async def main() -> None:
        got: list[str] = []
        async with Bus(settings, "dst") as dst, Bus(settings, "src") as src:
            await dst.subscribe("foa/agents/d/tasks", lambda m: got.append(envelope(m).id), body_types=TaskRequest)
            env = make(TaskRequest(task_id="t", task_kind="k", agent_id="d"))
            for _ in range(3):  # QoS 1 may redeliver: same envelope id three times
                await src.publish("foa/agents/d/tasks", env)
            await src.publish("foa/agents/d/tasks", TaskRequest(task_id="t2", task_kind="k", agent_id="d"))
            await eventually(lambda: len(got) == 2)
            await asyncio.sleep(0.2)
            assert len(got) == 2 and dst.stats.duplicates == 2

    asyncio.run(main())


def test_replies_are_typed_as_expected_and_untyped_without_expect(memory_settings: Settings) -> None:
    """A client's replies of a kind it asked for are validated in one pass; a request without
    `expect` still gets the body as a dict, and an error reply still raises."""

    async def main() -> None:
        async with Bus(memory_settings, "srv") as srv, Bus(memory_settings, "cli") as cli:

            async def serve(msg: Incoming) -> None:
                task = body(msg)
                if task.task_kind == "fail":
                    await srv.reply(envelope(msg), ErrorReply(code="unsupported", message="no such kind"))
                else:
                    await srv.reply(envelope(msg), TaskResult(task_id=task.task_id, agent_id="x", output={"n": 1}))

            await srv.subscribe(topics.agent_tasks("x"), serve, body_types=TaskRequest)
            ask = topics.agent_tasks("x")
            typed_reply = await cli.request(
                ask, TaskRequest(task_id="t1", task_kind="k", agent_id="x"), expect=TaskResult
            )
            assert isinstance(typed_reply.body, TaskResult) and typed_reply.body.output == {"n": 1}
            plain = await cli.request(ask, TaskRequest(task_id="t2", task_kind="k", agent_id="x"))
            assert plain.kind == "task_result" and plain.body["task_id"] == "t2"
            with pytest.raises(RemoteError, match="unsupported: no such kind"):
                await cli.request(ask, TaskRequest(task_id="t3", task_kind="fail", agent_id="x"), expect=TaskResult)
            assert cli.stats.rejected_total == 0

    asyncio.run(main())


def test_retained_last_will_and_message_expiry(any_broker, tmp_path) -> None:
    settings = make_settings(any_broker.url, tmp_path)

    async def main() -> None:
        from fabric.bus import Will

        will = make(AgentStatus(agent_id="w", status="offline"))
        seen: list[str] = []
        async with Bus(settings, "watcher") as watcher:
            doomed = Bus(settings, "doomed", will=Will(topics.agent_status("w"), will.to_json()))
            await doomed.connect()
            await doomed.publish(topics.agent_status("w"), AgentStatus(agent_id="w", status="online"), retain=True)
            await watcher.subscribe(
                topics.agent_status("w"), lambda m: seen.append(body(m).status), body_types=AgentStatus
            )
            await eventually(lambda: seen == ["online"], what="retained online")
            await doomed.close(clean=False)  # drop the socket: the broker fires the will
            await eventually(lambda: seen[-1] == "offline", timeout=10, what="last-will")

    asyncio.run(main())


def test_broker_restart_delivers_inflight_qos1_tasks(tmp_path) -> None:
    """mosquitto with persistence restarts while QoS 1 tasks are in flight; all arrive, once.

    This is the bus-level guarantee for a persistent session's own subscription. mosquitto 2.0
    does not keep messages for a *shared* subscription across a restart, so task dispatch adds
    an application-level retry keyed on task_id (tests/test_agent_sdk.py covers that path).
    """
    broker = Mosquitto(data_dir=tmp_path / "broker")
    broker.start()
    settings = make_settings(broker.url, tmp_path)
    n = 60

    async def main() -> None:
        got: list[str] = []

        async def slow(msg: Incoming) -> None:
            await asyncio.sleep(0.02)
            got.append(body(msg).task_id)

        worker = Bus(settings, "worker")
        sender = Bus(settings, "sender")
        await worker.connect()
        await sender.connect()
        await worker.subscribe(topics.agent_tasks("w"), slow, body_types=TaskRequest, durable=True)
        for i in range(n // 2):
            await sender.publish(
                topics.agent_tasks("w"), TaskRequest(task_id=f"t{i}", task_kind="k", agent_id="w"), wait=False
            )
        await asyncio.sleep(0.1)
        await asyncio.to_thread(broker.restart)  # graceful stop saves the queue
        for i in range(n // 2, n):  # published while reconnecting: paho queues and resends
            await sender.publish(
                topics.agent_tasks("w"), TaskRequest(task_id=f"t{i}", task_kind="k", agent_id="w"), wait=False
            )
        await eventually(
            lambda: len(set(got)) == n,
            timeout=30,
            what=f"all {n} tasks (got {len(set(got))}, worker {worker.stats}, sender {sender.stats}, "
            f"connected {worker.connected} {sender.connected})",
        )
        await asyncio.sleep(0.3)
        assert sorted(set(got)) == sorted(f"t{i}" for i in range(n))
        assert worker.stats.reconnects >= 1 and sender.stats.reconnects >= 1
        await worker.close()
        await sender.close()

    try:
        asyncio.run(main())
    finally:
        broker.stop()


def test_memory_urls_name_a_broker_of_this_process(tmp_path: Path) -> None:
    """memory://NAME reaches the MemoryBroker registered as NAME, only while it is; a clear error
    otherwise, and one name cannot be taken twice."""
    from fabric.bus import BrokerAddress
    from fabric.transports.memory import MemoryBroker

    assert BrokerAddress.parse("memory://unit").url == "memory://unit"
    with pytest.raises(ValueError, match="memory://NAME"):
        BrokerAddress.parse("memory://")
    settings = make_settings("memory://unit", tmp_path)

    async def main() -> None:
        with pytest.raises(BusError, match="no in-memory broker named 'unit'"):
            await Bus(settings, "early").connect()
        with MemoryBroker("unit") as broker:
            with pytest.raises(BusError, match="already running"):
                MemoryBroker("unit").start()
            async with Bus(settings, "member") as bus:
                got: list[str] = []
                await bus.subscribe("foa/agents/m/status", lambda m: got.append(body(m).status), body_types=AgentStatus)
                await bus.publish("foa/agents/m/status", AgentStatus(agent_id="m", status="online"))
                await eventually(lambda: got == ["online"])
                broker.drop_connections()  # a network failure: the bus reconnects and resubscribes
                await eventually(lambda: bus.connected and bus.stats.reconnects >= 1, what="the reconnect")
                await bus.publish("foa/agents/m/status", AgentStatus(agent_id="m", status="offline"))
                await eventually(lambda: got == ["online", "offline"], what="delivery after the reconnect")
        with pytest.raises(BusError, match="no in-memory broker named 'unit'"):
            await Bus(settings, "late").connect()

    asyncio.run(main())


def test_a_durable_handler_cancelled_before_it_starts_leaves_no_coroutine_unawaited(
    memory_settings: Settings,
) -> None:
    """The loop closing between a message's arrival and its handler's start (a service stopping)
    cancels the task before it runs: the handler's coroutine must not have been made yet, or it is
    never awaited (a RuntimeWarning seen once in a full test run). The message stays unacknowledged:
    the broker redelivers it."""
    import gc
    import warnings
    from dataclasses import dataclass

    @dataclass
    class Arrived:
        topic: str
        payload: bytes
        qos: int = 1
        retain: bool = False
        mid: int = 7

    async def handler(_: Incoming) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        async with Bus(memory_settings, "dst") as dst:
            await dst.subscribe("foa/agents/d/tasks", handler, body_types=TaskRequest, durable=True)
            payload = make(TaskRequest(task_id="t", task_kind="k", agent_id="d")).to_json()
            dst._dispatch(Arrived("foa/agents/d/tasks", payload))
            spawned = list(dst._tasks)
            assert spawned
            for task in spawned:
                task.cancel()
            await asyncio.gather(*spawned, return_exceptions=True)
            assert dst.stats.delivered == 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]


def test_a_cancellation_in_the_same_turn_as_the_result_is_not_lost() -> None:
    """Python 3.11's `asyncio.wait_for` returns a future's result when the waiter is cancelled in
    the same loop turn as the future completes, and the cancellation is gone (gh-86296). The
    fabric waits with `wait_within`, which keeps it: a SIGTERM'd `foa run` must stop."""

    async def race(wait: Any) -> str:
        fut = asyncio.get_running_loop().create_future()
        waiter = asyncio.create_task(wait(fut, 10))
        await asyncio.sleep(0)  # the waiter is waiting
        fut.set_result("result")
        waiter.cancel()
        try:
            return str(await waiter)
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(race(wait_within)) == "cancelled"
    if sys.version_info < (3, 12):  # the flaw this works around, so the test shows it is still needed
        assert asyncio.run(race(asyncio.wait_for)) == "result"

    async def times_out() -> None:
        await wait_within(asyncio.sleep(10), 0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(times_out())
