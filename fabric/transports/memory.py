"""An in-process MQTT v5 broker (`MemoryBroker`) and its client side (`MemoryTransport`).

For tests and single-process embedding: the orchestration, router and SDK tests run on it
without a broker process. It keeps the semantics the fabric relies on (the contract suite in
`tests/test_transport_contract.py` runs the same tests against mosquitto):

- QoS 1: a message stays in flight until the client acknowledges it; a persistent session that
  reconnects gets its unacknowledged messages again, then what was queued while it was away;
- retained messages (an empty payload clears the topic), sent to new non-shared subscriptions;
- last-will on an abnormal close, none on a clean DISCONNECT;
- `$share/group/filter` subscriptions: round robin over the group's sessions (an offline
  member with a live session keeps its turn and queues, as mosquitto does);
- persistent sessions (clean start off, session expiry > 0) queue QoS 1 messages while
  offline, until the session expires; QoS 0 is not queued;
- message expiry (dropped from queues and the retained store once expired);
- payload size: publishes over the broker's maximum are refused (PUBACK "Packet too large";
  mosquitto 2.0 disconnects the publisher instead: either way the bus's publish fails and no
  subscriber gets it), and a client is not sent packets over the maximum it declared at CONNECT;
- topic filters with `+` and `#`, which never match `$...` topics.

Not modelled: QoS 2, subscription options, topic aliases, will delay, flow control, and the
properties of a delivered message (the bus reads topic, payload, QoS and retain; the envelope
carries what the v5 properties mirror).

Broker selection: `with MemoryBroker("NAME"):` registers the broker under NAME for the block,
and `Settings(broker_url="memory://NAME")` (or `BrokerAddress.parse("memory://NAME")`) makes a
`Bus` connect to it. That name table (`_REGISTERED`, guarded by a lock) is the module's only
global state; it exists because a URL is how every service is told where its broker is.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fabric.aio import wait_within
from fabric.transports.base import (
    BrokerAddress,
    BusError,
    ConnectOptions,
    Message,
    TransportListener,
    Will,
    filter_matches,
    reconnect_with_backoff,
)

__all__ = ["MemoryBroker", "MemoryMessage", "MemoryTransport"]

log = logging.getLogger("foa.bus")

#: NAME -> the broker registered under memory://NAME (see the module docstring)
_REGISTERED: dict[str, MemoryBroker] = {}
_REGISTRY_LOCK = threading.Lock()


@dataclass(slots=True)
class MemoryMessage:
    """A delivered PUBLISH (the shape of `fabric.transports.base.Message`)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int = 0
    dup: bool = False


@dataclass(slots=True)
class _Stored:
    topic: str
    payload: bytes
    qos: int
    expires_at: float | None  # time.monotonic() deadline from the message expiry interval

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass
class _Session:
    client_id: str
    expiry_s: int
    max_packet: int
    will: Will | None
    transport: MemoryTransport | None = None
    gone_at: float | None = None  # when its connection ended (session expiry counts from here)
    subscriptions: dict[str, tuple[tuple[str, ...], int]] = field(default_factory=dict)  # filter -> (levels, qos)
    inflight: dict[int, tuple[_Stored, int]] = field(default_factory=dict)  # mid -> message, QoS; unacknowledged
    queued: collections.deque[tuple[_Stored, int]] = field(default_factory=collections.deque)
    mids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def expired(self, now: float) -> bool:
        return self.transport is None and self.gone_at is not None and now - self.gone_at >= self.expiry_s

    def next_mid(self) -> int:
        mid = next(self.mids) % 65536
        while mid == 0 or mid in self.inflight:
            mid = next(self.mids) % 65536
        return mid


@dataclass
class _SharedGroup:
    levels: tuple[str, ...]
    members: dict[str, int] = field(default_factory=dict)  # client id -> QoS, in subscription order
    turn: int = 0

    def next_member(self) -> tuple[str, int]:
        client_id = list(self.members)[self.turn % len(self.members)]
        self.turn += 1
        return client_id, self.members[client_id]


