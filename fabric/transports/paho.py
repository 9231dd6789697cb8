"""`PahoTransport`: paho-mqtt 2.x (MQTT v5) driven from the asyncio loop, in the manner of aiomqtt.

The paho client runs on the event loop itself (socket reader/writer callbacks, no network
thread), so a request/response is one loop hop each way. This module holds all of the socket
plumbing: TCP_NODELAY, reads of 64 KiB parsed in batches, writes coalesced to one send per
loop turn (but never held long), TLS's pending bytes, keepalive, reconnect with backoff and
resubscription. The process-wide paho patches in `paho_speedups` are installed by the services
at start (`install_paho_speedups()`), not by constructing a client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from fabric.aio import wait_within
from fabric.transports import paho_speedups
from fabric.transports.base import (
    BrokerAddress,
    BusError,
    ConnectOptions,
    Message,
    TransportListener,
    reconnect_with_backoff,
)

__all__ = ["PahoTransport", "PublishProperties", "install_paho_speedups"]

log = logging.getLogger("foa.bus")

READ_BATCH = 512  # packets parsed from the read buffer per loop turn before yielding
#: longest a queued packet waits for the end of its loop turn: a turn that runs a thousand ready
#: handlers lasts a second, and holding every reply until it ends stalls the processes downstream
WRITE_DELAY_MAX_S = 0.002


def install_paho_speedups() -> bool:
    """Patch paho process-wide with the faster property parser and message bookkeeping (see
    `fabric.transports.paho_speedups`). Services and the CLI call this once at start; it is
    idempotent, and returns False (paho untouched, just slower) if paho's internals moved."""
    return paho_speedups.install()


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


