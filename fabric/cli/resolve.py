"""What `main` settles for every subcommand before its handler runs: its arguments, then its broker.

Order matters: a bad argument is reported before anything starts (`foa run ""` used to start a
broker, a router and twelve agents and then print a raw pydantic error), and the broker is
resolved once, here, so every command finds a federation the same way (`foa status` used to
ignore the `foa up` that `foa agents` found).

A subcommand opts in with `set_defaults`:
- `needs_broker=True`: `settings.broker_url` is set from FOA_BROKER_URL, else from the
  `.foa/federation.json` a `foa up` in this directory writes (fabric/runtime.py);
- `validate=fn`: `fn(args)` raises `UsageError` for arguments that cannot work.
"""

from __future__ import annotations

import argparse
import math

from fabric.errors import ConfigError
from fabric.settings import Settings

__all__ = ["UsageError", "at_least", "prepare", "require_text", "resolve_broker_url"]


class UsageError(ConfigError):
    """Command-line arguments that cannot work; `foa` prints the message and exits 2."""


def resolve_broker_url(settings: Settings) -> str:
    """Set and return `settings.broker_url`: FOA_BROKER_URL, else the running `foa up`'s broker."""
    from fabric.runtime import broker_url

    settings.broker_url = broker_url(settings)
    return settings.broker_url


def prepare(args: argparse.Namespace, settings: Settings) -> None:
    """Validate the arguments, then resolve the broker if the command needs one."""
    validate = getattr(args, "validate", None)
    if validate is not None:
        validate(args)
    if getattr(args, "needs_broker", False):
        resolve_broker_url(settings)


def require_text(value: str | None, what: str, example: str) -> str:
    """A non-blank text argument."""
    if value is None or not value.strip():
        raise UsageError(f"{what} is empty: give it, e.g. {example}")
    return value


def at_least(value: float | None, minimum: float, flag: str, *, strict: bool = False) -> None:
    """An optional number ≥ `minimum` (> with `strict`), finite."""
    if value is None:
        return
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
        raise UsageError(f"{flag} must be {bound}, not {value:g}")
