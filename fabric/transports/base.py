"""The seam under the bus: what `fabric.bus.Bus` needs from an MQTT v5 connection, and no more.

The bus owns the fabric's semantics (envelopes, validation, de-duplication, handler calls,
request/reply); a transport owns one connection to a broker: connect with a last-will and a
clean or persistent session, publish bytes with the v5 properties the envelope mirrors,
subscribe (QoS, `$share/...`), unsubscribe, manual QoS 1 acknowledgements (a durable handler's
message is acknowledged only after it answered), and reconnect with resubscription.

Two implementations: `fabric.transports.paho.PahoTransport` (a real broker over TCP/TLS) and
`fabric.transports.memory.MemoryTransport` (an in-process `MemoryBroker`, for tests and
single-process embedding). `tests/test_transport_contract.py` runs one suite against both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlparse

from fabric.errors import TransportError

__all__ = [
    "BrokerAddress",
    "BusError",
    "ConnectOptions",
    "Message",
    "Transport",
    "TransportListener",
    "Will",
    "filter_matches",
    "reconnect_with_backoff",
]

log = logging.getLogger("foa.bus")


class BusError(TransportError):
    """The bus could not do what was asked (not connected, broker refused, ...)."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is: `mqtt://host:port`, `mqtts://...` (TLS) or `memory://NAME` (a
    `MemoryBroker` this process registered under NAME)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    scheme: Literal["mqtt", "memory"] = "mqtt"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme == "memory":
            if not parsed.netloc:
                raise ValueError(f"broker URL {url!r} names no in-memory broker: use memory://NAME")
            return cls(host=parsed.netloc, port=0, scheme="memory")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported broker URL scheme {parsed.scheme!r}: use mqtt://, mqtts:// or memory://")
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
        if self.scheme == "memory":
            return f"memory://{self.host}"
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class ConnectOptions:
    """One client's CONNECT. `session_expiry_s` 0 ends the session with the connection."""

    client_id: str
    clean_start: bool
    session_expiry_s: int
    keepalive_s: int
    max_packet_bytes: int
    will: Will | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


class Message(Protocol):
    """A received PUBLISH. paho's `MQTTMessage` has this shape already, so the paho transport
    hands it over as is (no copy per message); `mid` is what `Transport.ack` acknowledges."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def mid(self) -> int: ...


class TransportListener(Protocol):
    """What a transport reports to its owner (the bus), on the owner's event loop."""

    def on_message(self, message: Message) -> None:
        """A PUBLISH arrived; QoS 1 ones wait for `Transport.ack`."""

    def on_connection_lost(self, reason: str) -> None:
        """The connection dropped (not by `close`); unacknowledged messages will come again."""

    def on_reconnecting(self) -> None:
        """An attempt to reconnect starts (the bus counts them)."""


class Transport(Protocol):
    """One client connection to an MQTT v5 broker, driven from one asyncio loop."""

    @property
    def connected(self) -> bool: ...

    async def connect(self, options: ConnectOptions, listener: TransportListener, timeout: float) -> None:
        """Connect or raise `BusError` saying what to check; later drops reconnect by themselves
        (with backoff) and resubscribe what was subscribed."""

    async def wait_connected(self, timeout: float) -> None: ...

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
        """Queue a PUBLISH without waiting. With `want_ack` (QoS 1) the result is a future the
        broker's PUBACK resolves (a refusal sets `BusError`); None when nothing is left to wait for."""

    async def subscribe(self, topic_filter: str, qos: int, timeout: float) -> None:
        """Subscribe and wait for the SUBACK; a refusal raises `BusError`."""

    def unsubscribe(self, topic_filter: str) -> None: ...

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message (no-op for QoS 0)."""

    async def close(self, *, clean: bool, end_session: bool) -> None:
        """`clean` sends DISCONNECT (no last-will; `end_session` also drops a persistent
        session); otherwise drop the connection as a crash would."""


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


RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0


async def reconnect_with_backoff(
    attempt: Callable[[float], Awaitable[None]],
    *,
    closing: Callable[[], bool],
    listener: TransportListener | None,
    errors: tuple[type[BaseException], ...] = (BusError,),
) -> None:
    """Every transport's reconnect loop: `attempt(delay)` after `delay` seconds, the delay doubling
    from RECONNECT_FIRST_S up to RECONNECT_MAX_S after each failure (`errors`), until an attempt
    succeeds or `closing()` says the owner is closing."""
    delay = RECONNECT_FIRST_S
    while not closing():
        await asyncio.sleep(delay)
        try:
            if listener is not None:
                listener.on_reconnecting()
            await attempt(delay)
            return
        except errors as exc:
            log.debug("reconnect failed: %s", exc)
            delay = min(delay * 2, RECONNECT_MAX_S)
