"""Where a running local federation can be found: `foa up` writes it, other commands read it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from fabric.bus import BrokerAddress
from fabric.settings import Settings


class RuntimeInfo(BaseModel):
    broker_url: str
    pid: int
    started_at: float
    agents: list[str] = []


def runtime_file(settings: Settings) -> Path:
    return settings.data_dir / "federation.json"


def write_runtime(settings: Settings, info: RuntimeInfo) -> None:
    path = runtime_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(info.model_dump_json(indent=2))


def clear_runtime(settings: Settings) -> None:
    runtime_file(settings).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_broker(settings: Settings) -> BrokerAddress:
    """FOA_BROKER_URL, else the broker of a `foa up` running from this directory."""
    if settings.broker_url:
        return BrokerAddress.parse(settings.broker_url)
    path = runtime_file(settings)
    if path.exists():
        info = RuntimeInfo.model_validate(json.loads(path.read_text()))
        if _alive(info.pid):
            return BrokerAddress.parse(info.broker_url)
    raise RuntimeError(
        "no federation to talk to: start one with `foa up` (in this directory) or set FOA_BROKER_URL=mqtt://host:1883"
    )