class PublishProperties(Properties):
    """MQTT v5 PUBLISH properties packed once, by hand.

    paho's generic `Properties.pack()` walks every property name with string work on each call
    (~100 µs per publish, more than the rest of a request/response); the envelope needs three
    properties, whose wire format (MQTT v5 §2.2.2) is short.
    """

    _packed: bytes

    def __init__(
        self,
        reply_to: str | None,
        correlation_id: str | None,
        expiry_s: int | None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        # no super().__init__: it builds paho's name tables, the cost this class avoids
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        buf = b""
        if expiry_s is not None:
            buf += b"\x02" + struct.pack("!L", int(expiry_s))
        if reply_to:
            buf += b"\x08" + _utf8(reply_to)
        if correlation_id:
            buf += b"\x09" + _utf8(correlation_id)
        for key, value in user_properties:
            buf += b"\x26" + _utf8(key) + _utf8(value)
        object.__setattr__(self, "_packed", bytes(VariableByteIntegers.encode(len(buf))) + buf)

    def pack(self) -> bytes:
        return self._packed


class PahoTransport:
    """One paho client on the running loop. See `fabric.transports.base.Transport`."""

    def __init__(self, address: BrokerAddress) -> None:
        self.address = address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._client: paho_speedups.BufferedClient | None = None
        self._options: ConnectOptions | None = None
        self._listener: TransportListener | None = None
        self._deliver: Callable[[Message], None] = lambda message: None
        self._subscriptions: dict[str, int] = {}  # filter -> QoS, resubscribed after a reconnect
        self._flush_scheduled = False  # a write flush is queued for the end of this loop turn
        self._written_at = 0.0  # loop time of the last write to the socket
        self._pending_acks: dict[int, asyncio.Future[None]] = {}
        self._pending_subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._connected = asyncio.Event()
        self._connect_result: asyncio.Future[ReasonCode] | None = None
        self._closing = False
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        await wait_within(self._connected.wait(), timeout)

    async def connect(self, options: ConnectOptions, listener: TransportListener, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._options, self._listener, self._deliver = options, listener, listener.on_message
        client = paho_speedups.BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        # no client-side inflight window: paho re-scans every outstanding message on each PUBACK
        # while one is set (~0.1 ms per ack at 1,000 outstanding: a tenth of an orchestrator's CPU
        # under load); mosquitto takes the unthrottled stream (20k outstanding tested)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if options.username:
            client.username_pw_set(options.username, options.password)
        if self.address.tls:
            client.tls_set_context(ssl.create_default_context(cafile=str(options.ca_file) if options.ca_file else None))
        if options.will:
            will = options.will
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
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
        await self._open(timeout)
        self._misc_task = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{options.client_id}")

    def _connect_properties(self, options: ConnectOptions) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = options.session_expiry_s
        props.MaximumPacketSize = options.max_packet_bytes
        return props

    async def _open(self, timeout: float) -> None:
        assert self._client is not None and self._loop is not None and self._options is not None
        self._connect_result = self._loop.create_future()
        client, options, url = self._client, self._options, self.address.url
        try:
            await self._loop.run_in_executor(
                None,
                lambda: client.connect(
                    self.address.host,
                    self.address.port,
                    keepalive=options.keepalive_s,
                    clean_start=options.clean_start,
                    properties=self._connect_properties(options),
                ),
            )
        except OSError as exc:
            raise BusError(f"cannot reach MQTT broker at {url}: {exc}") from exc
        try:
            reason = await wait_within(asyncio.shield(self._connect_result), timeout)
        except TimeoutError:
            raise BusError(f"MQTT broker at {url} did not answer CONNECT within {timeout}s") from None
        if reason.is_failure:
            raise BusError(f"MQTT broker at {url} refused the connection: {reason}")

    async def close(self, *, clean: bool, end_session: bool) -> None:
        self._closing = True
        for task in (self._misc_task, self._reconnect_task):
            if task:
                task.cancel()
        if self._client is not None:
            if clean and self.connected:
                props = None
                if end_session:
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
        waiting: list[asyncio.Future[Any]] = [*self._pending_acks.values(), *self._pending_subacks.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(BusError("bus closed"))
        self._connected.clear()

    # ---- socket plumbing (paho on the asyncio loop) ----------------------------------------

    # paho types the sockets `SocketLike`; here they are socket.socket (or ssl.SSLSocket)
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Without TCP_NODELAY a QoS 1 round trip waits on Nagle + delayed ACK: ~88 ms vs ~0.4 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._sock = sock
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch, sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
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

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
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
        if (
            self._flush_scheduled
            and self._loop is not None
            and self._loop.time() - self._written_at >= WRITE_DELAY_MAX_S
        ):
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

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
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
                self._client.loop_misc()  # keepalive pings, timeouts

    def pending_write_bytes(self) -> int:
        """Bytes paho queued or buffered that are not on the socket yet (tests of coalescing)."""
        client = self._client
        if client is None:
            return 0
        return client.buffered() + client.queued_bytes()

    def packets_framed_in_place(self) -> int:
        """Received packets framed straight from the read buffer (tests of the fast path)."""
        return self._client.framed_in_place if self._client is not None else 0

    def pending_publishes(self) -> int:
        """QoS 1 publishes whose PUBACK someone still waits for."""
        return len(self._pending_acks)

    # ---- connection callbacks --------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if self._connect_result is not None and not self._connect_result.done():
            self._connect_result.set_result(reason)
        if reason.is_failure:
            log.error("broker refused connection", extra={"broker": self.address.url, "reason": str(reason)})
            return
        self._connected.set()
        for topic_filter, qos in self._subscriptions.items():  # after a reconnect; harmless when the session kept them
            client.subscribe(topic_filter, qos=qos)
        log.debug("connected", extra={"session_present": getattr(flags, "session_present", None)})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._connected.clear()
        self._release_socket()
        if self._closing:
            return
        log.warning("disconnected from broker", extra={"broker": self.address.url, "reason": str(reason)})
        if self._listener is not None:
            self._listener.on_connection_lost(str(reason))
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        async def attempt(delay: float) -> None:
            await self._open(timeout=max(2.0, delay * 2))
            log.info("reconnected", extra={"broker": self.address.url})

        await reconnect_with_backoff(
            attempt, closing=lambda: self._closing, listener=self._listener, errors=(BusError, OSError)
        )

    # ---- publish / subscribe / ack ---------------------------------------------------------

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
        client = self._client
        if client is None or self._loop is None:
            raise BusError("bus is not connected")
        props = None
        if response_topic or correlation_data or expiry_s is not None or user_properties:
            props = PublishProperties(response_topic, correlation_data, expiry_s, user_properties)
        first_this_turn = not self._flush_scheduled
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if first_this_turn:
            # the first publish of a loop turn goes out now (latency); later ones in the same
            # turn join the flush at its end (throughput: one send for all of them), unless the
            # turn runs long
            self._write_out()
        else:
            self._write_if_late()
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BusError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0 or not want_ack:
            return None
        # not connected (MQTT_ERR_NO_CONN): paho keeps the QoS 1 message and sends it on
        # reconnecting, so wait for that acknowledgement; is_published() would raise here
        if info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published():
            return None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending_acks[info.mid] = fut
        return fut

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        fut = self._pending_acks.pop(mid, None)
        if fut is None or fut.done():
            # nobody waits (want_ack off), or the waiter gave up. publish() registers its future
            # before it yields to the loop, so an acknowledgement cannot overtake it; remembering
            # unclaimed ones would leave stale "done" futures for the next user of the mid.
            return
        if reason.is_failure:
            fut.set_exception(BusError(f"broker rejected publish: {reason}"))
        else:
            fut.set_result(None)

    async def subscribe(self, topic_filter: str, qos: int, timeout: float) -> None:
        client = self._client
        if client is None or self._loop is None:
            raise BusError("bus is not connected")
        self._subscriptions[topic_filter] = qos
        result, mid = client.subscribe(topic_filter, qos=qos)
        if result == mqtt.MQTT_ERR_NO_CONN:
            return  # broker away: the filter is registered and re-subscribed on reconnect
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            self._subscriptions.pop(topic_filter, None)
            raise BusError(f"subscribe to {topic_filter} failed: {mqtt.error_string(result)}")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._pending_subacks[mid] = fut
        try:
            codes = await wait_within(fut, timeout)
        except TimeoutError:
            raise BusError(f"broker did not acknowledge subscription to {topic_filter}") from None
        failures = [c for c in codes if c.is_failure]
        if failures:
            self._subscriptions.pop(topic_filter, None)
            raise BusError(f"broker refused subscription to {topic_filter}: {failures[0]}")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        fut = self._pending_subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.pop(topic_filter, None)
        if self._client is not None:
            self._client.unsubscribe(topic_filter)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho types payload `bytes | bytearray`; it always hands over bytes
        self._deliver(msg)  # type: ignore[arg-type]

    def ack(self, message: Message) -> None:
        if self._client is not None:
            self._client.ack(message.mid, message.qos)
