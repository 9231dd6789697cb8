"""An asyncio face over paho-mqtt 2.x (MQTT v5), in the manner of aiomqtt.

The paho client runs on the event loop itself (socket reader/writer callbacks, no network
thread), so a request/response is one loop hop each way. What the fabric needs beyond raw MQTT:

- every payload is an `Envelope`; what does not parse is rejected, counted and logged, and the
  subscriber keeps serving;
- QoS 1 is at-least-once, so receivers drop envelope ids they have already seen;
- a durable subscription acknowledges a message only after its handler finished, so with a
  persistent session (clean start off, session expiry) a task survives a crash or broker restart;
- request/response with correlation ids and a timeout that says who did not answer;
- reconnect with exponential backoff, then resubscribe;
- a persistent session's queued messages arrive right after CONNACK, before the process has
  re-registered its handlers: they are parked unacknowledged for the `subscribe()` that claims
  them (a restarted replica serves the tasks queued for it while it was dead, not drop them).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from fabric import paho_speedups, topics
from fabric.envelope import Body, Envelope, MessageError, decode, decode_any, make, typed
from fabric.messages import ErrorReply
from fabric.settings import Settings

log = logging.getLogger("foa.bus")

#: messages of a persistent session parked until a subscribe() claims them (bounded, then acked and dropped)
EARLY_MAX = 10_000
READ_BATCH = 512  # packets parsed from the read buffer per loop turn before yielding
#: longest a queued packet waits for the end of its loop turn: a turn that runs a thousand ready
#: handlers lasts a second, and holding every reply until it ends stalls the processes downstream
WRITE_DELAY_MAX_S = 0.002
EARLY_TTL_S = 60.0


class BusError(RuntimeError):
    """The bus could not do what was asked (not connected, broker refused, ...)."""


class RequestTimeout(BusError, TimeoutError):
    """Nobody answered a request in time."""


class RemoteError(BusError):
    """The responder answered with an ErrorReply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PayloadTooLarge(BusError, ValueError):
    pass


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported broker URL scheme {parsed.scheme!r}: use mqtt:// or mqtts://")
        tls = parsed.scheme in ("mqtts", "ssl")
        if not parsed.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        return cls(
            host=parsed.hostname,
            port=parsed.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class PublishProperties(Properties):
    """MQTT v5 PUBLISH properties packed once, by hand.

    paho's generic `Properties.pack()` walks every property name with string work on each call
    (~100 µs per publish, more than the rest of a request/response); the envelope needs three
    properties, whose wire format (MQTT v5 §2.2.2) is short.
    """

    def __init__(self, reply_to: str | None, correlation_id: str | None, expiry_s: int | None) -> None:
        # no super().__init__: it builds paho's name tables, the cost this class avoids
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        buf = b""
        if expiry_s is not None:
            buf += b"\x02" + struct.pack("!L", int(expiry_s))
        if reply_to:
            raw = reply_to.encode()
            buf += b"\x08" + struct.pack("!H", len(raw)) + raw
        if correlation_id:
            raw = correlation_id.encode()
            buf += b"\x09" + struct.pack("!H", len(raw)) + raw
        object.__setattr__(self, "_packed", bytes(VariableByteIntegers.encode(len(buf))) + buf)

    def pack(self) -> bytes:
        return self._packed


@dataclass
class Incoming:
    """A received message. `envelope` is None only for an empty payload (a cleared retained topic)."""

    topic: str
    payload: bytes
    retain: bool
    envelope: Envelope[Any] | None


Handler = Callable[[Incoming], Awaitable[None] | None]


@dataclass
class _Subscription:
    filter: str  # as subscribed, maybe $share/...
    match: str  # without the $share/group prefix
    handler: Handler
    body_types: dict[str, type[Body]] | None
    qos: int
    durable: bool
    accept_empty: bool
    inline: bool  # a plain function: called from the read loop, no task


@dataclass
class BusStats:
    published: int = 0
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    handler_errors: int = 0
    reconnects: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Bus:
    """One MQTT v5 client of the fabric. Use as `async with Bus(settings, client_id) as bus:`."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        *,
        broker: BrokerAddress | None = None,
        will: Will | None = None,
        persistent: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = topics.validate_id(client_id, "client_id")
        paho_speedups.install()  # idempotent; see fabric/paho_speedups.py
        if broker is None:
            if not settings.broker_url:
                raise BusError("no broker: set FOA_BROKER_URL or start an embedded broker (fabric.broker)")
            broker = BrokerAddress.parse(settings.broker_url)
        self.broker = broker
        self.persistent = persistent
        self.reply_topic = topics.replies(client_id)
        self.stats = BusStats()
        self._will = will
        self._username = username or broker.username or settings.broker_username
        self._password = password or broker.password or settings.broker_password
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho_speedups.BufferedClient | None = None
        self._subs: list[_Subscription] = []
        # the same subscriptions indexed for matching: a topic finds its exact-filter subscriptions
        # by dict lookup; only wildcard filters are scanned (a host of 10k agents has 10k inboxes)
        self._exact: dict[str, list[_Subscription]] = {}
        self._wild: list[tuple[tuple[str, ...], _Subscription]] = []
        self._loop_thread = 0
        self._flush_scheduled = False  # a write flush is queued for the end of this loop turn
        self._written_at = 0.0  # loop time of the last write to the socket
        self._pending_acks: dict[int, asyncio.Future[None]] = {}
        self._pending_subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._pending_requests: dict[str, asyncio.Future[Incoming]] = {}
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._connected = asyncio.Event()
        self._connect_result: asyncio.Future[ReasonCode] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._early: collections.deque[tuple[float, mqtt.MQTTMessage]] = collections.deque()

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> "Bus":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, timeout: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client = paho_speedups.BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        # no client-side inflight window: paho re-scans every outstanding message on each PUBACK
        # while one is set (~0.1 ms per ack at 1,000 outstanding: a tenth of an orchestrator's CPU
        # under load); mosquitto takes the unthrottled stream (20k outstanding tested)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self.broker.tls:
            ctx = ssl.create_default_context(cafile=str(self.settings.broker_ca_file) if self.settings.broker_ca_file else None)
            client.tls_set_context(ctx)
        if self._will:
            client.will_set(self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        await self._open(timeout or self.settings.request_timeout_s)
        await self.subscribe(self.reply_topic, self._on_reply, body_types=None, qos=1)
        self._misc_task = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{self.client_id}")

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s if self.persistent else 0
        props.MaximumPacketSize = self.settings.max_payload_bytes + 64 * 1024
        return props

    async def _open(self, timeout: float) -> None:
        assert self._client is not None and self._loop is not None
        self._connect_result = self._loop.create_future()
        client = self._client
        try:
            await self._loop.run_in_executor(
                None,
                lambda: client.connect(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self.settings.keepalive_s,
                    clean_start=not self.persistent,
                    properties=self._connect_properties(),
                ),
            )
        except OSError as exc:
            raise BusError(f"cannot reach MQTT broker at {self.broker.url}: {exc}") from exc
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connect_result), timeout)
        except TimeoutError:
            raise BusError(f"MQTT broker at {self.broker.url} did not answer CONNECT within {timeout}s") from None
        if reason.is_failure:
            raise BusError(f"MQTT broker at {self.broker.url} refused the connection: {reason}")

    async def close(self, *, clean: bool = True) -> None:
        """Disconnect. `clean=True` sends DISCONNECT (no last-will) and ends the broker session, so
        no stale member lingers in a shared subscription; False drops the socket like a crash."""
        self._closing = True
        for task in (self._misc_task, self._reconnect_task):
            if task:
                task.cancel()
        if self._client is not None:
            if clean and self.connected:
                props = None
                if self.persistent:
                    props = Properties(PacketTypes.DISCONNECT)
                    props.SessionExpiryInterval = 0
                self._client.disconnect(properties=props)
                await asyncio.sleep(0)  # let the writer flush DISCONNECT
                try:
                    self._client.loop_write()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            elif self._sock is not None:
                self._sock.close()
            self._release_socket()
        for task in list(self._tasks):
            task.cancel()
        for fut in [*self._pending_acks.values(), *self._pending_requests.values(), *self._pending_subacks.values()]:
            if not fut.done():
                fut.set_exception(BusError("bus closed"))
        self._connected.clear()

    # ---- socket plumbing (paho on the asyncio loop) ----------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: socket.socket) -> None:
        # Without TCP_NODELAY a QoS 1 round trip waits on Nagle + delayed ACK: ~88 ms vs ~0.4 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._sock = sock
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch, sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: socket.socket) -> None:
        self._release_socket(sock)

    def _release_socket(self, sock: socket.socket | None = None) -> None:
        sock = sock or self._sock
        if sock is None or self._loop is None:
            return
        try:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        except (ValueError, OSError):
            pass
        if sock is self._sock:
            self._sock = None

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: socket.socket) -> None:
        """paho queued a packet. Writes are flushed once per loop turn, so a turn that queues many
        packets (acks of a burst, a job's fan-out) costs one send, not one per packet."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            self._schedule_flush()
        else:
            self._loop.call_soon_threadsafe(self._schedule_flush)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def _write_if_late(self) -> None:
        """Write now if packets have waited WRITE_DELAY_MAX_S for the end of a long loop turn."""
        if self._flush_scheduled and self._loop is not None and self._loop.time() - self._written_at >= WRITE_DELAY_MAX_S:
            self._write_out()

    def _write_out(self) -> None:
        """paho's queue into the client's buffer, the buffer onto the socket; if the socket is
        full, the rest goes when it drains."""
        sock = self._sock
        client = self._client
        if client is None or self._loop is None or sock is None or sock.fileno() < 0:
            return
        self._written_at = self._loop.time()
        if client.want_write():
            client.loop_write()
        if not client.flush_out() or client.want_write():
            self._loop.add_writer(sock, self._write)

    def _watch(self, sock: socket.socket) -> None:
        """Start reading the socket, unless it closed before the loop got to it."""
        if self._loop is None or sock is not self._sock or sock.fileno() < 0:
            return
        self._loop.add_reader(sock, self._read)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: socket.socket) -> None:
        # paho's queue is empty; bytes may still wait in the client's buffer for a full socket
        if self._loop is not None and not (self._client is not None and self._client.buffered()):
            try:
                self._loop.remove_writer(sock)
            except (ValueError, OSError):
                pass

    def _read(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read()
        # parse what the client already holds; give the loop back now and then under a flood
        for _ in range(READ_BATCH):
            if self._client is not client or not client.buffered_in():
                return
            client.loop_read()
            self._write_if_late()  # acks and inline replies of a long burst
        if self._loop is not None and client.buffered_in():
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        """The socket is writable again: write more; stop watching once everything is out."""
        client, sock = self._client, self._sock
        if client is None or sock is None or self._loop is None:
            return
        client.loop_write()
        if client.flush_out() and not client.want_write():
            self._loop.remove_writer(sock)
        else:
            self._loop.add_writer(sock, self._write)

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._client is not None:
                self._client.loop_misc()
                self._expire_early()

    # ---- connection callbacks --------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if self._connect_result is not None and not self._connect_result.done():
            self._connect_result.set_result(reason)
        if reason.is_failure:
            log.error("broker refused connection", extra={"client_id": self.client_id, "reason": str(reason)})
            return
        was_reconnect = self.stats.reconnects > 0 or not self._connect_result
        self._connected.set()
        if was_reconnect or not getattr(flags, "session_present", False):
            for sub in self._subs:  # harmless when the session kept them
                client.subscribe(sub.filter, qos=sub.qos)
        log.debug("connected", extra={"client_id": self.client_id, "session_present": getattr(flags, "session_present", None)})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._connected.clear()
        self._early.clear()  # unacknowledged: the broker sends them again on the next connection
        self._release_socket()
        if self._closing:
            return
        log.warning("disconnected from broker", extra={"client_id": self.client_id, "reason": str(reason)})
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                self.stats.reconnects += 1
                await self._open(timeout=max(2.0, delay * 2))
                log.info("reconnected", extra={"client_id": self.client_id})
                return
            except (BusError, OSError) as exc:
                log.debug("reconnect failed: %s", exc)
                delay = min(delay * 2, 5.0)

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # ---- publish ---------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        message: Envelope[Any] | Body | bytes | None,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Publish and (QoS 1, `wait`) return when the broker acknowledged it.

        `None` publishes an empty payload (clears a retained topic).
        """
        if self._client is None:
            raise BusError("bus is not connected")
        env = make(message) if isinstance(message, Body) else message
        payload = b"" if env is None else env if isinstance(env, bytes) else env.to_json()
        if len(payload) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds the limit of {self.settings.max_payload_bytes}")
        props = None
        reply_to = env.reply_to if isinstance(env, Envelope) else None
        correlation = env.correlation_id if isinstance(env, Envelope) else None
        if reply_to or correlation or expiry_s is not None:
            # mirror the envelope in MQTT v5 properties for v5-native peers
            props = PublishProperties(reply_to, correlation, expiry_s)
        first_this_turn = not self._flush_scheduled
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        self.stats.published += 1
        if first_this_turn:
            # the first publish of a loop turn goes out now (latency); later ones in the same
            # turn join the flush at its end (throughput: one send for all of them), unless the
            # turn runs long
            self._write_out()
        else:
            self._write_if_late()
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BusError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0 or not wait:
            return
        assert self._loop is not None
        # not connected (MQTT_ERR_NO_CONN): paho keeps the QoS 1 message and sends it on
        # reconnecting, so wait for that acknowledgement; is_published() would raise here
        if info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published():
            return
        fut = self._loop.create_future()
        self._pending_acks[info.mid] = fut
        try:
            await asyncio.wait_for(fut, timeout or self.settings.request_timeout_s * 3)
        except TimeoutError:
            self._pending_acks.pop(info.mid, None)
            raise BusError(f"broker did not acknowledge publish to {topic}") from None

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        fut = self._pending_acks.pop(mid, None)
        if fut is None or fut.done():
            # nobody waits (wait=False), or the waiter gave up. publish() registers its future
            # before it yields to the loop, so an acknowledgement cannot overtake it; remembering
            # unclaimed ones would leave stale "done" futures for the next user of the mid.
            return
        if reason.is_failure:
            fut.set_exception(BusError(f"broker rejected publish: {reason}"))
        else:
            fut.set_result(None)

    # ---- subscribe -------------------------------------------------------------------------

    async def subscribe(
        self,
        topic_filter: str,
        handler: Handler,
        *,
        body_types: type[Body] | dict[str, type[Body]] | None,
        qos: int = 1,
        durable: bool = False,
        accept_empty: bool = False,
    ) -> None:
        """Route messages matching `topic_filter` to `handler`.

        `body_types` is the kind (or kinds) the handler accepts; anything else is rejected and
        counted before the handler sees it. `durable` acknowledges only after the handler ran.
        """
        if self._client is None or self._loop is None:
            raise BusError("bus is not connected")
        if isinstance(body_types, type):
            body_types = {body_types.KIND: body_types}
        match = topic_filter
        if topic_filter.startswith("$share/"):
            match = topic_filter.split("/", 2)[2]
        inline = not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None)))
        sub = _Subscription(topic_filter, match, handler, body_types, qos, durable, accept_empty, inline)
        self._subs.append(sub)
        self._index(sub)
        result, mid = self._client.subscribe(topic_filter, qos=qos)
        if result == mqtt.MQTT_ERR_NO_CONN:
            return  # the broker is away: `_on_connect` subscribes every registered filter on reconnecting
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise BusError(f"subscribe to {topic_filter} failed: {mqtt.error_string(result)}")
        fut = self._loop.create_future()
        self._pending_subacks[mid] = fut
        try:
            # a SUBACK can queue behind a flood of retained messages (10k VCVs take seconds)
            codes = await asyncio.wait_for(fut, max(30.0, self.settings.request_timeout_s))
        except TimeoutError:
            raise BusError(f"broker did not acknowledge subscription to {topic_filter}") from None
        failures = [c for c in codes if c.is_failure]
        if failures:
            self._subs.remove(sub)
            self._unindex(sub)
            raise BusError(f"broker refused subscription to {topic_filter}: {failures[0]}")
        self._claim_early(sub)

    async def unsubscribe(self, topic_filter: str) -> None:
        for sub in [s for s in self._subs if s.filter == topic_filter]:
            self._unindex(sub)
        self._subs = [s for s in self._subs if s.filter != topic_filter]
        if self._client is not None:
            self._client.unsubscribe(topic_filter)

    def _index(self, sub: _Subscription) -> None:
        if "+" in sub.match or "#" in sub.match:
            self._wild.append((tuple(sub.match.split("/")), sub))
        else:
            self._exact.setdefault(sub.match, []).append(sub)

    def _unindex(self, sub: _Subscription) -> None:
        wild = [w for w in self._wild if w[1] is sub]
        if wild:
            self._wild.remove(wild[0])
        else:
            subs = self._exact.get(sub.match, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._exact.pop(sub.match, None)

    def _matching(self, topic: str) -> list[_Subscription]:
        exact = self._exact.get(topic)
        matched = list(exact) if exact else []
        if self._wild:
            levels = topic.split("/")
            for filter_levels, sub in self._wild:
                if filter_matches(filter_levels, levels):
                    matched.append(sub)
        return matched

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        fut = self._pending_subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    # ---- receive ---------------------------------------------------------------------------

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        log.warning(
            "rejected message",
            extra={"client_id": self.client_id, "topic": topic, "reason": reason, "detail": detail[:300]},
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        self._dispatch(client, msg)

    def _dispatch(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        matched = self._matching(msg.topic)
        if not matched and self.persistent and msg.qos > 0 and not self._closing and len(self._early) < EARLY_MAX:
            self._early.append((time.monotonic(), msg))  # queued in our session before its handler is back
            return
        durable = any(s.durable for s in matched)
        if not durable:
            client.ack(msg.mid, msg.qos)
        if not matched:
            return
        pending: list[Awaitable[None]] = []
        for sub in matched:
            incoming = self._prepare(sub, msg.topic, msg.payload, bool(msg.retain))
            if incoming is None:
                continue
            if sub.inline:  # a plain function runs now, in arrival order, without a task per message
                later = self._call_inline(sub.handler, incoming)
                if later is not None:
                    pending.append(later)
            else:
                pending.append(self._call(sub.handler, incoming))
        if durable:
            if pending:
                self._spawn(self._run_then_ack(pending, msg.mid, msg.qos))
            else:
                client.ack(msg.mid, msg.qos)
        else:
            for job in pending:
                self._spawn(job)

    def _claim_early(self, sub: _Subscription) -> None:
        """Deliver the parked messages that the subscription `sub` (just registered) matches."""
        if not self._early or self._client is None:
            return
        parked, self._early = self._early, collections.deque()
        for at, msg in parked:
            if mqtt.topic_matches_sub(sub.match, msg.topic):
                self._dispatch(self._client, msg)
            else:
                self._early.append((at, msg))

    def _expire_early(self) -> None:
        """Parked messages nobody subscribed to within EARLY_TTL_S are acknowledged and dropped."""
        cutoff = time.monotonic() - EARLY_TTL_S
        while self._early and self._early[0][0] < cutoff and self._client is not None:
            _, msg = self._early.popleft()
            self._reject("unclaimed", msg.topic, "no subscription claimed this session message")
            self._client.ack(msg.mid, msg.qos)

    def _prepare(self, sub: _Subscription, topic: str, payload: bytes, retain: bool) -> Incoming | None:
        if len(payload) > self.settings.max_payload_bytes:
            self._reject("oversized", topic, f"{len(payload)} bytes")
            return None
        if not payload:
            if sub.accept_empty:
                return Incoming(topic, payload, retain, None)
            self._reject("empty", topic, "empty payload")
            return None
        try:
            env = decode_any(payload, sub.body_types) if sub.body_types else decode(payload)
        except MessageError as exc:
            self._reject("malformed", topic, str(exc))
            return None
        key = (sub.filter, env.id)
        if key in self._seen:
            self.stats.duplicates += 1
            return None
        if self.settings.dedup_window:
            self._seen[key] = None
            if len(self._seen) > self.settings.dedup_window:
                self._seen.popitem(last=False)
        return Incoming(topic, payload, retain, env)

    def _call_inline(self, handler: Handler, incoming: Incoming) -> Awaitable[None] | None:
        """Run a plain-function handler now; an awaitable it returns is finished in a task."""
        try:
            result = handler(incoming)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("handler failed", extra={"client_id": self.client_id, "topic": incoming.topic})
            return None
        if inspect.isawaitable(result):
            return self._call(lambda _: result, incoming)
        self.stats.delivered += 1
        return None

    async def _call(self, handler: Handler, incoming: Incoming) -> None:
        try:
            result = handler(incoming)
            if inspect.isawaitable(result):
                await result
            self.stats.delivered += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.handler_errors += 1
            log.exception("handler failed", extra={"client_id": self.client_id, "topic": incoming.topic})

    async def _run_then_ack(self, jobs: list[Awaitable[None]], mid: int, qos: int) -> None:
        if len(jobs) == 1:
            await jobs[0]
        else:
            await asyncio.gather(*jobs)
        if self._client is not None and self.connected:
            self._client.ack(mid, qos)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- request / response ----------------------------------------------------------------

    async def request(
        self,
        topic: str,
        body: Body,
        *,
        expect: type[Body] | dict[str, type[Body]] | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
        traceparent: str | None = None,
        what: str | None = None,
    ) -> Envelope[Any]:
        """Send `body` to `topic` and wait for the reply on this client's reply topic."""
        assert self._loop is not None
        env = make(body, reply_to=self.reply_topic, sender=self.client_id, job_id=job_id, traceparent=traceparent)
        env.correlation_id = env.id
        fut: asyncio.Future[Incoming] = self._loop.create_future()
        self._pending_requests[env.id] = fut
        timeout = timeout or self.settings.request_timeout_s
        started = time.perf_counter()
        try:
            # no wait for PUBACK: the reply is the acknowledgement that matters
            await self.publish(topic, env, wait=False)
            # a timer on the future itself: wait_for's extra future and callbacks cost more than
            # the rest of a request under load
            expiry = self._loop.call_later(max(0.001, timeout - (time.perf_counter() - started)), _expire, fut)
            try:
                incoming = await fut
            finally:
                expiry.cancel()
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {body.KIND} on {topic} within {timeout:.1f}s"
                + (f": is {what} running?" if what else ": is anything serving that topic?")
            ) from None
        finally:
            self._pending_requests.pop(env.id, None)
        reply = incoming.envelope
        assert reply is not None
        if reply.kind == ErrorReply.KIND:
            err = ErrorReply.model_validate(reply.body)
            raise RemoteError(err.code, err.message)
        if expect is None:
            return reply
        types = {expect.KIND: expect} if isinstance(expect, type) else expect
        body_type = types.get(reply.kind)
        if body_type is None:
            raise BusError(f"unexpected reply kind {reply.kind!r} to {body.KIND}")
        try:
            return typed(reply, body_type)
        except MessageError as exc:
            raise BusError(f"bad reply to {body.KIND}: {exc}") from None

    def _on_reply(self, incoming: Incoming) -> None:
        env = incoming.envelope
        if env is None or not env.correlation_id:
            self._reject("uncorrelated", incoming.topic, "reply without correlation_id")
            return
        fut = self._pending_requests.get(env.correlation_id)
        if fut is not None and not fut.done():
            fut.set_result(incoming)

    async def reply(self, request: Envelope[Any], body: Body) -> None:
        """Answer a request envelope on its reply_to topic."""
        if not request.reply_to:
            raise BusError(f"{request.kind} {request.id} has no reply_to")
        env = make(
            body,
            correlation_id=request.correlation_id or request.id,
            sender=self.client_id,
            job_id=request.job_id,
            traceparent=request.traceparent,
        )
        await self.publish(request.reply_to, env, wait=False)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def filter_matches(filter_levels: tuple[str, ...], topic_levels: list[str]) -> bool:
    """MQTT topic-filter matching on pre-split levels (paho's topic_matches_sub builds a matcher
    object per call). `#` matches the parent level too; wildcards never match `$...` topics."""
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    n = len(topic_levels)
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= n or (level != "+" and level != topic_levels[i]):
            return False
    return len(filter_levels) == n
