"""One exception hierarchy for the whole fabric, rooted at `FoAError`.

A caller that wants "anything FoA raised on purpose" catches `FoAError`; the subclasses say
which layer refused and keep the message that tells the user what to do. Each module defines its
own specific errors (so the raise sits next to the reason) but roots them here; the classes that
several layers share live in this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "ConfigError",
    "FoAError",
    "ProtocolError",
    "TransportError",
    "readable",
]


class FoAError(Exception):
    """Root of every error FoA raises deliberately."""


class ConfigError(FoAError, ValueError):
    """Settings, specs, keys or command-line arguments that cannot work; the message says the fix."""


class ProtocolError(FoAError, ValueError):
    """A payload, envelope or task that does not follow the wire protocol."""


class TransportError(FoAError, RuntimeError):
    """The broker connection or a request over it failed."""


def readable(exc: ValidationError, names: dict[str, str] | None = None, limit: int = 3) -> str:
    """A pydantic error as `field: message` parts (at most `limit`), fields renamed by `names`
    (e.g. to the command-line flags that set them): what a user reads instead of pydantic's dump."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"])
        loc = (names or {}).get(loc, loc) or "value"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
