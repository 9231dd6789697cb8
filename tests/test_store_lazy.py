"""Lazy checkpoints (a job's usage after each call) ride along with the store's next commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fabric.messages import JobEvent, JobResult, JobSubmit
from fabric.orchestrator.store import GROUP_COMMIT_S, JobStore


def test_a_lazy_checkpoint_commits_with_the_next_write_and_with_the_result(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"

    async def main() -> None:
        store, other = JobStore(path), JobStore(path)  # `other`: another replica's connection
        assert store.admit(JobSubmit(job_id="j1", question="q"), owner="o")
        store.checkpoint("j1", "usage", {"tokens": 1}, lazy=True)
        await asyncio.sleep(GROUP_COMMIT_S * 5)
        assert store.pending == 1  # no commit of its own
        assert other.checkpoints("j1") == {}
        store.add_event(JobEvent(job_id="j1", seq=1, phase="draft", message="m"))
        await asyncio.sleep(GROUP_COMMIT_S * 5)
        assert not store.pending and other.checkpoints("j1") == {"usage": {"tokens": 1}}
        store.checkpoint("j1", "usage", {"tokens": 2}, lazy=True)
        store.finish(JobResult(job_id="j1", status="completed", answer="a"))  # the result takes it along
        assert other.checkpoints("j1") == {"usage": {"tokens": 2}}
        store.close()
        other.close()

    asyncio.run(main())
