"""Where a running local federation can be found: `foa up` writes it, other commands read it."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from fabric.broker import pid_alive
from fabric.bus import BrokerAddress
from fabric.errors import ConfigError
from fabric.settings import Settings


class RuntimeInfo(BaseModel):
    broker_url: str
    pid: int
    started_at: float
    agents: list[str] = []


class NoFederation(ConfigError, RuntimeError):
    """Neither FOA_BROKER_URL nor a running `foa up` in this directory names a broker."""


def runtime_file(settings: Settings) -> Path:
    return settings.data_dir / "federation.json"


def write_runtime(settings: Settings, info: RuntimeInfo) -> None:
    path = runtime_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.model_dump_json(indent=2))


def clear_runtime(settings: Settings) -> None:
    runtime_file(settings).unlink(missing_ok=True)


def running_federation(settings: Settings) -> RuntimeInfo | None:
    """The `foa up` running from this directory (`<data_dir>/federation.json`), if its process lives."""
    path = runtime_file(settings)
    try:
        info = RuntimeInfo.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); delete it if no `foa up` runs here") from exc
    return info if pid_alive(info.pid) else None


def broker_url(settings: Settings) -> str:
    """FOA_BROKER_URL, else the broker of a `foa up` running from this directory."""
    if settings.broker_url:
        return settings.broker_url
    info = running_federation(settings)
    if info is not None:
        return info.broker_url
    raise NoFederation(
        "no federation to talk to: start one with `foa up` (in this directory) or set FOA_BROKER_URL=mqtt://host:1883"
    )


def resolve_broker(settings: Settings) -> BrokerAddress:
    """`broker_url(settings)`, parsed."""
    return BrokerAddress.parse(broker_url(settings))
