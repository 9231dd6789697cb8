"""One exception hierarchy for the whole fabric, rooted at `FoAError`.

A caller that wants "anything FoA raised on purpose" catches `FoAError`; the subclasses say
which layer refused and keep the message that tells the user what to do. Each module defines its
own specific errors (so the raise sits next to the reason) but roots them here; the classes that
several layers share live in this module.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FoAError",
    "ProtocolError",
    "TransportError",
]


class FoAError(Exception):
    """Root of every error FoA raises deliberately."""


class ConfigError(FoAError, ValueError):
    """Settings, specs, keys or command-line arguments that cannot work; the message says the fix."""


class ProtocolError(FoAError, ValueError):
    """A payload, envelope or task that does not follow the wire protocol."""


class TransportError(FoAError, RuntimeError):
    """The broker connection or a request over it failed."""
