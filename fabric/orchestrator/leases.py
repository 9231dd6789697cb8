"""Job leases: which orchestrator replica runs which job, and takeover when a replica dies.

A replica owns each job it runs through a lease in the job store (owner, expiry, fencing
token; see fabric/orchestrator/store.py). `LeaseKeeper` renews this replica's leases every third
of `lease_s` while their jobs run, and every `lease_scan_s` looks for unfinished jobs whose lease
expired — their replica is dead, paused or cut off from the store — and takes them over: the
acquisition is one atomic UPDATE, so of several replicas scanning at once exactly one gets each
job, and it resumes the job from its last checkpoint. A dead replica's jobs are therefore running
again within `lease_s + lease_scan_s` (defaults 10 + 2 s).

The fencing token makes the takeover safe against a replica that was only paused: its next
write is rejected by the store, which calls `abandon(job_id)` here, and the replica drops the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from fabric.messages import JobSubmit
from fabric.orchestrator.store import JobStore
from fabric.settings import Settings

log = logging.getLogger("foa.orchestrator")


class LeaseKeeper:
    def __init__(
        self,
        store: JobStore,
        owner: str,
        settings: Settings,
        *,
        start_job: Callable[[JobSubmit], None],
        abandon: Callable[[str], None],
        takeover: bool = True,
    ) -> None:
        """`takeover=False`: only renew this replica's own leases (a one-shot `foa run` answers its
        own question and leaves other jobs to a long-running orchestrator)."""
        self.store = store
        self.owner = owner
        self.settings = settings
        self.start_job = start_job
        self.abandon = abandon
        self.takeover = takeover
        self.takeovers = 0  # jobs taken over from another (dead) replica
        self.resumed = 0  # own jobs picked up again after a restart
        self.lost = 0  # jobs another replica took over from this one
        self._task: asyncio.Task[None] | None = None
        self._renewed_at = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.store.lease_s)

    async def start(self) -> None:
        """Claim what is claimable now (a restarted replica's own jobs at once), then keep going."""
        if not self.enabled:
            return
        self.store.on_fenced = self._fenced
        if self.takeover:
            self.claim()
        self._task = asyncio.create_task(self._loop(), name=f"leases-{self.owner}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def claim(self) -> list[str]:
        """Acquire every claimable job and start it; returns the job ids taken."""
        taken: list[str] = []
        for job_id in self.store.claimable(self.owner):
            before = self.store.get(job_id)
            token = self.store.acquire(job_id, self.owner)
            if token is None:
                continue  # another replica was faster
            submit = self.store.submit_of(job_id)
            if submit is None:
                continue
            if before is not None and before["owner"] not in (None, self.owner):
                self.takeovers += 1
                log.warning(
                    "taking over job of an expired lease",
                    extra={"job_id": job_id, "from": before["owner"], "token": token, "phase": before["phase"]},
                )
            else:
                self.resumed += 1
                log.info("resuming job", extra={"job_id": job_id, "token": token})
            self.start_job(submit)
            taken.append(job_id)
        return taken

    def _fenced(self, job_id: str) -> None:
        self.lost += 1
        self.abandon(job_id)

    async def _loop(self) -> None:
        lease_s = self.settings.lease_s
        tick = min(self.settings.lease_scan_s, lease_s / 3)
        while True:
            await asyncio.sleep(tick)
            try:
                now = time.monotonic()
                if now - self._renewed_at >= lease_s / 3:
                    self.store.renew(self.owner)  # lost leases come back through on_fenced
                    self._renewed_at = now
                if self.takeover:
                    self.claim()
            except Exception:  # noqa: BLE001 - the store may be briefly away; fencing guards the writes
                log.exception("lease renewal or takeover scan failed; retrying", extra={"owner": self.owner})
