"""The fabric's MQTT v5 client: envelopes in and out, over a `Transport` (fabric/transports/).

What the fabric needs beyond raw MQTT, kept here; the connection itself (sockets, paho, or the
in-process `MemoryBroker`) is the transport's:

- every payload is an `Envelope`; what does not parse is rejected, counted and logged, and the
  subscriber keeps serving;
- QoS 1 is at-least-once, so receivers drop envelope ids they have already seen;
- a durable subscription acknowledges a message only after its handler finished, so with a
  persistent session (clean start off, session expiry) a task survives a crash or broker restart;
- plain-function handlers run inline, in arrival order, without a task per message;
- request/response with correlation ids and a timeout that says who did not answer;
- a persistent session's queued messages arrive right after CONNACK, before the process has
  re-registered its handlers: they are parked unacknowledged for the `subscribe()` that claims
  them (a restarted replica serves the tasks queued for it while it was dead, not drop them).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fabric import topics
from fabric.aio import wait_within
from fabric.envelope import Body, Envelope, MessageError, decode, decode_any, decode_known, make, typed
from fabric.messages import ErrorReply
from fabric.settings import Settings
from fabric.transports import transport_for
from fabric.transports.base import BrokerAddress, BusError, ConnectOptions, Message, Transport, Will, filter_matches

__all__ = [
    "BrokerAddress",
    "Bus",
    "BusError",
    "BusStats",
    "Handler",
    "Incoming",
    "PayloadTooLarge",
    "RemoteError",
    "RequestTimeout",
    "Will",
    "filter_matches",
]

log = logging.getLogger("foa.bus")

#: messages of a persistent session parked until a subscribe() claims them (bounded, then acked and dropped)
EARLY_MAX = 10_000
EARLY_TTL_S = 60.0


class RequestTimeout(BusError, TimeoutError):
    """Nobody answered a request in time."""


class RemoteError(BusError):
    """The responder answered with an ErrorReply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PayloadTooLarge(BusError, ValueError):
    """A payload over `Settings.max_payload_bytes`: refused before it is sent."""


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
    known: dict[str, type[Body]] | None = None  # kinds decoded typed in one pass (the reply topic's)


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


