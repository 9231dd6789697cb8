"""CPU per message, by layer: a task request and its task result, over the memory transport and
over mosquitto, with a bare paho pair on the same mosquitto as the floor.

The request is what `fabric.dispatch.dispatch` sends an agent (a `TaskRequest` in an envelope
with reply_to, correlation, job id and traceparent, to the agent's shared inbox, whose handler
is async and durable, as `agents/server.py` subscribes it); the result is the agent's
`TaskResult` reply, read by the requester's reply subscription and typed by `Bus.request`.

Every number is µs of process CPU (`time.process_time`, all threads) per message, the median of
`--repeats` runs of `--n` messages (the directly called layers: of 2 x repeats + 1 runs, as they
are cheap and their differences small); the machine is shared, so compare ratios within one run.
A layer within ~2 µs of zero is zero within the noise. How each layer is obtained:

- encode: `envelope.make(body, ...)` + `to_json()`, called directly.
- publish: `Bus.publish` on a transport that sends nowhere, minus `to_json` (counted in encode).
- decode: the JSON parse alone (`pydantic_core.from_json`, the parser pydantic runs inside).
- validate: what the bus calls to turn bytes into a typed envelope (request: `decode_any` in
  the inbox subscription; result: `decode_known` in the reply subscription, then `typed` in
  `Bus.request`), minus decode.
- receive: `Bus._on_message` with the same subscription filter but a plain no-op handler,
  minus the decoding it calls (topic matching, de-dup bookkeeping, ack, `Incoming`).
- dispatch: `Bus._on_message` with the fabric's real handler set-up minus the no-op run above
  (request: a task per message, ack after the handler; result: correlation to the waiting
  future).
- transport: a run of paced one-way messages (send, wait for arrival, next) between two bare
  transports (`transport_for(...)`, no bus), the listener acking: publish packing, the socket
  syscalls (loopback TCP's kernel work is charged to the sender), paho's parsing and the event
  loop's wake-ups, or the memory broker's routing. Mosquitto's CPU is reported apart
  (`broker_us`, from /proc in 10 ms ticks, so coarse).
- round trip: `Bus.request` -> agent-style durable handler -> `Bus.reply` -> typed result, end
  to end; `unattributed` is what the layers above leave out (the request's future and timer,
  loop turns).
- reader: a burst of `--n` QoS 1 task requests from `mosquitto_pub -l` (another process) into a
  subscribing bus; the thread CPU of the transport's socket reader per message (framing, paho's
  parsing, the bus's dispatch, queueing the acks), with `BufferedClient`'s receive shortcuts
  (`fast`: packets framed from its read buffer, messages straight to `on_message`) and with
  paho's own methods in their place (`stock`), alternated.
- raw paho, the floor: a bare pair of stock paho clients on the same mosquitto, a QoS 1 ping of
  the request's bytes answered by a QoS 1 pong of the result's, both driven by select() from one
  thread (`raw_paho`, the ratio's denominator), and `bus_rtt.py`'s pair on paho's network threads
  (`raw_paho_threads`, dearer: thread hand-offs). Per message = round trip / 2.

    python benchmarks/message_cost.py --json [--n 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pydantic_core
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import cpu_s, emit, progress
from benchmarks.bus_rtt import _nodelay, raw_pair
from fabric import topics
from fabric.broker import Mosquitto
from fabric.bus import BrokerAddress, Bus, Incoming
from fabric.envelope import Envelope, decode_any, decode_known, make, new_id, new_traceparent, typed
from fabric.messages import TaskRequest, TaskResult, Usage
from fabric.settings import Settings
from fabric.tasks import DraftInput
from fabric.transports import paho_speedups, transport_for
from fabric.transports.base import ConnectOptions, Message, TransportListener
from fabric.transports.memory import MemoryBroker, MemoryMessage
from fabric.transports.paho import install_paho_speedups

AGENT = "bench-agent"
CLIENT = "bench-orch"
REPLICA = "bench-agent-r1"
TASKS = topics.agent_tasks(AGENT)
INBOX = topics.shared(topics.SHARE_GROUP_AGENT, TASKS)
REPLIES = topics.replies(CLIENT)
WARMUP = 200
LAYERS = ("encode", "publish", "decode", "validate", "receive", "dispatch")


def task_body() -> TaskRequest:
    question = "Which of these two database designs scales better for a write-heavy event log, and why?"
    draft = DraftInput(question=question, subtask="compare write amplification of both designs", max_tokens=256)
    return TaskRequest(
        task_id=new_id(),
        task_kind="draft",
        agent_id=AGENT,
        node_id="n1",
        input=draft.model_dump(mode="json"),
        deadline_at=time.time() + 60,
        max_tokens=256,
    )


def result_body(task: TaskRequest) -> TaskResult:
    answer = "The append-only design: one sequential write per event, no index rewrites. " * 3
    return TaskResult(
        task_id=task.task_id,
        agent_id=AGENT,
        replica_id=REPLICA,
        output={"text": answer},
        usage=Usage(input_tokens=180, output_tokens=64, calls=1),
        latency_ms=812.5,
    )


def request_envelope(task: TaskRequest) -> Envelope[Any]:
    """As `Bus.request` builds it."""
    env = make(task, reply_to=REPLIES, sender=CLIENT, job_id=new_id(), traceparent=new_traceparent())
    env.correlation_id = env.id
    return env


def result_envelope(request: Envelope[Any], result: TaskResult) -> Envelope[Any]:
    """As `Bus.reply` builds it."""
    return make(
        result,
        correlation_id=request.correlation_id,
        sender=REPLICA,
        job_id=request.job_id,
        traceparent=request.traceparent,
    )


def us_per(n: int, run: Callable[[], object]) -> float:
    gc.collect()
    t = time.process_time()
    run()
    return (time.process_time() - t) / n * 1e6


async def aus_per(n: int, run: Callable[[], Awaitable[object]]) -> float:
    gc.collect()
    t = time.process_time()
    await run()
    return (time.process_time() - t) / n * 1e6


def publish_all(bus: Bus, topic: str, envelopes: list[Envelope[Any]]) -> None:
    """`Bus.publish` each, without a loop: with nothing to wait for, the coroutine never suspends."""
    for env in envelopes:
        try:
            bus.publish(topic, env, wait=False).send(None)
        except StopIteration:
            continue
        raise RuntimeError("the publish suspended")


class NullTransport:
    """Sends nowhere: a bus on it does only its own work (the bus's side of every layer)."""

    connected = True

    async def connect(self, options: ConnectOptions, listener: TransportListener, timeout: float) -> None:
        return None

    async def wait_connected(self, timeout: float) -> None:
        return None

    def publish(self, topic: str, payload: bytes, **options: Any) -> asyncio.Future[None] | None:
        return None

    async def subscribe(self, topic_filter: str, qos: int, timeout: float) -> None:
        return None

    def unsubscribe(self, topic_filter: str) -> None:
        return None

    def ack(self, message: Message) -> None:
        return None

    async def close(self, *, clean: bool, end_session: bool) -> None:
        return None


def deliver(bus: Bus, messages: list[MemoryMessage]) -> None:
    """Hand messages to the bus as its transport does."""
    for message in messages:
        bus._on_message(message)


async def null_bus(client_id: str) -> Bus:
    bus = Bus(Settings(broker_url="memory://unused"), client_id, persistent=False, transport=NullTransport())
    await bus.connect()
    return bus


# ---- the bus's layers, called directly ---------------------------------------------------------


async def bus_layers(n: int) -> dict[str, dict[str, float]]:
    """One pass over every directly measured layer for both cases (µs per message)."""
    tasks = [task_body() for _ in range(n)]
    reqs = [request_envelope(t) for t in tasks]
    ress = [result_envelope(r, result_body(t)) for r, t in zip(reqs, tasks, strict=True)]
    req_bytes = [e.to_json() for e in reqs]
    res_bytes = [e.to_json() for e in ress]
    task, result = tasks[0], result_body(tasks[0])
    kinds: dict[str, Any] = {TaskRequest.KIND: TaskRequest}
    out: dict[str, dict[str, float]] = {"task_request": {}, "task_result": {}}
    rq, rs = out["task_request"], out["task_result"]

    rq["encode"] = us_per(n, lambda: [request_envelope(task).to_json() for _ in range(n)])
    rs["encode"] = us_per(n, lambda: [result_envelope(reqs[0], result).to_json() for _ in range(n)])
    json_req = us_per(n, lambda: [e.to_json() for e in reqs])
    json_res = us_per(n, lambda: [e.to_json() for e in ress])

    publisher = await null_bus("bench-publisher")
    rq["publish"] = us_per(n, functools.partial(publish_all, publisher, TASKS, reqs)) - json_req
    rs["publish"] = us_per(n, functools.partial(publish_all, publisher, REPLIES, ress)) - json_res

    rq["decode"] = us_per(n, lambda: [pydantic_core.from_json(b) for b in req_bytes])
    rs["decode"] = us_per(n, lambda: [pydantic_core.from_json(b) for b in res_bytes])
    prep_req = us_per(n, lambda: [decode_any(b, kinds) for b in req_bytes])
    requester = await null_bus(CLIENT)
    replies = requester._reply_types  # the reply topic's typed kinds, as request(expect=TaskResult) records them
    replies[TaskResult.KIND] = TaskResult
    prep_res = us_per(n, lambda: [decode_known(b, replies) for b in res_bytes])
    raws = [decode_known(b, replies) for b in res_bytes]
    typed_res = us_per(n, lambda: [typed(r, TaskResult) for r in raws])
    rq["validate"] = prep_req - rq["decode"]
    rs["validate"] = prep_res + typed_res - rs["decode"]

    req_msgs = [MemoryMessage(TASKS, b, 1, False, i % 65535 + 1) for i, b in enumerate(req_bytes)]
    res_msgs = [MemoryMessage(REPLIES, b, 1, False, i % 65535 + 1) for i, b in enumerate(res_bytes)]

    def noop(msg: Incoming) -> None:
        return None

    plain = await null_bus("bench-plain")
    await plain.subscribe(INBOX, noop, body_types=TaskRequest)
    await plain.subscribe(REPLIES + "/plain", noop, body_types=None)  # the reply topic's twin:
    for sub in plain._exact[REPLIES + "/plain"]:
        sub.known = replies  # decoded as the reply topic is
    plain_res = [MemoryMessage(REPLIES + "/plain", m.payload, 1, False, m.mid) for m in res_msgs]
    e1_req = us_per(n, functools.partial(deliver, plain, req_msgs))
    e1_res = us_per(n, functools.partial(deliver, plain, plain_res))
    rq["receive"] = e1_req - prep_req
    rs["receive"] = e1_res - prep_res

    agent = await null_bus(REPLICA)

    async def on_task(msg: Incoming) -> None:  # the agent's handler shape: async, durable
        return None

    await agent.subscribe(INBOX, on_task, body_types=TaskRequest, durable=True)

    async def deliver_tasks() -> None:
        deliver(agent, req_msgs)
        while agent.stats.delivered < n:
            await asyncio.sleep(0)

    rq["dispatch"] = await aus_per(n, deliver_tasks) - e1_req
    loop = asyncio.get_running_loop()
    for e in reqs:  # the requests these results answer are waiting, as in Bus.request
        requester._pending_requests[e.id] = loop.create_future()
    rs["dispatch"] = us_per(n, functools.partial(deliver, requester, res_msgs)) - e1_res
    for d in out.values():
        d["bus_total"] = sum(d[layer] for layer in LAYERS)
    return out


# ---- runs through a transport ------------------------------------------------------------------


class _Arrivals:
    """A bare transport's listener: ack, and wake the sender waiting for this arrival."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.waiter: asyncio.Future[None] | None = None

    def on_message(self, message: Message) -> None:
        self.transport.ack(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def on_connection_lost(self, reason: str) -> None:
        return None

    def on_reconnecting(self) -> None:
        return None


async def transport_run(address: BrokerAddress, payloads: list[bytes], topic: str, reply_to: str | None) -> float:
    """Paced one-way messages between two bare transports; µs of process CPU per message."""
    loop = asyncio.get_running_loop()
    ends = []
    for cid in ("bench-tx", "bench-rx"):
        transport, listener = transport_for(address), _Arrivals()
        listener.transport = transport
        options = ConnectOptions(
            client_id=cid, clean_start=True, session_expiry_s=0, keepalive_s=60, max_packet_bytes=1 << 20
        )
        await transport.connect(options, listener, 10.0)
        ends.append((transport, listener))
    (tx, _), (rx, arrivals) = ends
    await rx.subscribe(topic, 1, 10.0)

    async def send(batch: list[bytes]) -> None:
        async with asyncio.timeout(60.0):  # one timer for the batch, not one per message
            for payload in batch:
                arrivals.waiter = loop.create_future()
                tx.publish(topic, payload, qos=1, retain=False, response_topic=reply_to, correlation_data=new_id())
                await arrivals.waiter

    await send(payloads[:WARMUP])
    try:
        return await aus_per(len(payloads), lambda: send(payloads))
    finally:
        for transport, _ in ends:
            await transport.close(clean=True, end_session=True)


async def fabric_round_trips(address: BrokerAddress, n: int) -> float:
    """`Bus.request` to an agent-style durable handler that replies; µs of process CPU per round trip."""
    settings = Settings(broker_url=address.url)
    task = task_body()
    result = result_body(task)
    async with (
        Bus(settings, CLIENT, broker=address, persistent=False) as client,
        Bus(settings, REPLICA, broker=address, persistent=False) as server,
    ):

        async def on_task(msg: Incoming) -> None:
            assert msg.envelope is not None
            await server.reply(msg.envelope, result)

        await server.subscribe(INBOX, on_task, body_types=TaskRequest, durable=True)

        async def run(count: int) -> None:
            for _ in range(count):
                await client.request(TASKS, task, expect=TaskResult, job_id=new_id(), traceparent=new_traceparent())

        await run(WARMUP)
        return await aus_per(n, lambda: run(n))


def raw_round_trips(address: BrokerAddress, n: int, ping: bytes, pong: bytes) -> float:
    """`bus_rtt.py`'s raw pair (paho's network threads); µs of process CPU per round trip."""
    with paho_speedups.stock_paho(), raw_pair(address, ping, pong) as round_trip:
        for _ in range(WARMUP):
            round_trip()
        return us_per(n, lambda: [round_trip() for _ in range(n)])


def raw_round_trips_one_thread(address: BrokerAddress, n: int, ping: bytes, pong: bytes) -> float:
    """The floor without threads: a bare paho pair driven by select() from this thread (what the
    fabric's on-loop paho could cost at best); µs of process CPU per round trip."""
    counts = {"connected": 0, "subscribed": 0, "pongs": 0}

    def bump(key: str) -> Callable[..., None]:
        return lambda *_: counts.__setitem__(key, counts[key] + 1)

    def make(cid: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.on_socket_open = _nodelay
        c.on_connect, c.on_subscribe = bump("connected"), bump("subscribed")
        c.connect(address.host, address.port)
        return c

    with paho_speedups.stock_paho():
        server, client = make("raw1-server"), make("raw1-client")
        pair = (server, client)

        def pump(key: str, target: int) -> None:
            while counts[key] < target:
                for c in pair:
                    if c.want_write():
                        c.loop_write()
                ready, _, _ = select.select([c.socket() for c in pair], [], [], 5.0)  # type: ignore[type-var]
                if not ready:
                    raise RuntimeError(f"bare paho pair: no {key} within 5 s")
                for c in pair:
                    if c.socket() in ready:
                        c.loop_read()

        def run(count: int) -> None:
            for _ in range(count):
                client.publish("bench/raw1/ping", ping, qos=1)
                pump("pongs", counts["pongs"] + 1)

        try:
            pump("connected", 2)

            def answer(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
                c.publish("bench/raw1/pong", pong, qos=1)

            server.on_message = answer
            client.on_message = bump("pongs")
            server.subscribe("bench/raw1/ping", qos=1)
            client.subscribe("bench/raw1/pong", qos=1)
            pump("subscribed", 2)
            run(WARMUP)
            return us_per(n, lambda: run(n))
        finally:
            for c in pair:
                c.disconnect()
                c.loop_write()


def with_broker_cpu(pid: int, n: int, run: Callable[[], float]) -> tuple[float, float]:
    """(this process's µs per unit, mosquitto's µs per unit, from /proc in 10 ms ticks)."""
    before = cpu_s(pid)
    ours = run()
    return ours, (cpu_s(pid) - before) / n * 1e6


#: BufferedClient's receive shortcuts, which `reader_run(fast=False)` swaps for paho's own methods
READER_SHORTCUTS = ("_packet_read", "_handle_on_message")


async def reader_run(address: BrokerAddress, payloads: list[bytes], *, fast: bool) -> float:
    """µs of the transport reader's thread CPU per message of a QoS 1 burst from mosquitto_pub."""
    cls = paho_speedups.BufferedClient
    saved = {name: cls.__dict__[name] for name in READER_SHORTCUTS}
    if not fast:
        for name in READER_SHORTCUTS:
            setattr(cls, name, getattr(mqtt.Client, name))
    try:
        settings = Settings(broker_url=address.url, log_level="WARNING")
        async with Bus(settings, f"bench-reader-{new_id()[:8]}", persistent=False) as bus:
            got = 0

            def on(_: Incoming) -> None:
                nonlocal got
                got += 1

            topic = f"{topics.ROOT}/bench/reader"
            await bus.subscribe(topic, on, body_types=None)
            transport = bus.transport
            reader = transport._read  # type: ignore[attr-defined]
            spent = 0.0

            def timed() -> None:
                nonlocal spent
                t0 = time.thread_time()
                reader()
                spent += time.thread_time() - t0

            loop = asyncio.get_running_loop()
            sock = transport._sock  # type: ignore[attr-defined]
            loop.remove_reader(sock)
            loop.add_reader(sock, timed)
            proc = await asyncio.create_subprocess_exec(
                "mosquitto_pub", "-h", address.host, "-p", str(address.port), "-t", topic, "-q", "1", "-l",
                stdin=subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(b"\n".join(payloads) + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
            await proc.wait()
            deadline = time.monotonic() + 60
            while got < len(payloads) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if got < len(payloads):
                raise RuntimeError(f"reader run: {got} of {len(payloads)} messages arrived")
            return spent * 1e6 / len(payloads)
    finally:
        for name, method in saved.items():
            setattr(cls, name, method)


def median(samples: list[float]) -> float:
    return float(np.median(samples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="messages per case and run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the median counts)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n, repeats = args.n, args.repeats
    install_paho_speedups()  # as the services do at start
    task = task_body()
    req_env = request_envelope(task)
    sample_req, sample_res = req_env.to_json(), result_envelope(req_env, result_body(task)).to_json()
    cases = {
        "task_request": ([request_envelope(task).to_json() for _ in range(n)], TASKS, REPLIES),
        "task_result": ([result_envelope(req_env, result_body(task)).to_json() for _ in range(n)], REPLIES, None),
    }
    samples: dict[str, list[float]] = collections.defaultdict(list)

    asyncio.run(bus_layers(WARMUP))
    for i in range(2 * repeats + 1):  # cheap, and the differences of small numbers are noisy
        progress(f"bus layers, run {i + 1}/{2 * repeats + 1}")
        for case, measured in asyncio.run(bus_layers(n)).items():
            for layer, us in measured.items():
                samples[f"{case}.{layer}"].append(us)

    mosquitto = Mosquitto(
        data_dir=Path(tempfile.mkdtemp(prefix="foa-msgcost-")), persistence=False, die_with_parent=True
    ).start()
    memory = MemoryBroker("bench-message-cost").start()
    assert mosquitto.pid is not None
    pid, mqtt_addr = mosquitto.pid, mosquitto.address
    brokers = {"memory": memory.address, "mosquitto": mqtt_addr}
    try:
        for i in range(repeats):  # interleaved, so that the machine's noise hits every one alike
            progress(f"transports and round trips, run {i + 1}/{repeats}")
            for name, addr in brokers.items():
                for case, (payloads, topic, reply_to) in cases.items():
                    tx = functools.partial(asyncio.run, transport_run(addr, payloads, topic, reply_to))
                    us, broker = with_broker_cpu(pid, n, tx)
                    samples[f"{case}.transport.{name}"].append(us)
                    if name == "mosquitto":  # the memory broker's CPU is this process's
                        samples[f"broker.{case}_transport"].append(broker)
                trips = functools.partial(asyncio.run, fabric_round_trips(addr, n))
                us, broker = with_broker_cpu(pid, n, trips)
                samples[f"round_trip.{name}.fabric"].append(us)
                if name == "mosquitto":
                    samples["broker.fabric_round_trip"].append(broker)
            reader_payloads = [request_envelope(task).to_json() for _ in range(n)]  # new ids: none de-duplicated
            for fast in (False, True) if i % 2 == 0 else (True, False):  # neither always first
                us = asyncio.run(reader_run(mqtt_addr, reader_payloads, fast=fast))
                samples[f"reader.{'fast' if fast else 'stock'}"].append(us)
            for floor, measure in (("raw_paho", raw_round_trips_one_thread), ("raw_paho_threads", raw_round_trips)):
                us, broker = with_broker_cpu(pid, n, functools.partial(measure, mqtt_addr, n, sample_req, sample_res))
                samples[f"round_trip.mosquitto.{floor}"].append(us)
                samples[f"broker.{floor}_round_trip"].append(broker)
    finally:
        memory.stop()
        mosquitto.stop()

    got = {key: median(values) for key, values in samples.items()}
    layers: dict[str, dict[str, Any]] = {
        case: {
            **{layer: got[f"{case}.{layer}"] for layer in (*LAYERS, "bus_total")},
            "transport": {name: got[f"{case}.transport.{name}"] for name in brokers},
        }
        for case in cases
    }
    bus_both = sum(got[f"{case}.bus_total"] for case in cases)
    round_trip: dict[str, dict[str, float]] = {}
    for name in brokers:
        rt = {k.split(".")[2]: v for k, v in got.items() if k.startswith(f"round_trip.{name}.")}
        rt["layers_sum"] = bus_both + sum(got[f"{case}.transport.{name}"] for case in cases)
        rt["unattributed"] = rt["fabric"] - rt["layers_sum"]
        round_trip[name] = rt
    mq = round_trip["mosquitto"]
    result = {
        "unit": "µs of process CPU per message (per round trip where named); median of the runs",
        "n": n,
        "repeats": repeats,
        "payload_bytes": {"task_request": len(sample_req), "task_result": len(sample_res)},
        "layers": layers,
        "round_trip": round_trip,
        "reader_us_per_message": {"stock": got["reader.stock"], "fast": got["reader.fast"]},
        "raw_paho_per_message": mq["raw_paho"] / 2,
        "broker_us": {k.removeprefix("broker."): v for k, v in got.items() if k.startswith("broker.")},
        "ratio_fabric_to_raw_paho": mq["fabric"] / mq["raw_paho"],
        "ratio_fabric_to_raw_paho_threads": mq["fabric"] / mq["raw_paho_threads"],
        "ratio_goal": 3.0,
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
