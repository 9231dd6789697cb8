"""The federation as seen by `foa a2a serve` and `foa mcp serve`: one bus connection that
submits and follows jobs, cancels them, asks the router, and keeps a live view of the agents."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fabric.bus import BrokerAddress, Bus
from fabric.client import cancel_job, submit_and_follow
from fabric.errors import ConfigError
from fabric.messages import Budget, JobEvent, JobResult, RouteQuery, RouteResponse
from fabric.registry import Registry
from fabric.settings import Settings


class JobRequest(BaseModel):
    """What a caller may set on a job, from A2A message metadata or MCP tool arguments."""

    model_config = ConfigDict(extra="ignore")

    budget_tokens: int | None = Field(default=None, gt=0)
    max_cost: float | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0)
    policies: list[str] = Field(default_factory=list)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> JobRequest:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid job options (budget_tokens, max_cost, deadline_s, policies): {exc}") from exc

    def budget(self) -> Budget:
        return Budget(max_tokens=self.budget_tokens, max_cost=self.max_cost, deadline_s=self.deadline_s)


def progress_text(event: JobEvent) -> str:
    return f"{event.phase}: {event.message}"


class FederationLink:
    """Connects lazily (in the serving event loop) and stays connected."""

    def __init__(self, settings: Settings, role: str, broker: BrokerAddress | None = None) -> None:
        self.settings = settings
        self.role = role
        self._broker = broker
        self.bus: Bus | None = None
        self.registry = Registry()
        self._lock = asyncio.Lock()

    async def connect(self) -> Bus:
        async with self._lock:
            if self.bus is None:
                if self._broker is None:
                    from fabric.runtime import resolve_broker

                    self._broker = resolve_broker(self.settings)
                bus = Bus(self.settings, f"{self.role}-{uuid.uuid4().hex[:8]}", broker=self._broker, persistent=False)
                await bus.connect()
                await self.registry.attach(bus)
                self.bus = bus
                await self.registry.settle(quiet_s=0.5, max_s=5.0)
            return self.bus

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()
            self.bus = None

    async def run_job(
        self,
        question: str,
        job_id: str,
        request: JobRequest,
        on_event: Callable[[JobEvent], None] | None = None,
        conversation_id: str | None = None,
    ) -> JobResult:
        """`conversation_id`: the conversation the job continues (None: it starts one, named in the result)."""
        bus = await self.connect()
        timeout = (request.deadline_s + 30.0) if request.deadline_s else 900.0
        return await submit_and_follow(
            bus,
            question,
            job_id=job_id,
            budget=request.budget(),
            policies=request.policies,
            on_event=on_event,
            timeout=timeout,
            conversation_id=conversation_id,
        )

    async def cancel(self, job_id: str, reason: str) -> None:
        await cancel_job(await self.connect(), job_id, reason)

    async def route(self, query: RouteQuery) -> RouteResponse:
        from router.client import RouterClient

        return await RouterClient(await self.connect()).route(query)

    async def agents(self) -> list[dict[str, Any]]:
        await self.connect()
        rows = [e.summary() for e in self.registry.live()]
        return sorted((r for r in rows if r["status"] != "offline"), key=lambda r: str(r["agent_id"]))


def job_summary(result: JobResult) -> dict[str, Any]:
    """The parts of a result a remote caller needs besides the answer."""
    return {
        "job_id": result.job_id,
        "conversation_id": result.conversation_id,
        "status": result.status,
        "failure_reason": result.failure_reason,
        "dag": result.dag.model_dump(mode="json"),
        "assignments": {n: [m.agent_id for m in ms] for n, ms in result.assignments.items()},
        "usage": result.usage.model_dump(mode="json", exclude={"failures"}),
        "warnings": result.warnings,  # a guessed part of the answer (JobResult.warnings)
    }