class MemoryBroker:
    """An MQTT v5 broker in this process. `with MemoryBroker("t1") as broker:` registers it as
    memory://t1 for the block; buses whose broker URL names it connect to it."""

    def __init__(
        self, name: str = "default", *, max_payload_bytes: int = 2 * 1024 * 1024, max_queued: int = 100_000
    ) -> None:
        self.name = name
        self.max_payload_bytes = max_payload_bytes
        self.max_queued = max_queued  # per offline session, as mosquitto's max_queued_messages
        self.dropped = 0  # messages a full queue or a client's packet limit refused
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._shared: dict[tuple[str, str], _SharedGroup] = {}  # (group, filter) -> members
        self._retained: dict[str, _Stored] = {}

    # ---- registration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(self.name, 0, scheme="memory")

    def start(self) -> MemoryBroker:
        """Register under memory://NAME (a second broker of the same name is refused)."""
        with _REGISTRY_LOCK:
            current = _REGISTERED.get(self.name)
            if current is not None and current is not self:
                raise BusError(f"an in-memory broker named {self.name!r} is already running: pick another name")
            _REGISTERED[self.name] = self
        return self

    def stop(self) -> None:
        """Unregister and drop every connection (clients see a lost connection)."""
        with _REGISTRY_LOCK:
            if _REGISTERED.get(self.name) is self:
                del _REGISTERED[self.name]
        self.drop_connections()

    def __enter__(self) -> MemoryBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def lookup(name: str) -> MemoryBroker:
        with _REGISTRY_LOCK:
            broker = _REGISTERED.get(name)
        if broker is None:
            raise BusError(
                f"no in-memory broker named {name!r} in this process: create one with `with MemoryBroker({name!r}):`"
                " (memory:// URLs only work inside the process that runs the broker)"
            )
        return broker

    def drop_connections(self, client_id: str | None = None) -> None:
        """Close connections as a network failure would (last-wills fire, sessions stay)."""
        with self._lock:
            victims = [s.transport for s in self._sessions.values() if s.transport and client_id in (None, s.client_id)]
        for transport in victims:
            if transport is not None:
                self._disconnect(transport, clean=False, end_session=False)
                transport._lost("connection dropped by the broker")

    # ---- the client side calls these -------------------------------------------------------

    def _connect(self, transport: MemoryTransport, options: ConnectOptions) -> bool:
        """Attach `transport` to its session; True when an existing session was resumed."""
        with self._lock:
            now = time.monotonic()
            session = self._sessions.get(options.client_id)
            if session is not None and session.transport is not None:  # takeover: the old connection goes
                old = session.transport
                self._disconnect(old, clean=False, end_session=False)
                old._lost("session taken over", reconnect=False)
            if session is not None and (options.clean_start or session.expired(now)):
                self._end_session(session)
                session = None
            present = session is not None
            if session is None:
                session = _Session(options.client_id, options.session_expiry_s, options.max_packet_bytes, options.will)
                self._sessions[options.client_id] = session
            session.expiry_s, session.max_packet, session.will = (
                options.session_expiry_s,
                options.max_packet_bytes,
                options.will,
            )
            session.transport, session.gone_at = transport, None
            # unacknowledged messages first (in order), then what queued while it was away
            for mid, (stored, qos) in list(session.inflight.items()):
                if stored.expired(now):
                    del session.inflight[mid]
                else:
                    transport._receive(MemoryMessage(stored.topic, stored.payload, qos, False, mid, dup=True))
            queued, session.queued = session.queued, collections.deque()
            for stored, qos in queued:
                self._send(session, stored, qos, False, now)
            return present

    def _disconnect(self, transport: MemoryTransport, *, clean: bool, end_session: bool) -> None:
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is None or session.transport is not transport:
                return
            session.transport, session.gone_at = None, time.monotonic()
            if not clean and session.will is not None:
                will = session.will
                self._publish(will.topic, will.payload, will.qos, will.retain, None)
            if end_session or session.expiry_s == 0:
                self._end_session(session)

    def _end_session(self, session: _Session) -> None:
        self._sessions.pop(session.client_id, None)
        for group in self._shared.values():
            group.members.pop(session.client_id, None)

    def _subscribe(self, transport: MemoryTransport, topic_filter: str, qos: int) -> None:
        with self._lock:
            session = self._session_of(transport)
            if topic_filter.startswith("$share/"):
                parts = topic_filter.split("/", 2)
                if len(parts) < 3 or not parts[1] or not parts[2]:
                    raise BusError(f"broker refused subscription to {topic_filter}: Topic filter invalid")
                group = self._shared.setdefault((parts[1], parts[2]), _SharedGroup(tuple(parts[2].split("/"))))
                group.members[transport.client_id] = qos
                session.subscriptions[topic_filter] = ((), qos)  # kept for the session; routed by the group
                return  # shared subscriptions get no retained messages (MQTT v5 §4.8.2)
            levels = tuple(topic_filter.split("/"))
            if not _valid_filter(levels):
                raise BusError(f"broker refused subscription to {topic_filter}: Topic filter invalid")
            session.subscriptions[topic_filter] = (levels, qos)
            now = time.monotonic()
            for topic, stored in list(self._retained.items()):
                if stored.expired(now):
                    del self._retained[topic]
                elif filter_matches(levels, topic.split("/")):
                    self._send(session, stored, min(qos, stored.qos), True, now)

    def _unsubscribe(self, transport: MemoryTransport, topic_filter: str) -> None:
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is None:
                return
            session.subscriptions.pop(topic_filter, None)
            if topic_filter.startswith("$share/"):
                _, name, match = topic_filter.split("/", 2)
                group = self._shared.get((name, match))
                if group is not None:
                    group.members.pop(transport.client_id, None)

    def _ack(self, transport: MemoryTransport, mid: int) -> None:
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is not None and session.transport is transport:
                session.inflight.pop(mid, None)

    def _session_of(self, transport: MemoryTransport) -> _Session:
        session = self._sessions.get(transport.client_id)
        if session is None or session.transport is not transport:
            raise BusError("bus is not connected")
        return session

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, expiry_s: int | None) -> str | None:
        """Store and route one message; the refusal reason, or None when accepted."""
        if len(payload) > self.max_payload_bytes:
            return "Packet too large"
        with self._lock:
            now = time.monotonic()
            stored = _Stored(topic, payload, qos, None if expiry_s is None else now + expiry_s)
            if retain:
                if payload:
                    self._retained[topic] = stored
                else:
                    self._retained.pop(topic, None)
            levels = topic.split("/")
            expired = [s for s in self._sessions.values() if s.expired(now)]
            for session in expired:
                self._end_session(session)
            for session in self._sessions.values():
                best = -1
                for filter_levels, sub_qos in session.subscriptions.values():
                    if filter_levels and sub_qos > best and filter_matches(filter_levels, levels):
                        best = sub_qos
                if best >= 0:
                    self._send(session, stored, min(qos, best), False, now)
            for group in self._shared.values():
                if group.members and filter_matches(group.levels, levels):
                    member, sub_qos = group.next_member()
                    self._send(self._sessions[member], stored, min(qos, sub_qos), False, now)
        return None

    def _send(self, session: _Session, stored: _Stored, qos: int, retain: bool, now: float) -> None:
        if stored.expired(now):
            return
        transport = session.transport
        if transport is None:
            if qos == 0:
                return  # QoS 0 is not queued for an offline session
            if len(session.queued) >= self.max_queued:
                self.dropped += 1
                return
            session.queued.append((stored, qos))
            return
        if len(stored.payload) + len(stored.topic) + 16 > session.max_packet:
            self.dropped += 1  # larger than the client said it accepts: dropped, as mosquitto does
            return
        mid = 0
        if qos:
            mid = session.next_mid()
            session.inflight[mid] = (stored, qos)
        transport._receive(MemoryMessage(stored.topic, stored.payload, qos, retain, mid))


