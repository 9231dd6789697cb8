"""A live view of the federation's agents, built from retained VCV and status topics alone.

The retained set is the snapshot and later messages are the deltas (the paper's Δ-gossip, done
by the broker); the newest version per agent wins and late older versions are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from fabric import topics
from fabric.aio import wait_within
from fabric.bus import Bus, Incoming
from fabric.messages import AgentStatus
from fabric.vcv import VCV, newer

log = logging.getLogger("foa.registry")


class AgentInfo(BaseModel):
    """One agent of the live registry (`AgentEntry.summary()`): what `foa agents --json` prints
    per agent and `foa.Client.agents()` returns."""

    agent_id: str
    name: str
    version: int
    status: str
    description: str
    skills: list[str]
    policies: list[str]
    cost_per_1k_input: float
    cost_per_1k_output: float
    latency_ms: float
    max_concurrency: int
    llm_model: str | None
    signed: bool


@dataclass
class AgentEntry:
    vcv: VCV | None = None
    status: str = "unknown"
    replicas_seen: set[str] = field(default_factory=set)
    updated_at: float = field(default_factory=time.time)

    def summary(self) -> dict[str, object]:
        vcv = self.vcv
        assert vcv is not None
        return {
            "agent_id": vcv.agent_id,
            "name": vcv.name,
            "version": vcv.version,
            "status": self.status,
            "description": vcv.description,
            "skills": vcv.skills,
            "policies": vcv.policies,
            "cost_per_1k_input": vcv.resources.cost_per_1k_input,
            "cost_per_1k_output": vcv.resources.cost_per_1k_output,
            "latency_ms": vcv.resources.latency_ms,
            "max_concurrency": vcv.resources.max_concurrency,
            "llm_model": vcv.llm_model,
            "signed": vcv.signature is not None,
        }


class Registry:
    """Newest VCV and status per agent. `stale_versions` counts late, older VCVs ignored."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentEntry] = {}
        self.stale_versions = 0
        self.changed = asyncio.Event()

    def apply_vcv(self, agent_id: str, vcv: VCV | None) -> bool:
        """Apply a VCV (None = the agent left). Returns whether the view changed."""
        if vcv is not None and vcv.agent_id != agent_id:
            log.warning(
                "VCV on another agent's topic ignored", extra={"topic_agent": agent_id, "vcv_agent": vcv.agent_id}
            )
            return False
        entry = self.agents.setdefault(agent_id, AgentEntry())
        if vcv is None:
            self.agents.pop(agent_id, None)
        elif newer(entry.vcv, vcv):
            entry.vcv = vcv
            entry.updated_at = time.time()
        else:
            self.stale_versions += 1
            return False
        self.changed.set()
        return True

    def apply_status(self, status: AgentStatus) -> None:
        entry = self.agents.setdefault(status.agent_id, AgentEntry())
        entry.status = status.status
        if status.replica_id:
            entry.replicas_seen.add(status.replica_id)
        self.changed.set()

    def live(self) -> list[AgentEntry]:
        return [e for e in self.agents.values() if e.vcv is not None]

    def get(self, agent_id: str) -> AgentEntry | None:
        entry = self.agents.get(agent_id)
        return entry if entry and entry.vcv else None

    async def attach(self, bus: Bus) -> None:
        """Follow the VCV and status streams of `bus`'s broker."""
        await bus.subscribe(topics.AGENT_VCV_WILDCARD, self._on_vcv, body_types=VCV, accept_empty=True)
        await bus.subscribe(topics.AGENT_STATUS_WILDCARD, self._on_status, body_types=AgentStatus)

    def _on_vcv(self, msg: Incoming) -> None:
        agent_id = topics.agent_id_of(msg.topic)
        if agent_id is None:
            return
        self.apply_vcv(agent_id, msg.envelope.body if msg.envelope else None)

    def _on_status(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        self.apply_status(msg.envelope.body)

    async def settle(self, quiet_s: float = 0.3, max_s: float = 5.0) -> None:
        """Wait until the retained snapshot has arrived (no change for `quiet_s`)."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            self.changed.clear()
            try:
                await wait_within(self.changed.wait(), quiet_s)
            except TimeoutError:
                return
