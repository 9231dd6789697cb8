"""One contract, two brokers: every test runs through the `Bus` against mosquitto (PahoTransport)
and against the in-process MemoryBroker (MemoryTransport), as FastStream's `tests/brokers/base`
suites do. A behaviour the fabric relies on is written here once; a transport that passes it can
carry the fabric's unit tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from fabric import topics
from fabric.broker import Mosquitto
from fabric.bus import Bus, BusError, Incoming, PayloadTooLarge, Will
from fabric.envelope import make
from fabric.messages import AgentStatus, JobEvent, TaskRequest, TaskResult
from fabric.settings import Settings
from fabric.transports.memory import MemoryBroker
from tests.conftest import make_settings
from tests.fabric_helpers import eventually

pytestmark = pytest.mark.timeout(120)

BROKER_MAX = 64 * 1024  # the brokers' own payload limit in this suite (clients allow more)


@dataclass
class Case:
    """One broker under contract: how to reach it and a fresh topic namespace per test."""

    name: str
    url: str
    data_dir: Path
    prefix: str
    drop_connections: Callable[[], None]  # every client loses its connection; the broker keeps its state

    def settings(self, **overrides: object) -> Settings:
        return make_settings(self.url, self.data_dir, **overrides)

    def topic(self, *levels: str) -> str:
        return "/".join(("contract", self.prefix, *levels))


@pytest.fixture(scope="module")
def contract_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(
        data_dir=tmp_path_factory.mktemp("contract-mosquitto"), extra_conf=f"message_size_limit {BROKER_MAX}"
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=["mosquitto", "memory"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    prefix = uuid.uuid4().hex[:8]
    if request.param == "mosquitto":
        mosquitto = request.getfixturevalue("contract_mosquitto")
        yield Case("mosquitto", mosquitto.url, tmp_path, prefix, mosquitto.restart)  # a graceful restart saves state
        return
    with MemoryBroker(f"contract-{prefix}", max_payload_bytes=BROKER_MAX) as broker:
        yield Case("memory", broker.url, tmp_path, prefix, broker.drop_connections)


def status(agent_id: str, state: Literal["online", "offline"] = "online") -> AgentStatus:
    return AgentStatus(agent_id=agent_id, status=state)


def agent_of(msg: Incoming) -> str:
    assert msg.envelope is not None
    return str(msg.envelope.body.agent_id)


def collector(into: list[str]) -> Callable[[Incoming], None]:
    def handler(msg: Incoming) -> None:
        into.append(agent_of(msg))

    return handler


def test_publish_subscribe_with_wildcards(case: Case) -> None:
    async def main() -> None:
        exact: list[str] = []
        plus: list[str] = []
        hashed: list[str] = []
        async with (
            Bus(case.settings(), f"sub-{case.prefix}", persistent=False) as sub,
            Bus(case.settings(), f"pub-{case.prefix}", persistent=False) as pub,
        ):
            await sub.subscribe(case.topic("a", "x"), collector(exact), body_types=AgentStatus)
            await sub.subscribe(case.topic("+", "x"), collector(plus), body_types=AgentStatus)
            await sub.subscribe(case.topic("#"), collector(hashed), body_types=AgentStatus)
            await pub.publish(case.topic("a", "x"), status("one"))
            await pub.publish(case.topic("b", "x"), status("two"))
            await pub.publish(case.topic("b", "y", "z"), status("three"), qos=0)
            await eventually(lambda: len(hashed) == 3, what="all three on #")
            # wildcards at the root never match a $-topic; the exact filter does
            dollar = f"$contract-{case.prefix}/x"
            root: list[str] = []
            named: list[str] = []
            await sub.subscribe("#", lambda m: root.append(m.topic), body_types=None)
            await sub.subscribe("+/x", lambda m: root.append(m.topic), body_types=None)
            await sub.subscribe(dollar, collector(named), body_types=AgentStatus)
            await pub.publish(dollar, status("dollar"))
            await eventually(lambda: named == ["dollar"], what="the $-topic on its exact filter")
            await asyncio.sleep(0.1)
            assert exact == ["one"] and plus == ["one", "two"] and hashed == ["one", "two", "three"]
            assert not [t for t in root if t.startswith("$")]

    asyncio.run(main())


def test_qos1_unacknowledged_message_is_redelivered_to_the_resumed_session(case: Case) -> None:
    """A durable handler that never finished leaves its message unacknowledged; the next
    connection of the same persistent session gets it again, and once acknowledged, never more."""
    topic = case.topic("tasks")
    client_id = f"worker-{case.prefix}"

    async def main() -> None:
        started = asyncio.Event()
        again: list[str] = []

        async def stuck(msg: Incoming) -> None:
            started.set()
            await asyncio.Event().wait()  # a crash before the handler answered

        async def serve(msg: Incoming) -> None:
            assert msg.envelope is not None
            again.append(msg.envelope.body.task_id)

        async with Bus(case.settings(), f"sender-{case.prefix}", persistent=False) as sender:
            first = Bus(case.settings(), client_id)
            await first.connect()
            await first.subscribe(topic, stuck, body_types=TaskRequest, durable=True)
            await sender.publish(topic, TaskRequest(task_id="t1", task_kind="k", agent_id="w"))
            await asyncio.wait_for(started.wait(), 10)
            await first.close(clean=False)

            second = Bus(case.settings(), client_id)
            await second.connect()
            await second.subscribe(topic, serve, body_types=TaskRequest, durable=True)
            await eventually(lambda: again == ["t1"], what="the redelivered task")
            await asyncio.sleep(0.2)  # the acknowledgement reaches the broker
            await second.close(clean=False)

            third = Bus(case.settings(), client_id)
            await third.connect()
            await third.subscribe(topic, serve, body_types=TaskRequest, durable=True)
            await asyncio.sleep(0.5)
            assert again == ["t1"]  # acknowledged: not sent a third time
            await third.close()

    asyncio.run(main())


def test_a_dropped_connection_reconnects_resubscribes_and_delivers_what_was_published_meanwhile(case: Case) -> None:
    topic = case.topic("after-drop")

    async def main() -> None:
        got: list[str] = []
        async with (
            Bus(case.settings(), f"stay-{case.prefix}") as stay,
            Bus(case.settings(), f"talk-{case.prefix}", persistent=False) as talk,
        ):
            await stay.subscribe(topic, collector(got), body_types=AgentStatus, durable=True)
            await talk.publish(topic, status("before"))
            await eventually(lambda: got == ["before"], what="delivery before the drop")
            await asyncio.to_thread(case.drop_connections)
            await talk.publish(topic, status("meanwhile"), wait=False)  # kept by the client until it is back
            await eventually(lambda: stay.connected and talk.connected, what="both reconnected")
            await talk.publish(topic, status("after"))
            await eventually(lambda: got == ["before", "meanwhile", "after"], what="delivery after the reconnect")
            assert stay.stats.reconnects >= 1 and talk.stats.reconnects >= 1

    asyncio.run(main())


def test_retained_message_reaches_late_subscribers_until_cleared(case: Case) -> None:
    topic = case.topic("agents", "r", "status")

    async def main() -> None:
        async with Bus(case.settings(), f"pub-{case.prefix}", persistent=False) as pub:
            await pub.publish(topic, status("r"), retain=True)
            seen: list[tuple[str, bool]] = []
            async with Bus(case.settings(), f"late-{case.prefix}", persistent=False) as late:
                await late.subscribe(topic, lambda m: seen.append((agent_of(m), m.retain)), body_types=AgentStatus)
                await eventually(lambda: seen == [("r", True)], what="the retained status")
                await pub.publish(topic, status("r", "offline"))  # live: not flagged retained
                await eventually(lambda: len(seen) == 2, what="the live status")
                assert seen[1] == ("r", False)
            await pub.publish(topic, None, retain=True)  # an empty payload clears it
            cleared: list[Incoming] = []
            async with Bus(case.settings(), f"later-{case.prefix}", persistent=False) as later:
                await later.subscribe(topic, cleared.append, body_types=AgentStatus, accept_empty=True)
                await asyncio.sleep(0.3)
            assert cleared == []

    asyncio.run(main())


def test_last_will_on_abnormal_close_and_none_on_clean_close(case: Case) -> None:
    async def main() -> None:
        seen: list[str] = []
        async with Bus(case.settings(), f"watch-{case.prefix}", persistent=False) as watch:
            await watch.subscribe(
                case.topic("wills", "+"), lambda m: seen.append(m.topic.rsplit("/", 1)[1]), body_types=AgentStatus
            )
            for name, clean in (("crashed", False), ("left", True)):
                will = Will(case.topic("wills", name), make(status(name, "offline")).to_json(), retain=False)
                bus = Bus(case.settings(), f"{name}-{case.prefix}", will=will, persistent=False)
                await bus.connect()
                await bus.close(clean=clean)
            await eventually(lambda: seen == ["crashed"], what="the crashed client's will")
            await asyncio.sleep(0.5)
            assert seen == ["crashed"]  # a clean DISCONNECT sends no will

    asyncio.run(main())


def test_shared_subscription_round_robin(case: Case) -> None:
    topic = case.topic("shared")
    n = 20

    async def main() -> None:
        got: dict[str, list[str]] = {"a": [], "b": []}
        async with (
            Bus(case.settings(), f"ra-{case.prefix}", persistent=False) as a,
            Bus(case.settings(), f"rb-{case.prefix}", persistent=False) as b,
            Bus(case.settings(), f"rp-{case.prefix}", persistent=False) as pub,
        ):
            for name, bus in (("a", a), ("b", b)):
                await bus.subscribe(topics.shared("g", topic), collector(got[name]), body_types=AgentStatus)
            for i in range(n):
                await pub.publish(topic, status(f"m{i}"))
            await eventually(lambda: len(got["a"]) + len(got["b"]) == n, what="every message once")
            await asyncio.sleep(0.2)
            assert sorted(got["a"] + got["b"]) == sorted(f"m{i}" for i in range(n))  # none twice
            assert abs(len(got["a"]) - len(got["b"])) <= 2  # taking turns

    asyncio.run(main())


def test_persistent_session_queues_while_offline_and_a_clean_one_does_not(case: Case) -> None:
    topic = case.topic("queue")

    async def main() -> None:
        got: list[str] = []
        async with Bus(case.settings(), f"qpub-{case.prefix}", persistent=False) as pub:
            durable = Bus(case.settings(), f"durable-{case.prefix}")
            fleeting = Bus(case.settings(), f"fleeting-{case.prefix}", persistent=False)
            for bus in (durable, fleeting):
                await bus.connect()
                await bus.subscribe(topic, collector(got), body_types=AgentStatus)
                await bus.close(clean=False)  # gone without a word
            for i in range(5):
                await pub.publish(topic, status(f"q{i}"))
            back = Bus(case.settings(), f"durable-{case.prefix}")
            await back.connect()
            await back.subscribe(topic, collector(got), body_types=AgentStatus)  # claims what was parked
            await eventually(lambda: len(got) == 5, what="the queued messages")
            fresh = Bus(case.settings(), f"fleeting-{case.prefix}", persistent=False)
            await fresh.connect()
            await fresh.subscribe(topic, collector(got), body_types=AgentStatus)
            await asyncio.sleep(0.3)
            assert got == [f"q{i}" for i in range(5)]  # in order, once, and none for the clean session
            await back.close()
            await fresh.close()

    asyncio.run(main())


def test_an_expired_session_is_gone_with_its_queue(case: Case) -> None:
    topic = case.topic("expiring")
    short = case.settings(session_expiry_s=1)

    async def main() -> None:
        got: list[str] = []
        async with Bus(case.settings(), f"xpub-{case.prefix}", persistent=False) as pub:
            away = Bus(short, f"short-{case.prefix}")
            await away.connect()
            await away.subscribe(topic, collector(got), body_types=AgentStatus)
            await away.close(clean=False)
            await pub.publish(topic, status("queued"))  # for the session, while it lives
            await asyncio.sleep(2.5)
            back = Bus(short, f"short-{case.prefix}")
            await back.connect()
            await back.subscribe(topic, collector(got), body_types=AgentStatus)
            await asyncio.sleep(0.5)
            assert got == []  # the session expired, and its queued message with it
            await pub.publish(topic, status("fresh"))
            await eventually(lambda: got == ["fresh"], what="delivery to the new session")
            await back.close()

    asyncio.run(main())


def test_message_expiry_drops_retained_and_queued_messages(case: Case) -> None:
    retained, queued = case.topic("exp", "retained"), case.topic("exp", "queued")

    async def main() -> None:
        got: list[str] = []
        async with Bus(case.settings(), f"epub-{case.prefix}", persistent=False) as pub:
            away = Bus(case.settings(), f"away-{case.prefix}")
            await away.connect()
            await away.subscribe(queued, collector(got), body_types=AgentStatus)
            await away.close(clean=False)
            await pub.publish(retained, status("short"), retain=True, expiry_s=1)
            await pub.publish(queued, status("short"), expiry_s=1)
            await pub.publish(queued, status("long"), expiry_s=60)
            await asyncio.sleep(2.2)
            back = Bus(case.settings(), f"away-{case.prefix}")
            await back.connect()
            await back.subscribe(queued, collector(got), body_types=AgentStatus)
            await back.subscribe(retained, collector(got), body_types=AgentStatus)
            await eventually(lambda: got == ["long"], what="the unexpired message")
            await asyncio.sleep(0.3)
            assert got == ["long"]
            await back.close()

    asyncio.run(main())


def test_payloads_over_the_brokers_limit_are_refused(case: Case) -> None:
    """The broker never forwards a payload over its limit, and the publisher's wait ends in a
    BusError. (mosquitto 2.0 disconnects such a publisher, MemoryBroker answers PUBACK "Packet too
    large"; the bus's own `max_payload_bytes`, below the broker's, keeps the fabric off that path.)"""
    topic = case.topic("big")
    loose = case.settings(max_payload_bytes=1024 * 1024)  # the client would send it; the broker must not take it

    def event(size: int) -> bytes:
        return make(JobEvent(job_id="j", seq=size, phase="p", message="y" * size)).to_json()

    async def main() -> None:
        got: list[int] = []
        async with (
            Bus(loose, f"bsub-{case.prefix}", persistent=False) as sub,
            Bus(loose, f"bpub-{case.prefix}", persistent=False) as pub,
        ):
            await sub.subscribe(topic, lambda m: got.append(len(m.payload)), body_types=JobEvent)
            async with Bus(loose, f"bbad-{case.prefix}", persistent=False) as bad:
                with pytest.raises(BusError, match="rejected publish|did not acknowledge publish"):
                    await bad.publish(topic, event(BROKER_MAX + 1024), timeout=2)
            fits = event(BROKER_MAX - 1024)
            await pub.publish(topic, fits)
            await eventually(lambda: got == [len(fits)], what="the payload under the limit")
            with pytest.raises(PayloadTooLarge):  # and the bus refuses over its own limit before sending
                await Bus(case.settings(), "unused").publish(topic, b"z" * (1024 * 1024))

    asyncio.run(main())


def test_request_reply_through_the_bus(case: Case) -> None:
    async def main() -> None:
        async with Bus(case.settings(), f"srv-{case.prefix}") as srv, Bus(case.settings(), f"cli-{case.prefix}") as cli:

            async def serve(msg: Incoming) -> None:
                assert msg.envelope is not None
                await srv.reply(msg.envelope, TaskResult(task_id=msg.envelope.body.task_id, agent_id="x"))

            await srv.subscribe(topics.shared("g", case.topic("ask")), serve, body_types=TaskRequest)
            replies = await asyncio.gather(
                *(
                    cli.request(
                        case.topic("ask"), TaskRequest(task_id=f"t{i}", task_kind="k", agent_id="x"), expect=TaskResult
                    )
                    for i in range(10)
                )
            )
            assert [r.body.task_id for r in replies] == [f"t{i}" for i in range(10)]
            assert all(r.sender == f"srv-{case.prefix}" for r in replies)

    asyncio.run(main())


def test_bad_payloads_are_rejected_and_counted(case: Case) -> None:
    async def main() -> None:
        got: list[str] = []
        async with (
            Bus(case.settings(max_payload_bytes=4096), f"victim-{case.prefix}", persistent=False) as victim,
            Bus(case.settings(), f"attacker-{case.prefix}", persistent=False) as attacker,
        ):
            await victim.subscribe(case.topic("in"), collector(got), body_types=AgentStatus)
            bad = [
                b"not json",
                b"{}",
                json.dumps({"schema": "foa/1", "kind": "status", "body": {"agent_id": 5}}).encode(),
                make(TaskResult(task_id="t", agent_id="x")).to_json(),  # a kind this topic does not take
                b"x" * 5000,  # over the victim's limit
                b"",  # empty, not accepted on this subscription
            ]
            for payload in bad:
                await attacker.publish(case.topic("in"), payload)
            await attacker.publish(case.topic("in"), status("good"))
            await eventually(lambda: got == ["good"], what="the good message")
            assert victim.stats.rejected_total == len(bad)
            assert victim.stats.rejected["oversized"] == 1 and victim.stats.rejected["empty"] == 1
            assert victim.stats.rejected["malformed"] == 4

    asyncio.run(main())
