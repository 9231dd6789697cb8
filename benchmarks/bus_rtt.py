"""Request/response latency through the fabric's bus vs a raw paho ping-pong, same mosquitto.

Both sides run the same exchange: a QoS 1 request to a topic, a QoS 1 reply on another, both
clients in this process, TCP_NODELAY on every socket (and `set_tcp_nodelay true` in mosquitto).
The fabric adds the envelope (pydantic validation both ways), correlation, de-duplication and
asyncio; the ratio says what that costs.

    python benchmarks/bus_rtt.py --json [--n 2000] [--broker-url mqtt://...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from fabric.broker import Mosquitto
from fabric.bus import BrokerAddress, Bus, Incoming
from fabric.messages import TaskRequest, TaskResult
from fabric.settings import Settings
from fabric.transports import paho_speedups
from fabric.transports.paho import install_paho_speedups


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def raw_pair(
    addr: BrokerAddress, ping_payload: bytes, pong_payload: bytes | None = None
) -> Iterator[Callable[[], None]]:
    """Two bare paho clients on their own network threads; yields `ping()`: a QoS 1 ping and the
    QoS 1 pong back (`pong_payload`, else the ping's bytes), raising if the pong is lost."""
    got = threading.Event()

    def make(cid: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.on_socket_open = _nodelay
        c.connect(addr.host, addr.port)
        c.loop_start()
        return c

    server, client = make("raw-server"), make("raw-client")

    def pong(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        c.publish("bench/raw/pong", pong_payload or m.payload, qos=1)

    server.on_message = pong
    client.on_message = lambda c, u, m: got.set()
    server.subscribe("bench/raw/ping", qos=1)
    client.subscribe("bench/raw/pong", qos=1)
    time.sleep(0.3)

    def ping() -> None:
        got.clear()
        client.publish("bench/raw/ping", ping_payload, qos=1)
        if not got.wait(5):
            raise RuntimeError("raw paho ping lost")

    try:
        yield ping
    finally:
        for c in (server, client):
            c.loop_stop()
            c.disconnect()


def raw_paho(addr: BrokerAddress, n: int, warmup: int) -> list[float]:
    """Two paho clients on their own network threads, a QoS 1 ping and a QoS 1 pong."""
    payload = TaskRequest(task_id="x", task_kind="ping", agent_id="a").model_dump_json().encode()
    out = []
    with raw_pair(addr, payload) as ping:
        for i in range(n + warmup):
            t = time.perf_counter()
            ping()
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1000)
    return out


async def fabric(addr: BrokerAddress, n: int, warmup: int) -> list[float]:
    settings = Settings(broker_url=addr.url)
    async with (
        Bus(settings, "bench-server", broker=addr, persistent=False) as server,
        Bus(settings, "bench-client", broker=addr, persistent=False) as client,
    ):

        async def serve(msg: Incoming) -> None:
            assert msg.envelope is not None
            await server.reply(msg.envelope, TaskResult(task_id=msg.envelope.body.task_id, agent_id="a"))

        await server.subscribe("foa/agents/a/tasks", serve, body_types=TaskRequest)
        out = []
        for i in range(n + warmup):
            t = time.perf_counter()
            await client.request(
                "foa/agents/a/tasks", TaskRequest(task_id=str(i), task_kind="ping", agent_id="a"), expect=TaskResult
            )
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1000)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--broker-url", default=None, help="use this broker instead of a fresh mosquitto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    install_paho_speedups()  # as the services do at start
    broker = None
    if args.broker_url:
        addr = BrokerAddress.parse(args.broker_url)
    else:
        data = Path(tempfile.mkdtemp(prefix="foa-rtt-"))
        broker = Mosquitto(data_dir=data, persistence=False, die_with_parent=True).start()
        addr = broker.address
    try:
        # interleave the two so machine noise hits both alike
        raw: list[float] = []
        fab: list[float] = []
        for part in range(4):
            progress(f"part {part + 1}/4")
            with paho_speedups.stock_paho():  # the baseline is paho as shipped, not our parser
                raw += raw_paho(addr, args.n // 4, args.warmup)
            fab += asyncio.run(fabric(addr, args.n // 4, args.warmup))
    finally:
        if broker:
            broker.stop()
    result = {
        "fabric_p50_ms": float(np.percentile(fab, 50)),
        "fabric_p99_ms": float(np.percentile(fab, 99)),
        "raw_paho_p50_ms": float(np.percentile(raw, 50)),
        "raw_paho_p99_ms": float(np.percentile(raw, 99)),
        "ratio": float(np.percentile(fab, 50) / np.percentile(raw, 50)),
        "n": len(fab),
        "broker": "mosquitto (set_tcp_nodelay true)" if broker else args.broker_url,
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
