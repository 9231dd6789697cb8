"""Sending a task to an agent and getting its result: at-least-once with idempotent workers.

MQTT QoS 1 covers a message's hop to the broker and on to a connected subscriber, but a broker
may drop what it held for a shared subscription when it restarts (mosquitto 2.0 does), and a
replica may die mid-task. So the requester re-sends the same task (same `task_id`, new envelope
id) until a result arrives or the deadline passes, and the agent answers a repeated task_id
from its cache instead of running it twice.

`dispatch_task(bus, agent, DRAFT, DraftInput(...))` is the typed call for registered kinds (a
payload of the wrong kind is a type error; the answer is a `DraftOutput`); `dispatch` sends any
kind, an agent's own included, with dict in and out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Generic

from pydantic import ValidationError

from fabric import topics
from fabric.bus import Bus, BusError, RequestTimeout
from fabric.errors import FoAError
from fabric.messages import TaskRequest, TaskResult
from fabric.tasks import InT, OutT, TaskKind


class TaskError(FoAError, RuntimeError):
    """The agent answered, but with an error (or with an output its kind does not allow)."""

    def __init__(self, agent_id: str, task_kind: str, message: str) -> None:
        super().__init__(f"agent {agent_id} failed {task_kind}: {message}")
        self.agent_id = agent_id


@dataclass(frozen=True)
class Answer(Generic[OutT]):
    """A typed answer: the kind's output model, and the result it came in (usage, latency)."""

    output: OutT
    result: TaskResult


async def dispatch_task(
    bus: Bus,
    agent_id: str,
    kind: TaskKind[InT, OutT],
    payload: InT,
    *,
    timeout: float,
    **options: Any,
) -> Answer[OutT]:
    """Run one task of a registered kind on `agent_id`: `payload` must be the kind's input model,
    the answer is its output model. `options` are `dispatch`'s (node_id, job_id, max_tokens, ...)."""
    result = await dispatch(bus, agent_id, kind.name, payload.model_dump(mode="json"), timeout=timeout, **options)
    try:
        return Answer(kind.output.model_validate(result.output), result)
    except ValidationError as exc:
        raise TaskError(
            agent_id, kind.name, f"answer is not a valid {kind.output.__name__}: {exc.errors()[0]['msg']}"
        ) from None


async def dispatch(
    bus: Bus,
    agent_id: str,
    task_kind: str,
    payload: dict[str, Any],
    *,
    timeout: float,
    retry_every: float | None = None,
    node_id: str | None = None,
    job_id: str | None = None,
    task_id: str | None = None,
    max_tokens: int | None = None,
    traceparent: str | None = None,
) -> TaskResult:
    """Run one task on `agent_id` and return its result (raises TaskError / RequestTimeout)."""
    task = TaskRequest(
        task_id=task_id or uuid.uuid4().hex,
        task_kind=task_kind,
        agent_id=agent_id,
        node_id=node_id,
        input=payload,
        deadline_at=time.time() + timeout,
        max_tokens=max_tokens,
    )
    deadline = time.monotonic() + timeout
    # re-send well after a normal answer would come; the agent de-duplicates on task_id
    retry_every = retry_every or max(2.0, timeout / 4)
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(
                f"agent {agent_id} did not answer {task_kind} within {timeout:.0f}s ({attempt - 1} attempts)"
            )
        try:
            env = await bus.request(
                topics.agent_tasks(agent_id),
                task,
                expect=TaskResult,
                timeout=min(retry_every, left),
                job_id=job_id,
                traceparent=traceparent,
                what=f"agent {agent_id}",
            )
        except RequestTimeout:
            continue
        except BusError:
            if not bus.connected:  # broker away: wait for the reconnect, then re-send
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            raise
        result: TaskResult = env.body
        if not result.ok:
            raise TaskError(agent_id, task_kind, result.error or "unknown error")
        return result