class _Events:
    """The bus's side of `TransportListener`, kept off the bus's public API."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.on_message = bus._on_message  # the hot path: no extra call per message

    def on_connection_lost(self, reason: str) -> None:
        self._bus._early.clear()  # unacknowledged: the broker sends them again on the next connection

    def on_reconnecting(self) -> None:
        self._bus.stats.reconnects += 1


class Bus:
    """One MQTT v5 client of the fabric. Use as `async with Bus(settings, client_id) as bus:`.

    The broker is `broker`, else `settings.broker_url`: `mqtt://`/`mqtts://` reach a real broker
    through paho, `memory://NAME` the in-process `MemoryBroker` registered as NAME. `transport`
    overrides both (a custom `fabric.transports.base.Transport`).
    """

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
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = topics.validate_id(client_id, "client_id")
        if broker is None:
            if not settings.broker_url:
                raise BusError("no broker: set FOA_BROKER_URL or start an embedded broker (fabric.broker)")
            broker = BrokerAddress.parse(settings.broker_url)
        self.broker = broker
        self.transport: Transport = transport or transport_for(broker)
        self.persistent = persistent
        self.reply_topic = topics.replies(client_id)
        self.stats = BusStats()
        self._will = will
        self._username = username or broker.username or settings.broker_username
        self._password = password or broker.password or settings.broker_password
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: list[_Subscription] = []
        # the same subscriptions indexed for matching: a topic finds its exact-filter subscriptions
        # by dict lookup; only wildcard filters are scanned (a host of 10k agents has 10k inboxes)
        self._exact: dict[str, list[_Subscription]] = {}
        self._wild: list[tuple[tuple[str, ...], _Subscription]] = []
        self._pending_requests: dict[str, asyncio.Future[Incoming]] = {}
        # the kinds this client's requests expect back: its replies of these kinds are validated in
        # one pass from the bytes, not as an untyped envelope and then the body again in request()
        self._reply_types: dict[str, type[Body]] = {}
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._early: collections.deque[tuple[float, Message]] = collections.deque()
        self._early_timer: asyncio.TimerHandle | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self.transport.connected

    async def connect(self, timeout: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        options = ConnectOptions(
            client_id=self.client_id,
            clean_start=not self.persistent,
            session_expiry_s=self.settings.session_expiry_s if self.persistent else 0,
            keepalive_s=self.settings.keepalive_s,
            max_packet_bytes=self.settings.max_payload_bytes + 64 * 1024,
            will=self._will,
            username=self._username,
            password=self._password,
            ca_file=self.settings.broker_ca_file,
        )
        await self.transport.connect(options, _Events(self), timeout or self.settings.request_timeout_s)
        await self.subscribe(self.reply_topic, self._on_reply, body_types=None, qos=1)
        for sub in self._exact.get(self.reply_topic, []):
            sub.known = self._reply_types

    async def close(self, *, clean: bool = True) -> None:
        """Disconnect. `clean=True` sends DISCONNECT (no last-will) and ends the broker session, so
        no stale member lingers in a shared subscription; False drops the connection like a crash."""
        self._closing = True
        if self._early_timer is not None:
            self._early_timer.cancel()
        await self.transport.close(clean=clean, end_session=self.persistent)
        for task in list(self._tasks):
            task.cancel()
        for fut in self._pending_requests.values():
            if not fut.done():
                fut.set_exception(BusError("bus closed"))
        self._early.clear()

    async def wait_connected(self, timeout: float) -> None:
        await self.transport.wait_connected(timeout)

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
        env = make(message) if isinstance(message, Body) else message
        payload = b"" if env is None else env if isinstance(env, bytes) else env.to_json()
        if len(payload) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload of {len(payload)} bytes exceeds the limit of {self.settings.max_payload_bytes}"
            )
        reply_to = correlation = None
        if isinstance(env, Envelope):  # mirrored in MQTT v5 properties for v5-native peers
            reply_to, correlation = env.reply_to, env.correlation_id
        self.stats.published += 1
        ack = self.transport.publish(
            topic,
            payload,
            qos=qos,
            retain=retain,
            response_topic=reply_to,
            correlation_data=correlation,
            expiry_s=expiry_s,
            want_ack=wait,
        )
        if ack is None:
            return
        try:
            await wait_within(ack, timeout or self.settings.request_timeout_s * 3)
        except TimeoutError:
            raise BusError(f"broker did not acknowledge publish to {topic}") from None

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
        if self._loop is None:
            raise BusError("bus is not connected")
        if isinstance(body_types, type):
            body_types = {body_types.KIND: body_types}
        match = topic_filter
        if topic_filter.startswith("$share/"):
            match = topic_filter.split("/", 2)[2]
        # a coroutine function, or an object whose __call__ is one, runs in a task; anything else inline
        inline = not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__))
        sub = _Subscription(topic_filter, match, handler, body_types, qos, durable, accept_empty, inline)
        self._subs.append(sub)
        self._index(sub)
        try:
            # a SUBACK can queue behind a flood of retained messages (10k VCVs take seconds)
            await self.transport.subscribe(topic_filter, qos, max(30.0, self.settings.request_timeout_s))
        except BusError:
            self._subs.remove(sub)
            self._unindex(sub)
            raise
        self._claim_early(sub)

    async def unsubscribe(self, topic_filter: str) -> None:
        for sub in [s for s in self._subs if s.filter == topic_filter]:
            self._unindex(sub)
        self._subs = [s for s in self._subs if s.filter != topic_filter]
        self.transport.unsubscribe(topic_filter)

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

    # ---- receive ---------------------------------------------------------------------------

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        log.warning(
            "rejected message",
            extra={"client_id": self.client_id, "topic": topic, "reason": reason, "detail": detail[:300]},
        )

    def _on_message(self, msg: Message) -> None:
        self.stats.received += 1
        self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        matched = self._matching(msg.topic)
        if not matched and self.persistent and msg.qos > 0 and not self._closing and len(self._early) < EARLY_MAX:
            self._park(msg)  # queued in our session before its handler is back
            return
        durable = any(s.durable for s in matched)
        if not durable:
            self.transport.ack(msg)
        if not matched:
            return
        # handler calls to make, not coroutines yet: a task cancelled before it starts (the loop
        # closing) never runs its body, and coroutines made for it would never be awaited
        pending: list[Callable[[], Awaitable[None]]] = []
        for sub in matched:
            incoming = self._prepare(sub, msg.topic, msg.payload, bool(msg.retain))
            if incoming is None:
                continue
            if sub.inline:  # a plain function runs now, in arrival order, without a task per message
                later = self._call_inline(sub.handler, incoming)
                if later is not None:
                    pending.append(later)
            else:
                pending.append(functools.partial(self._call, sub.handler, incoming))
        if durable:
            if pending:
                self._spawn(self._run_then_ack(pending, msg))
            else:
                self.transport.ack(msg)
        else:
            for job in pending:
                self._spawn(job())

    def _park(self, msg: Message) -> None:
        self._early.append((time.monotonic(), msg))
        if self._early_timer is None and self._loop is not None:
            self._early_timer = self._loop.call_later(EARLY_TTL_S, self._expire_early)

    def _claim_early(self, sub: _Subscription) -> None:
        """Deliver the parked messages that the subscription `sub` (just registered) matches."""
        if not self._early:
            return
        parked, self._early = self._early, collections.deque()
        levels = tuple(sub.match.split("/"))
        for at, msg in parked:
            if filter_matches(levels, msg.topic.split("/")):
                self._dispatch(msg)
            else:
                self._early.append((at, msg))

    def _expire_early(self) -> None:
        """Parked messages nobody subscribed to within EARLY_TTL_S are acknowledged and dropped."""
        self._early_timer = None
        now = time.monotonic()
        while self._early and self._early[0][0] <= now - EARLY_TTL_S:
            _, msg = self._early.popleft()
            self._reject("unclaimed", msg.topic, "no subscription claimed this session message")
            self.transport.ack(msg)
        if self._early and self._loop is not None and not self._closing:
            self._early_timer = self._loop.call_later(self._early[0][0] + EARLY_TTL_S - now, self._expire_early)

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
            if sub.body_types:
                env = decode_any(payload, sub.body_types)
            elif sub.known is not None:
                env = decode_known(payload, sub.known)
            else:
                env = decode(payload)
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

    def _call_inline(self, handler: Handler, incoming: Incoming) -> Callable[[], Awaitable[None]] | None:
        """Run a plain-function handler now; an awaitable it returns is finished in a task."""
        try:
            result = handler(incoming)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("handler failed", extra={"client_id": self.client_id, "topic": incoming.topic})
            return None
        if inspect.isawaitable(result):
            return functools.partial(self._call, lambda _: result, incoming)
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

    async def _run_then_ack(self, jobs: list[Callable[[], Awaitable[None]]], msg: Message) -> None:
        if len(jobs) == 1:
            await jobs[0]()
        else:
            await asyncio.gather(*(job() for job in jobs))
        if self.transport.connected:
            self.transport.ack(msg)

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
        types = {expect.KIND: expect} if isinstance(expect, type) else expect
        if types:
            self._reply_types.update(types)
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
        if types is None:  # the body as a dict, as documented, even of a kind another request typed
            return reply if isinstance(reply.body, dict) else decode(incoming.payload)
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
