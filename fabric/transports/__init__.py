"""Transports under the bus: `PahoTransport` (a real MQTT v5 broker) and `MemoryTransport`
(an in-process `MemoryBroker`). `transport_for` picks one from a broker address."""

from __future__ import annotations

from fabric.transports.base import BrokerAddress, BusError, ConnectOptions, Message, Transport, TransportListener, Will
from fabric.transports.memory import MemoryBroker, MemoryTransport
from fabric.transports.paho import PahoTransport, install_paho_speedups

__all__ = [
    "BrokerAddress",
    "BusError",
    "ConnectOptions",
    "MemoryBroker",
    "MemoryTransport",
    "Message",
    "PahoTransport",
    "Transport",
    "TransportListener",
    "Will",
    "install_paho_speedups",
    "transport_for",
]


def transport_for(address: BrokerAddress) -> Transport:
    """`memory://NAME` -> the in-process broker registered as NAME; anything else -> paho."""
    if address.scheme == "memory":
        return MemoryTransport(address.host)
    return PahoTransport(address)