def _valid_filter(levels: tuple[str, ...]) -> bool:
    for i, level in enumerate(levels):
        if level == "#" and i != len(levels) - 1:
            return False
        if level not in ("#", "+") and ("#" in level or "+" in level):
            return False
    return True


class MemoryTransport:
    """A client of a `MemoryBroker` (see `fabric.transports.base.Transport`). Deliveries hop
    through the client's event loop once per turn, in order, like packets off a socket."""

    def __init__(self, broker: MemoryBroker | str) -> None:
        self._broker_name = broker if isinstance(broker, str) else broker.name
        self._broker: MemoryBroker | None = None if isinstance(broker, str) else broker
        self.client_id = ""
        self._options: ConnectOptions | None = None
        self._listener: TransportListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._connected = asyncio.Event()
        self._closing = False
        self._inbox: collections.deque[MemoryMessage] = collections.deque()
        self._drain_scheduled = False
        self._outbox: list[tuple[str, bytes, int, bool, int | None]] = []  # published while reconnecting
        self._subscriptions: dict[str, int] = {}
        self._reconnect_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        await wait_within(self._connected.wait(), timeout)

    async def connect(self, options: ConnectOptions, listener: TransportListener, timeout: float) -> None:
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()
        self._options, self._listener, self.client_id = options, listener, options.client_id
        self._open()

    def _open(self) -> None:
        assert self._options is not None
        broker = MemoryBroker.lookup(self._broker_name)
        if self._broker is not None and broker is not self._broker:
            raise BusError(f"memory://{self._broker_name} now names another broker than this client's")
        self._broker = broker
        broker._connect(self, self._options)
        self._connected.set()
        for topic_filter, qos in self._subscriptions.items():  # after a reconnect
            broker._subscribe(self, topic_filter, qos)
        outbox, self._outbox = self._outbox, []
        for topic, payload, qos, retain, expiry_s in outbox:
            broker._publish(topic, payload, qos, retain, expiry_s)

    async def close(self, *, clean: bool, end_session: bool) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._broker is not None and self.connected:  # a dropped connection cannot say "end my session"
            self._broker._disconnect(self, clean=clean, end_session=clean and end_session)
        self._connected.clear()
        self._inbox.clear()

    def _lost(self, reason: str, *, reconnect: bool = True) -> None:
        """The broker ended the connection (called on the broker's side)."""
        if self._loop is None or self._loop.is_closed():
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(functools.partial(self._lost, reason, reconnect=reconnect))
            return
        self._connected.clear()
        self._inbox.clear()  # in flight, unacknowledged: the session sends them again
        if self._closing:
            return
        log.warning("disconnected from broker", extra={"broker": f"memory://{self._broker_name}", "reason": reason})
        if self._listener is not None:
            self._listener.on_connection_lost(reason)
        if reconnect and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        async def attempt(delay: float) -> None:
            self._open()

        await reconnect_with_backoff(attempt, closing=lambda: self._closing, listener=self._listener)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        response_topic: str | None = None,
        correlation_data: str | None = None,
        expiry_s: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        want_ack: bool = False,
    ) -> asyncio.Future[None] | None:
        if self._loop is None or self._closing:
            raise BusError("bus is not connected")
        if "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        if not self.connected or self._broker is None:
            if qos:  # paho keeps QoS 1 publishes for the next connection; so does this
                self._outbox.append((topic, payload, qos, retain, expiry_s))
            return None
        refused = self._broker._publish(topic, payload, qos, retain, expiry_s)
        if refused is None or not want_ack or qos == 0:
            return None
        fut: asyncio.Future[None] = self._loop.create_future()
        fut.set_exception(BusError(f"broker rejected publish: {refused}"))
        return fut

    async def subscribe(self, topic_filter: str, qos: int, timeout: float) -> None:
        if self._broker is None or not self.connected:
            raise BusError("bus is not connected")
        self._broker._subscribe(self, topic_filter, qos)
        self._subscriptions[topic_filter] = qos

    def unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.pop(topic_filter, None)
        if self._broker is not None:
            self._broker._unsubscribe(self, topic_filter)

    def ack(self, message: Message) -> None:
        if message.qos and self._broker is not None:
            self._broker._ack(self, message.mid)

    # ---- delivery --------------------------------------------------------------------------

    def _receive(self, message: MemoryMessage) -> None:
        """Queue a delivery (called under the broker's lock, from any thread)."""
        self._inbox.append(message)
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            if threading.get_ident() == self._thread:
                self._loop.call_soon(self._drain)
            else:
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """Hand this turn's deliveries to the listener; what they cause arrives next turn."""
        assert self._broker is not None
        with self._broker._lock:
            self._drain_scheduled = False
            batch, self._inbox = self._inbox, collections.deque()
        listener = self._listener
        if listener is None:
            return
        for message in batch:
            if not self.connected:
                return
            listener.on_message(message)
