"""Submitting a job to a federation and following it: what `foa run` and `foa submit` use.

Submission is at-least-once from the client's side: the job is re-sent (same job id) until the
orchestrator shows a sign of life for it (an event or the result), and orchestrators run a job
id once, so a submission lost to a broker restart is not a lost job. After that, a job silent for
`stall_resend_s` is re-sent too: an orchestrator answers a finished job id with its stored result,
so a result whose publication a crash or a broker outage swallowed is not a lost job either.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from fabric import topics
from fabric.bus import Bus, BusError, Incoming
from fabric.envelope import make
from fabric.errors import FoAError
from fabric.messages import Budget, JobCancel, JobEvent, JobOptions, JobResult, JobSubmit


class JobFailed(FoAError, RuntimeError):
    """A job that could not be followed to its end (no orchestrator, or no result in time)."""


def new_job_id() -> str:
    return f"job-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


async def submit_and_follow(
    bus: Bus,
    question: str,
    *,
    job_id: str | None = None,
    options: JobOptions | None = None,
    budget: Budget | None = None,
    policies: list[str] | None = None,
    on_event: Callable[[JobEvent], None] | None = None,
    timeout: float = 900.0,
    resend_every: float = 5.0,
    stall_resend_s: float = 30.0,
) -> JobResult:
    submit = JobSubmit(
        job_id=job_id or new_job_id(),
        question=question,
        options=options or JobOptions(),
        budget=budget or Budget(),
        policies=policies or [],
    )
    result: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
    alive = asyncio.Event()
    seen: set[int] = set()
    heard = [0.0]  # when the orchestrator last showed life for this job

    def on_evt(msg: Incoming) -> None:
        assert msg.envelope is not None
        event: JobEvent = msg.envelope.body
        alive.set()
        heard[0] = time.monotonic()
        if event.seq in seen:
            return
        seen.add(event.seq)
        if on_event is not None:
            on_event(event)

    def on_result(msg: Incoming) -> None:
        assert msg.envelope is not None
        alive.set()
        heard[0] = time.monotonic()
        if not result.done():
            result.set_result(msg.envelope.body)

    await bus.subscribe(topics.job_events(submit.job_id), on_evt, body_types=JobEvent)
    await bus.subscribe(topics.job_result(submit.job_id), on_result, body_types=JobResult)
    deadline = time.monotonic() + timeout
    sent_at = float("-inf")
    try:
        while True:
            now = time.monotonic()
            if not alive.is_set() and now - sent_at >= resend_every or now - max(heard[0], sent_at) >= stall_resend_s:
                try:
                    await bus.publish(topics.JOBS_SUBMIT, make(submit, job_id=submit.job_id, sender=bus.client_id))
                except BusError:  # broker away: the next round sends it again
                    pass
                sent_at = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                if not alive.is_set():
                    raise JobFailed(
                        f"no orchestrator picked up job {submit.job_id}: is `foa orchestrator` (or `foa up`) running?"
                    )
                raise JobFailed(f"job {submit.job_id} did not finish within {timeout:.0f}s")
            try:
                return await asyncio.wait_for(asyncio.shield(result), min(resend_every, left))
            except TimeoutError:
                continue
    finally:
        await bus.unsubscribe(topics.job_events(submit.job_id))
        await bus.unsubscribe(topics.job_result(submit.job_id))


async def cancel_job(bus: Bus, job_id: str, reason: str = "") -> None:
    """Ask whichever orchestrator owns `job_id` to cancel it (QoS 1; harmless when repeated or
    when the job already ended). The job's result, status `canceled`, arrives on its result topic."""
    topics.validate_id(job_id, "job id")
    await bus.publish(
        topics.job_cancel(job_id), make(JobCancel(job_id=job_id, reason=reason), job_id=job_id, sender=bus.client_id)
    )
