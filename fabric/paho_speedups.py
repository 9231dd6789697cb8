"""Received MQTT v5 properties, parsed without paho's per-packet name-table walks.

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
"""

from __future__ import annotations

import logging
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties, VariableByteIntegers

log = logging.getLogger("foa.bus")

_PROTOTYPE = Properties(PacketTypes.PUBLISH)
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
                raise MQTTException(f"property {self._name_of[ident]} does not apply to packet type {PacketTypes.Names[self.packetType]}")
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


def install() -> bool:
    """Make paho build FastProperties where it decodes packets and where it makes empty ones
    (it makes one per QoS 0 publish, for the on_publish callback). Returns whether it is in place."""
    try:
        from paho.mqtt import _packet, client
    except ImportError:  # pragma: no cover - paho reorganised; keep its own parser
        return False
    installed = True
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
