"""Two places where paho costs more CPU than the fabric can afford under load.

1. Received MQTT v5 properties, parsed without paho's per-packet name-table walks.

paho builds a fresh `Properties` for every received PUBLISH and PUBACK: its constructor builds
two 27-entry tables, `unpack()` first calls `clear()` (27 `replace` + `hasattr`), and every
property set walks the names twice more. That is ~25 µs per message, a quarter of paho's receive
path, paid 20,000 times when a router reads a 10k-agent snapshot (VCV + status per agent).

`FastProperties` is a drop-in subclass: the tables are shared class attributes, `clear()` only
touches what is set, and `unpack()` decodes the same wire format (MQTT v5 §2.2.2.2) with the
same validation (known identifier, allowed on this packet type, no repeats except the two
multi-valued properties), and still packs and validates assignments like its parent.
`install()` points paho's packet decoder and client module at it; it is idempotent and leaves
paho alone if its internals moved (the bus then just runs slower).

2. Message bookkeeping: paho gives every publish, sent or received, an `MQTTMessageInfo` with
its own `threading.Condition` (a lock, a deque, bound methods): 1.7 µs and four tracked objects
per message, against 0.3 µs for `SharedConditionInfo`, which shares one Condition per process.
It only serves `wait_for_publish()`, whose waiters re-check their own flag in a loop, so a shared
condition changes nothing but spurious wake-ups (the bus never waits on it: acks resolve futures).

3. Socket I/O: paho sends every packet with its own send() syscall and reads each with three or
more recv() calls; `BufferedClient` buffers both, and `PahoTransport` flushes once per event-loop
turn (see the class). A packet that is whole in the read buffer is framed straight from it, not
byte by byte through paho's reader, and a message goes straight to `on_message` when no
per-topic callback is registered (paho walks its callback trie for every message), and a
PUBACK of two bytes (success) skips paho's decoder.

1 and 2 patch paho process-wide, so services install them explicitly at start
(`fabric.transports.paho.install_paho_speedups()`); 3 is a subclass the transport always uses.
`tests/test_fast_paths.py` fails loudly if the pinned paho's internals they rely on move.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("foa.bus")

_PROTOTYPE = Properties(PacketTypes.PUBLISH)
#: what paho decodes a 2-byte PUBACK (mid only: success, no properties) into, built once: paho's
#: ReasonCode copies a 40-entry name table per instance; only the transport's on_publish reads it
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_MULTI = frozenset({11, 38})  # Subscription Identifier, User Property


class FastProperties(Properties):
    types = _PROTOTYPE.types
    names = _PROTOTYPE.names
    properties = _PROTOTYPE.properties
    _name_of = {ident: name.replace(" ", "") for name, ident in _PROTOTYPE.names.items()}

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's signature
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        for name in [n for n in self.__dict__ if n != "packetType"]:
            object.__delattr__(self, name)

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        self.clear()
        propslen, vbi_len = VariableByteIntegers.decode(buffer)
        buffer = buffer[vbi_len:]
        left = propslen
        values = self.__dict__
        while left > 0:
            ident, n = VariableByteIntegers.decode(buffer)
            buffer = buffer[n:]
            left -= n
            spec = self.properties.get(ident)
            if spec is None:
                raise MQTTException(f"unknown property identifier {ident}")
            if self.packetType not in spec[1]:
                packet = PacketTypes.Names[self.packetType]
                raise MQTTException(f"property {self._name_of[ident]} does not apply to packet type {packet}")
            value, n = self.readProperty(buffer, spec[0], left)
            buffer = buffer[n:]
            left -= n
            name = self._name_of[ident]
            if ident in _MULTI:
                values.setdefault(name, []).append(value)
            elif name in values:
                raise MQTTException(f"Property '{name}' must not exist more than once")
            else:
                values[name] = value
        return self, propslen + vbi_len


_SHARED_CONDITION = threading.Condition()
_STOCK_INFO = mqtt.MQTTMessageInfo


class SharedConditionInfo(mqtt.MQTTMessageInfo):
    __slots__ = ()

    def __init__(self, mid: int) -> None:  # no super().__init__: it builds the Condition this class avoids
        self.mid = mid
        self._published = False
        self._condition = _SHARED_CONDITION
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0


def install() -> bool:
    """Make paho build FastProperties where it decodes packets and where it makes empty ones
    (it makes one per QoS 0 publish, for the on_publish callback), and SharedConditionInfo for
    every message. Returns whether all of it is in place."""
    try:
        from paho.mqtt import _packet, client
    except ImportError:  # pragma: no cover - paho reorganised; keep its own parser
        return False
    installed = True
    current_info: Any = getattr(client, "MQTTMessageInfo", None)
    if current_info is _STOCK_INFO and "_condition" in getattr(_STOCK_INFO, "__slots__", ()):
        client.MQTTMessageInfo = SharedConditionInfo  # type: ignore[misc]
    elif current_info is not SharedConditionInfo:
        log.debug("paho's MQTTMessageInfo is not as expected; leaving it alone")
        installed = False
    for module in (_packet, client):
        current: Any = getattr(module, "Properties", None)
        if current is FastProperties:
            continue
        if current is not Properties:
            log.debug("paho module %s does not use Properties as expected; leaving it alone", module.__name__)
            installed = False
            continue
        module.Properties = FastProperties  # type: ignore[attr-defined]
    return installed


@contextlib.contextmanager
def stock_paho() -> Iterator[None]:
    """paho exactly as shipped inside the block (benchmarks compare against it)."""
    from paho.mqtt import _packet, client

    patched = [m for m in (_packet, client) if getattr(m, "Properties", None) is FastProperties]
    info_patched = client.MQTTMessageInfo is SharedConditionInfo
    for module in patched:
        module.Properties = Properties  # type: ignore[attr-defined]
    if info_patched:
        client.MQTTMessageInfo = _STOCK_INFO  # type: ignore[misc]
    try:
        yield
    finally:
        for module in patched:
            module.Properties = FastProperties  # type: ignore[attr-defined]
        if info_patched:
            client.MQTTMessageInfo = SharedConditionInfo  # type: ignore[misc]


class BufferedClient(mqtt.Client):
    """paho with buffered socket I/O: one send() per flush, one recv() per 64 KiB.

    paho writes each queued packet with its own send(): a loop turn that queues 30 packets (a
    job's fan-out, the acks of a burst) makes 30 syscalls, each waking the broker. Here
    `_sock_send` appends to a buffer and reports the packet written; `flush_out()` then writes
    the buffer with as few sends as the socket takes. paho reads each packet with three or more
    recv() calls (type byte, length bytes, body); here one recv() fills a buffer that serves
    them — the owner must then call `loop_read()` while `buffered_in()` is true, since bytes in
    the buffer no longer make the socket readable. TLS sockets keep paho's own paths (OpenSSL
    buffers reads itself and wants a refused write retried with the same buffer).
    """

    READ_SIZE = 65536
    # paho internals this class overrides or reads; if a paho release renames one, it runs as shipped
    HOOKS = (
        "_sock_send",
        "_sock_recv",
        "_sock_close",
        "_packet_write",
        "_packet_read",
        "_packet_handle",
        "_handle_on_message",
        "_handle_pubackcomp",
        "_do_on_publish",
    )
    STATE = (
        "_in_packet",
        "_msgtime_mutex",
        "_last_bytes_received",
        "_on_message_filtered",
        "_in_callback_mutex",
        "_out_message_mutex",
        "_out_messages",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffering = all(callable(getattr(mqtt.Client, hook, None)) for hook in self.HOOKS) and all(
            hasattr(self, name) for name in self.STATE
        )
        if not self._buffering:
            log.warning("paho-mqtt internals changed; socket I/O is not buffered (correct, but slower)")
        self._out = bytearray()
        self._out_sock: Any = None  # the socket the buffered bytes belong to
        self._in = b""
        self._in_pos = 0
        self._in_sock: Any = None
        self.framed_in_place = 0  # packets `_packet_read` framed from the buffer (tests read it)

    @property
    def buffering(self) -> bool:
        """Whether paho's hooks were found and socket I/O is buffered."""
        return self._buffering

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is None or not self._buffering or isinstance(sock, ssl.SSLSocket):
            return super()._sock_recv(bufsize)
        if sock is not self._in_sock:
            self._in, self._in_pos, self._in_sock = b"", 0, sock
        if self._in_pos >= len(self._in):
            data = sock.recv(max(bufsize, self.READ_SIZE))  # BlockingIOError when empty: paho's "again"
            if len(data) <= bufsize:
                self._in, self._in_pos = b"", 0
                return data
            self._in, self._in_pos = data, 0
        start = self._in_pos
        self._in_pos = min(start + bufsize, len(self._in))
        return self._in[start : self._in_pos]

    def _packet_read(self) -> MQTTErrorCode:
        """One packet, framed straight from the read buffer when all of it is there.

        paho reads a packet through `_sock_recv` a byte at a time up to its body: the command
        byte, each byte of the remaining length, then the body, with a dict update per step. A
        packet that is whole in the buffer needs none of that: its header is parsed in place and
        the body handed to paho's own `_packet_handle` in the state paho's reader leaves it. A
        packet that is not (or paho already began one) takes paho's reader, unchanged.
        With `_handle_on_message` below: the reader's CPU per received task request 26.2 → 20.7
        µs (`benchmarks/message_cost.py` `reader_us_per_message`, medians of 5 alternated runs
        of 5,000)."""
        sock = self._sock
        if (
            not self._buffering
            or sock is None
            or isinstance(sock, ssl.SSLSocket)
            or self._in_packet["command"] != 0
            or sock is not self._in_sock
        ):
            return super()._packet_read()
        if self._in_pos >= len(self._in):
            try:
                data = sock.recv(self.READ_SIZE)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:  # TimeoutError included, as paho's reader treats it
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._in, self._in_pos = data, 0
        buf, pos = self._in, self._in_pos
        end, length, mult, count = len(buf), 0, 1, 0
        i = pos + 1
        while True:
            if i >= end or count == 4:  # a length split across reads, or a broken one: paho's reader
                return super()._packet_read()
            byte = buf[i]
            i += 1
            count += 1
            length += (byte & 127) * mult
            mult *= 128
            if not byte & 128:
                break
        if i + length > end:
            return super()._packet_read()
        self._in_pos = i + length
        self.framed_in_place += 1
        self._in_packet = {
            "command": buf[pos],
            "have_remaining": 1,
            "remaining_count": list(buf[pos + 1 : i]),
            "remaining_mult": mult,
            "remaining_length": length,
            "packet": bytearray(buf[i : i + length]),
            "to_process": 0,
            "pos": 0,
        }
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """Straight to `on_message` when no per-topic callback is registered (the bus registers
        none): paho would walk its callback trie and decode the topic for every message."""
        if self._buffering and not self._on_message_filtered._root._children:
            on_message = self.on_message
            if on_message is None:
                return
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
            return
        super()._handle_on_message(message)

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        """A PUBACK of its two mid bytes only (success, no properties: what mosquitto sends)
        without paho's decoder, which builds two ReasonCodes and two Properties for it."""
        packet = self._in_packet["packet"]
        if not self._buffering or cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, mqtt.Properties(PacketTypes.PUBACK))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def buffered_in(self) -> bool:
        """Received bytes not yet parsed (the socket will not say it is readable for them):
        ours, or OpenSSL's decrypted-but-unread bytes on a TLS socket."""
        sock = self._sock
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket):
            return sock.pending() > 0
        return self._in_pos < len(self._in) and sock is self._in_sock

    def _sock_send(self, buf: bytes | bytearray) -> int:
        sock = self._sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        if not self._buffering or isinstance(sock, ssl.SSLSocket):
            return super()._sock_send(buf)
        if sock is not self._out_sock:  # a new connection: bytes meant for the old one are void
            self._out.clear()
            self._out_sock = sock
        self._out += buf
        return len(buf)

    def flush_out(self) -> bool:
        """Write what is buffered; True when nothing is left (else wait until writable)."""
        if not self._out:
            return True
        sock = self._sock
        if sock is None or sock is not self._out_sock:
            self._out.clear()
            return True
        while self._out:
            try:
                sent = sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # the connection broke: paho notices on its next read
                self._out.clear()
                return True
            del self._out[:sent]
        return True

    def buffered(self) -> int:
        """Bytes written by paho but not yet by the socket. (paho's own `want_write()` keeps
        meaning "packets queued": it drives paho's write-callback bookkeeping.)"""
        return len(self._out)

    def queued_bytes(self) -> int:
        """Bytes of packets paho queued and has not handed to `_sock_send` yet."""
        return sum(len(packet["packet"]) for packet in self._out_packet)

    def _sock_close(self) -> None:
        # paho closes the socket right after it "wrote" a DISCONNECT: send what is buffered
        # first, or the broker sees a dropped connection (last will, session kept)
        self.flush_out()
        super()._sock_close()
