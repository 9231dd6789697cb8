"""The throughput shortcuts keep the behaviour of the slow paths they replace.

paho property parsing, one-pass envelope decoding, inline handlers, batched embeddings, the
job store's group commit, coalesced reputation scores and writes held for the end of a loop
turn (never long) — each against the real thing.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from fabric import topics
from fabric.bus import Bus, Incoming
from fabric.embeddings import EmbedBatcher
from fabric.envelope import Body, MessageError, decode_any, decode_known, kind_of, make, typed
from fabric.messages import AgentStatus, ErrorReply, JobEvent, JobResult, JobSubmit, Reputation, TaskResult
from fabric.orchestrator.store import GROUP_COMMIT_S, JobStore
from fabric.transports import paho_speedups
from fabric.transports.paho import PahoTransport, PublishProperties, install_paho_speedups
from tests.conftest import make_settings
from tests.fabric_helpers import body, eventually


def _publish_packet(props: bytes, payload: bytes = b"{}") -> bytes:
    topic = b"foa/agents/a/tasks"
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7) + props + payload


def test_fast_properties_parse_like_paho() -> None:
    from paho.mqtt import _packet

    assert install_paho_speedups()
    full = Properties(PacketTypes.PUBLISH)
    full.MessageExpiryInterval = 30
    full.ResponseTopic = "foa/replies/x"
    full.CorrelationData = b"abc"
    full.UserProperty = ("k1", "v1")
    full.UserProperty = ("k2", "v2")
    ours = PublishProperties("foa/replies/y", "c-1", 30, [("k1", "v1"), ("k2", "v2")])
    for props in (full.pack(), ours.pack(), PublishProperties("foa/replies/y", "c-1", None).pack(), b"\x00"):
        fast = _packet.decode_publish(0x32, _publish_packet(props), MQTTProtocolVersion.MQTTv5).properties
        slow, _ = Properties(PacketTypes.PUBLISH).unpack(props)
        assert isinstance(fast, paho_speedups.FastProperties)
        assert {k: v for k, v in vars(fast).items() if k != "packetType"} == {
            k: v for k, v in vars(slow).items() if k not in ("packetType", "types", "names", "properties")
        }
    assert fast is not None and fast.isEmpty()
    with paho_speedups.stock_paho():  # benchmarks' baseline: paho as shipped
        stock = _packet.decode_publish(0x32, _publish_packet(b"\x00"), MQTTProtocolVersion.MQTTv5).properties
        assert type(stock) is Properties
    assert isinstance(
        _packet.decode_publish(0x32, _publish_packet(b"\x00"), MQTTProtocolVersion.MQTTv5).properties,
        paho_speedups.FastProperties,
    )
    # the same refusals as paho: a repeated single-valued property, one that does not apply
    twice = b"\x0a" + (b"\x02" + struct.pack("!L", 1)) * 2
    with pytest.raises(MQTTException, match="more than once"):
        paho_speedups.FastProperties(PacketTypes.PUBLISH).unpack(twice)
    with pytest.raises(MQTTException, match="does not apply"):
        paho_speedups.FastProperties(PacketTypes.PUBLISH).unpack(b"\x05\x11" + struct.pack("!L", 5))


def test_one_pass_decoding_agrees_with_two_stage_and_still_explains_errors() -> None:
    env = make(AgentStatus(agent_id="a1", status="online"), job_id="j")
    fast = decode_any(env.to_json(), {AgentStatus.KIND: AgentStatus})
    slow = decode_any(env.to_json(), {AgentStatus.KIND: AgentStatus, JobSubmit.KIND: JobSubmit})
    assert fast == slow and fast.body.agent_id == "a1" and fast.job_id == "j"
    wrong_kind = make(Reputation(agent_id="a1", score=0.5)).to_json()
    with pytest.raises(MessageError, match="unexpected kind 'reputation'"):
        decode_any(wrong_kind, {AgentStatus.KIND: AgentStatus})
    bad_body = env.to_json().replace(b'"online"', b'"sleepy"')
    with pytest.raises(MessageError, match="status"):
        decode_any(bad_body, {AgentStatus.KIND: AgentStatus})


def test_replies_of_an_expected_kind_decode_in_one_pass_and_others_as_before() -> None:
    known: dict[str, type[Body]] = {TaskResult.KIND: TaskResult}
    env = make(TaskResult(task_id="t", agent_id="a", output={"x": 1}), correlation_id="c1")
    payload = env.to_json()
    assert kind_of(payload) == "task_result"
    fast = decode_known(payload, known)
    assert isinstance(fast.body, TaskResult) and fast == decode_any(payload, known)
    assert typed(fast, TaskResult) is fast  # Bus.request's typing has nothing left to do
    # another layout (a foreign encoder's key order and spacing) is not sniffed: two-stage, same result
    data = json.loads(payload)
    foreign = json.dumps({"body": data.pop("body"), **data}, indent=1).encode()
    slow = decode_known(foreign, known)
    assert kind_of(foreign) is None and isinstance(slow.body, dict) and typed(slow, TaskResult) == fast
    # kinds nobody waits for stay untyped, as from decode()
    error = decode_known(make(ErrorReply(code="busy", message="later")).to_json(), known)
    assert error.kind == "error" and error.body == {"code": "busy", "message": "later"}
    # a bad body of a known kind still arrives; typing it says what is wrong
    bad = decode_known(payload.replace(b'"ok":true', b'"ok":"perhaps"'), known)
    with pytest.raises(MessageError, match="invalid task_result body: ok"):
        typed(bad, TaskResult)


def test_inline_handlers_run_in_order_and_unawaited_publishes_leave_no_state(mosquitto, tmp_path) -> None:
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with (
            Bus(settings, "inline-sub", persistent=False) as sub,
            Bus(settings, "inline-pub", persistent=False) as pub,
        ):
            seen: list[str] = []
            failures = 0

            def handler(msg: Incoming) -> None:  # a plain function: the bus calls it inline
                nonlocal failures
                assert msg.envelope is not None
                if body(msg).agent_id == "boom":
                    failures += 1
                    raise RuntimeError("handler bug")
                seen.append(body(msg).agent_id)

            await sub.subscribe(topics.AGENT_STATUS_WILDCARD, handler, body_types=AgentStatus)
            names = [f"a{i:03d}" for i in range(200)]
            for name in names[:100]:
                await pub.publish(topics.agent_status(name), AgentStatus(agent_id=name, status="online"), wait=False)
            await pub.publish(topics.agent_status("boom"), AgentStatus(agent_id="boom", status="online"))
            for name in names[100:]:
                await pub.publish(topics.agent_status(name), AgentStatus(agent_id=name, status="online"))
            await eventually(lambda: len(seen) == 200)
            assert seen == names  # arrival order, and a failing handler did not stop the stream
            assert failures == 1 and sub.stats.handler_errors == 1
            await asyncio.sleep(0.2)
            assert isinstance(pub.transport, PahoTransport)
            assert pub.transport.pending_publishes() == 0  # acknowledged publishes leave nothing behind

    asyncio.run(main())


def test_concurrent_embeddings_share_model_calls(embedder) -> None:
    texts = [f"question number {i} about chest pain and what to do" for i in range(40)]

    async def main() -> list[np.ndarray]:
        batcher = EmbedBatcher(embedder, max_batch=64)
        out = await asyncio.gather(*(batcher.embed([t]) for t in texts))
        assert batcher.batches < len(texts) / 4  # queued while the model was busy: batched
        again = await batcher.embed(texts[:3])  # cached: answered on the loop thread
        assert batcher.batches <= len(texts) / 4
        np.testing.assert_allclose(again, np.stack([o[0] for o in out[:3]]))
        return [o[0] for o in out]

    vecs = asyncio.run(main())
    direct = embedder.embed(texts)
    np.testing.assert_allclose(np.stack(vecs), direct, atol=1e-5)


def test_job_store_group_commit_is_read_back_and_survives_reopen(tmp_path) -> None:
    path = tmp_path / "jobs.sqlite"
    submit = JobSubmit(job_id="j1", question="q")

    async def main() -> None:
        store = JobStore(path)
        assert store.admit(submit, owner="o")
        store.set_state("j1", "running", "decompose")
        store.checkpoint("j1", "dag", {"nodes": [1, 2]})
        store.add_event(JobEvent(job_id="j1", seq=1, phase="decompose", message="m"))
        assert store.pending  # queued for the group commit...
        assert store.checkpoints("j1") == {"dag": {"nodes": [1, 2]}}  # ...but reads see them
        store.checkpoint("j1", "usage", {"tokens": 3})
        await asyncio.sleep(GROUP_COMMIT_S * 5)
        assert not store.pending  # committed within the group-commit window
        store.finish(JobResult(job_id="j1", status="completed", answer="a"))
        assert not store.pending  # the final result commits at once
        store._db.close()  # a crash: no close(), no flush

    asyncio.run(main())
    reopened = JobStore(path)
    row = reopened.get("j1")
    assert row is not None and row["state"] == "completed"
    assert reopened.checkpoints("j1")["usage"] == {"tokens": 3}
    events: Sequence[JobEvent] = reopened.events("j1")
    assert [e.message for e in events] == ["m"]
    reopened.close()


def test_reputation_scores_are_coalesced_to_the_latest(memory_settings, embedder) -> None:
    from fabric.orchestrator.service import BusPorts
    from fabric.registry import Registry

    settings = memory_settings

    async def main() -> None:
        async with (
            Bus(settings, "rep-orch", persistent=False) as bus,
            Bus(settings, "rep-watch", persistent=False) as watch,
        ):
            got: list[float] = []
            await watch.subscribe(topics.reputation("busy"), lambda m: got.append(body(m).score), body_types=Reputation)
            ports = BusPorts(bus, Registry(), embedder, settings)
            for i in range(50):
                await ports.publish_reputation(Reputation(agent_id="busy", score=i / 100, jobs=i + 1))
            await eventually(lambda: bool(got) and got[-1] == 0.49)
            assert len(got) < 5  # 50 scores, a handful of publishes
            await ports.publish_reputation(Reputation(agent_id="busy", score=0.9, jobs=51))
            await ports.close()  # shutting down publishes what is pending
            await eventually(lambda: got[-1] == 0.9)

    asyncio.run(main())


def test_orchestrator_embeds_ahead_in_shared_batches_and_then_reads_the_cache(memory_settings, embedder) -> None:
    """Nodes that embed at once share model calls off the loop; the synchronous `embed` that
    clustering and merging call afterwards runs no model."""
    from fabric.orchestrator.service import BusPorts
    from fabric.registry import Registry

    async def main() -> None:
        async with Bus(memory_settings, "embed-ahead", persistent=False) as bus:
            ports = BusPorts(bus, Registry(), embedder, memory_settings)
            nodes = [[f"draft {n}.{d} about embedding ahead {os.urandom(4).hex()}" for d in range(3)] for n in range(6)]
            vecs = await asyncio.gather(*(ports.embed_ahead(texts) for texts in nodes))
            assert [v.shape for v in vecs] == [(3, embedder.dim)] * 6
            assert ports.batcher.batches < len(nodes)  # six nodes, fewer model calls
            encoded = embedder.encoded
            again = ports.embed([t for texts in nodes for t in texts])
            assert embedder.encoded == encoded  # the cache answered
            np.testing.assert_allclose(again, np.vstack(vecs), rtol=1e-6)

    asyncio.run(main())


def test_one_loop_turn_of_publishes_is_one_write_and_a_full_socket_drains(mosquitto, tmp_path) -> None:
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with (
            Bus(settings, "burst-sub", persistent=False) as sub,
            Bus(settings, "burst-pub", persistent=False) as pub,
        ):
            got: list[bytes] = []
            await sub.subscribe(f"{topics.ROOT}/burst/#", lambda m: got.append(m.payload), body_types=None)
            payloads = [make(AgentStatus(agent_id=f"a{i}", status="online")).to_json() for i in range(50)]
            for p in payloads:  # QoS 0 publishes do not yield: all in one loop turn
                await pub.publish(f"{topics.ROOT}/burst/x", p, qos=0)
            transport = pub.transport
            assert isinstance(transport, PahoTransport)
            assert (
                transport.pending_write_bytes() > 40 * 200
            )  # the first went out at once; the other 49 wait for one flush
            await asyncio.sleep(0.01)
            assert transport.pending_write_bytes() == 0
            await eventually(lambda: len(got) == 50)
            assert got == payloads

            # far more than a socket buffer holds: partial writes, then the rest as it drains
            big = [
                make(JobEvent(job_id="j", seq=i, phase="p", message=chr(65 + i % 26) * 60_000)).to_json()
                for i in range(300)
            ]  # 18 MB
            got.clear()
            for p in big:
                await pub.publish(f"{topics.ROOT}/burst/big", p, qos=0)
            await eventually(lambda: len(got) == 300, timeout=60)
            assert got == big
            # whole packets in the read buffer were framed in place, split ones by paho's reader
            received = sub.transport
            assert isinstance(received, PahoTransport)
            assert 0 < received.packets_framed_in_place() < 50 + 300

    asyncio.run(main())


def test_freezing_the_startup_heap_spares_later_collections() -> None:
    import gc

    from fabric.heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD, freeze_startup_heap

    thresholds = gc.get_threshold()
    try:
        frozen = freeze_startup_heap()
        assert frozen > 10_000 and gc.get_freeze_count() == frozen  # imports alone leave that many
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
        cycle: list[object] = []
        cycle.append(cycle)  # garbage made after the freeze is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_replies_leave_during_a_long_loop_turn(settings) -> None:
    """A responder whose loop turn runs a burst of handlers (here 120 × 3 ms) sends replies as
    it goes (WRITE_DELAY_MAX_S), not all at the end of the turn: the requester, in its own
    thread and loop, holds half of them before the responder has started its last handler."""
    import threading
    import time

    n = 120
    last_started: list[float] = []
    ready, stop = threading.Event(), threading.Event()

    def responder() -> None:
        async def main() -> None:
            async with Bus(settings, "burst-responder", persistent=False) as bus:

                async def handle(msg: Incoming) -> None:
                    last_started[:] = [time.monotonic()]
                    time.sleep(0.003)  # CPU work that keeps the loop turn going
                    await bus.publish(f"test/burst/reply/{msg.topic.rsplit('/', 1)[1]}", body(msg), qos=0)

                await bus.subscribe("test/burst/ask/+", handle, body_types=AgentStatus, qos=0)
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=responder, daemon=True)
    thread.start()
    assert ready.wait(15)
    arrivals: list[float] = []

    async def requester() -> None:
        async with Bus(settings, "burst-requester", persistent=False) as bus:
            got = asyncio.Event()

            def on_reply(msg: Incoming) -> None:
                arrivals.append(time.monotonic())
                if len(arrivals) == n:
                    got.set()

            await bus.subscribe("test/burst/reply/+", on_reply, body_types=AgentStatus, qos=0)
            # distinct envelopes (the bus drops repeated ids), sent in one burst
            payloads = [make(AgentStatus(agent_id=f"a{i}", status="online")).to_json() for i in range(n)]
            for i, payload in enumerate(payloads):
                await bus.publish(f"test/burst/ask/{i}", payload, qos=0)
            await asyncio.wait_for(got.wait(), 30)

    try:
        asyncio.run(requester())
    finally:
        stop.set()
        thread.join(10)
    assert len(arrivals) == n
    assert sorted(arrivals)[n // 2] < last_started[0]


def test_shared_condition_message_info_still_waits_for_acks(mosquitto) -> None:
    """With SharedConditionInfo installed, paho's own wait_for_publish() (a thread waiting on
    the shared condition) still returns once each QoS 1 message is acknowledged."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    assert install_paho_speedups()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="shared-condition", protocol=MQTTProtocolVersion.MQTTv5)
    host, port = mosquitto.url.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(f"test/shared/{i}", b"x", qos=1) for i in range(20)]
        assert all(type(info) is paho_speedups.SharedConditionInfo for info in infos)
        for info in infos:
            info.wait_for_publish(timeout=5)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def test_the_paho_internals_the_speedups_patch_are_where_they_were() -> None:
    """Fails loudly when a paho release moves what fabric/transports/paho_speedups.py patches or
    overrides (else the speedups silently switch off, or worse, half apply)."""
    import inspect

    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt import _packet, client

    assert paho.mqtt.__version__.startswith("2."), (
        f"paho {paho.mqtt.__version__}: re-check fabric/transports/paho_speedups.py"
    )
    # 1. FastProperties replaces the Properties class that the decoder and the client build
    for module in (_packet, client):
        assert getattr(module, "Properties", None) in (Properties, paho_speedups.FastProperties), module.__name__
    assert set(inspect.signature(Properties.readProperty).parameters) == {"self", "buffer", "type", "propslen"}
    assert {"types", "names", "properties", "packetType"} <= set(vars(Properties(PacketTypes.PUBLISH)))
    assert all(len(spec) == 2 for spec in Properties(PacketTypes.PUBLISH).properties.values())  # (type, packet types)
    # 2. SharedConditionInfo fills exactly the slots the stock MQTTMessageInfo.__init__ fills
    stock: Any = paho_speedups.SharedConditionInfo.__bases__[0]
    assert stock.__module__ == "paho.mqtt.client"
    assert set(stock.__slots__) == {"mid", "_published", "_condition", "rc", "_iterpos"}
    assert list(inspect.signature(stock.__init__).parameters) == ["self", "mid"]
    # 3. BufferedClient's overrides: the same names and arguments as paho's own methods
    expected = {
        "_sock_send": ["self", "buf"],
        "_sock_recv": ["self", "bufsize"],
        "_sock_close": ["self"],
        "_packet_write": ["self"],
        "_packet_read": ["self"],
        "_packet_handle": ["self"],
        "_handle_on_message": ["self", "message"],
        "_handle_pubackcomp": ["self", "cmd"],
        "_do_on_publish": ["self", "mid", "reason_code", "properties"],
    }
    assert set(expected) == set(paho_speedups.BufferedClient.HOOKS)
    for name, params in expected.items():
        assert list(inspect.signature(getattr(mqtt.Client, name)).parameters) == params, name
    fresh = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    assert hasattr(fresh, "_sock") and hasattr(fresh, "_out_packet")
    # the reader's state, which BufferedClient._packet_read fills for a packet framed from its buffer
    assert all(hasattr(fresh, name) for name in paho_speedups.BufferedClient.STATE)
    assert set(fresh._in_packet) == {
        "command",
        "have_remaining",
        "remaining_count",
        "remaining_mult",
        "remaining_length",
        "packet",
        "to_process",
        "pos",
    }
    assert hasattr(mqtt, "time_func") and hasattr(fresh._on_message_filtered._root, "_children")
    assert install_paho_speedups() and paho_speedups.BufferedClient(mqtt.CallbackAPIVersion.VERSION2).buffering
