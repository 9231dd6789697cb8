"""Test helpers for fabric-level tests: VCVs from text, agents in-process, waiting on conditions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agents.spec import AgentSpec
from fabric.bus import Incoming
from fabric.embeddings import Embedder
from fabric.envelope import Envelope
from fabric.vcv import VCV


def spec(agent_id: str, description: str = "answers questions", **kw: object) -> AgentSpec:
    return AgentSpec(id=agent_id, description=description, **kw)  # type: ignore[arg-type]


async def eventually(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def envelope(msg: Incoming) -> Envelope[Any]:
    """The envelope of a message a handler got (only a cleared retained topic has none)."""
    assert msg.envelope is not None, f"empty payload on {msg.topic}"
    return msg.envelope


def body(msg: Incoming) -> Any:
    """The typed body of a message a handler got."""
    return envelope(msg).body


def vcv_for(embedder: Embedder, agent_id: str, description: str, version: int = 1, **kw: object) -> VCV:
    from agents.sdk import build_vcv

    return build_vcv(spec(agent_id, description, **kw), embedder, version=version)
