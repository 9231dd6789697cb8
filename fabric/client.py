"""Submitting a job to a federation and following it: what `foa run` and `foa submit` use.

Submission is at-least-once from the client's side: the job is re-sent (same job id) until the
orchestrator shows a sign of life for it (an event or the result), and orchestrators run a job
id once, so a submission lost to a broker restart is not a lost job. After that, a job silent for
`stall_resend_s` is re-sent too: an orchestrator answers a finished job id with its stored result,
so a result whose publication a crash or a broker outage swallowed is not a lost job either.

`follow_federation` adds what a person's `foa submit` needs when the federation itself restarts
(`foa up` killed and started again, maybe on another port): it re-locates the broker (the
`.foa/federation.json` of the running `foa up`), reconnects and re-sends by job id until the
answer comes or `timeout` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from fabric import topics
from fabric.aio import wait_within
from fabric.bus import BrokerAddress, Bus, BusError, Incoming
from fabric.envelope import make
from fabric.errors import FoAError
from fabric.messages import Budget, JobCancel, JobEvent, JobOptions, JobResult, JobSubmit
from fabric.settings import Settings

log = logging.getLogger("foa.client")


class JobFailed(FoAError, RuntimeError):
    """A job that could not be followed to its end (no orchestrator, or no result in time)."""


class JobTimeout(JobFailed, TimeoutError):
    """The caller's time to wait ran out (the job may still finish: follow it again by its id)."""


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
    conversation_id: str | None = None,
) -> JobResult:
    submit = JobSubmit(
        job_id=job_id or new_job_id(),
        question=question,
        conversation_id=conversation_id,
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

    # both SUBSCRIBEs in one round trip to the broker, not two (a job's wall time includes it)
    subscribed = await asyncio.gather(
        bus.subscribe(topics.job_events(submit.job_id), on_evt, body_types=JobEvent),
        bus.subscribe(topics.job_result(submit.job_id), on_result, body_types=JobResult),
        return_exceptions=True,
    )
    failed = [r for r in subscribed if isinstance(r, BaseException)]
    if failed:
        with contextlib.suppress(BusError):
            await bus.unsubscribe(topics.job_events(submit.job_id))
            await bus.unsubscribe(topics.job_result(submit.job_id))
        raise failed[0]
    deadline = time.monotonic() + timeout
    sent_at = float("-inf")
    try:
        while True:
            now = time.monotonic()
            if not alive.is_set() and now - sent_at >= resend_every or now - max(heard[0], sent_at) >= stall_resend_s:
                try:
                    # no wait for the acknowledgement: while the broker is away the bus keeps the
                    # message and sends it on reconnecting, and the result must not wait on it
                    await bus.publish(
                        topics.JOBS_SUBMIT, make(submit, job_id=submit.job_id, sender=bus.client_id), wait=False
                    )
                except BusError:  # broker away: the next round sends it again
                    pass
                sent_at = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                if not alive.is_set():
                    raise JobTimeout(
                        f"no orchestrator picked up job {submit.job_id} within {timeout:.0f}s: "
                        "is `foa orchestrator` (or `foa up`) running?"
                    )
                raise JobTimeout(
                    f"job {submit.job_id} did not finish within {timeout:.0f}s; it may still finish: "
                    f"`foa job show {submit.job_id}`, or follow it again with the same --job-id"
                )
            try:
                return await wait_within(asyncio.shield(result), min(resend_every, left))
            except TimeoutError:
                continue
    finally:
        with contextlib.suppress(BusError):  # a bus that lost its broker: nothing to unsubscribe from
            await bus.unsubscribe(topics.job_events(submit.job_id))
            await bus.unsubscribe(topics.job_result(submit.job_id))


async def follow_federation(
    settings: Settings,
    locate: Callable[[], BrokerAddress],
    question: str,
    *,
    job_id: str | None = None,
    options: JobOptions | None = None,
    budget: Budget | None = None,
    policies: list[str] | None = None,
    on_event: Callable[[JobEvent], None] | None = None,
    timeout: float = 900.0,
    check_every: float = 1.0,
    conversation_id: str | None = None,
) -> JobResult:
    """`submit_and_follow` that survives the federation restarting under it.

    `locate()` names the broker now (raises while no federation runs). While the broker is
    reachable the bus reconnects on its own; when `locate()` names another one (a restarted
    `foa up` on another port) the job follows it there, re-sent by the same id (an orchestrator
    runs a job id once and answers a finished one with its stored result). Raises `JobTimeout`
    when `timeout` seconds pass without a result.
    """
    job_id = job_id or new_job_id()
    deadline = time.monotonic() + timeout
    seen: set[int] = set()

    def once(event: JobEvent) -> None:  # events replayed after a move are shown once
        if event.seq not in seen:
            seen.add(event.seq)
            if on_event is not None:
                on_event(event)

    waiting_since: float | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobTimeout(
                f"job {job_id}: no answer within {timeout:.0f}s (the federation was unreachable at the end); "
                f"follow it again with the same --job-id once `foa up` runs"
            )
        try:
            address = locate()
            bus = Bus(settings, f"cli-{uuid.uuid4().hex[:8]}", broker=address, persistent=False)
            await bus.connect(timeout=min(5.0, left))
        except (FoAError, BusError, RuntimeError, OSError) as exc:
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.warning("federation not reachable; waiting for it", extra={"job_id": job_id, "reason": str(exc)})
            await asyncio.sleep(min(check_every, max(0.0, deadline - time.monotonic())))
            continue
        if waiting_since is not None:
            log.warning("federation back; following the job there", extra={"job_id": job_id, "broker": address.url})
            waiting_since = None
        try:
            follow = asyncio.create_task(
                submit_and_follow(
                    bus,
                    question,
                    job_id=job_id,
                    options=options,
                    budget=budget,
                    policies=policies,
                    on_event=once,
                    timeout=max(0.1, deadline - time.monotonic()),
                    conversation_id=conversation_id,
                )
            )
            while not follow.done():
                await asyncio.wait({follow}, timeout=check_every)
                if follow.done():
                    break
                try:
                    moved = locate() != address
                except (FoAError, RuntimeError, ValueError, OSError):
                    moved = not bus.connected  # no federation now: keep waiting on this bus while it is up
                if moved:
                    follow.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await follow
                    break
            if follow.done() and not follow.cancelled():
                return follow.result()
        finally:
            await bus.close()


async def cancel_job(bus: Bus, job_id: str, reason: str = "") -> None:
    """Ask whichever orchestrator owns `job_id` to cancel it (QoS 1; harmless when repeated or
    when the job already ended). The job's result, status `canceled`, arrives on its result topic."""
    topics.validate_id(job_id, "job id")
    await bus.publish(
        topics.job_cancel(job_id), make(JobCancel(job_id=job_id, reason=reason), job_id=job_id, sender=bus.client_id)
    )
