"""One test suite for both job stores: SQLite (embedded default) and PostgreSQL (a throwaway
cluster started by the `postgres` fixture: initdb + pg_ctl in a temporary directory).

Leases and fencing are tested here store against store (two store objects = two replicas);
tests/test_takeover.py does the same with real orchestrator processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fabric.messages import JobEvent, JobResult, JobSubmit
from fabric.orchestrator.store import (
    ANSWER_SUMMARY_CHARS,
    GROUP_COMMIT_S,
    ORPHANED,
    ConversationTurn,
    FencedOut,
    JobStore,
    open_store,
    shown_state,
)
from fabric.settings import Settings
from tests.pg_cluster import PostgresCluster, postgres  # noqa: F401 - the session fixture

StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one database (each call: another replica's connection)."""
    if request.param == "sqlite":
        target = str(tmp_path / "jobs.sqlite3")
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        target = cluster.new_database(f"t_{uuid.uuid4().hex[:10]}")
    opened: list[JobStore] = []

    def factory(lease_s: float | None = None, **settings_kw: object) -> JobStore:
        settings = Settings(
            data_dir=tmp_path,
            store_url=None if request.param == "sqlite" else target,
            lease_s=lease_s or 10.0,
            **settings_kw,  # type: ignore[arg-type]
        )
        store = open_store(settings, leases=lease_s is not None)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        try:
            store.close()
        except Exception:  # noqa: BLE001 - a test may have closed it already
            pass


def submit(job_id: str = "j1") -> JobSubmit:
    return JobSubmit(job_id=job_id, question=f"question of {job_id}")


def test_admit_once_and_read_back(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.admit(submit("j1"), owner="o")
    assert not store.admit(submit("j1"), owner="other")  # a job id runs once
    store.set_state("j1", "running", "decompose")
    store.checkpoint("j1", "dag", {"nodes": [1, 2]})
    store.add_event(JobEvent(job_id="j1", seq=1, phase="decompose", message="planned"))
    row = store.get("j1")
    assert row is not None and (row["state"], row["phase"], row["question"]) == (
        "running",
        "decompose",
        "question of j1",
    )
    assert store.checkpoints("j1") == {"dag": {"nodes": [1, 2]}}
    assert [e.message for e in store.events("j1")] == ["planned"]
    assert store.next_seq("j1") == 2
    assert [s.job_id for s in store.unfinished()] == ["j1"]
    assert store.result("j1") is None
    store.finish(JobResult(job_id="j1", status="completed", answer="a"))
    assert store.result("j1") == JobResult(job_id="j1", status="completed", answer="a", timings={})
    assert store.unfinished() == []
    assert [r["job_id"] for r in store.list(state="completed")] == ["j1"]
    assert store.get("nope") is None


def test_conversation_turns_survive_a_reopen_and_idle_ones_are_forgotten(make_store: StoreFactory) -> None:
    store = make_store(conversation_retention_s=3600.0)
    now = time.time()

    def turn(job_id: str, at: float, answer: str = "an answer") -> ConversationTurn:
        return ConversationTurn(
            job_id=job_id, question=f"question {job_id}", answer=answer, agents=["gp"], policies=["hipaa"], at=at
        )

    store.add_turn("c1", turn("j1", now - 20, answer="x" * 1000))
    store.add_turn("c1", turn("j2", now - 10))
    store.add_turn("c1", turn("j3", now - 5))
    store.add_turn("c-idle", turn("j0", now - 7200))  # idle longer than the retention
    got = store.turns("c1")
    assert [t.job_id for t in got] == ["j1", "j2", "j3"]
    assert len(got[0].answer) == ANSWER_SUMMARY_CHARS and got[0].agents == ["gp"] and got[0].question == "question j1"
    assert got[0].policies == ["hipaa"]
    assert [t.job_id for t in store.turns("c1", limit=2)] == ["j2", "j3"]  # the recent ones
    assert [t.job_id for t in store.turns("c1", limit=2, before="j3")] == ["j1", "j2"]  # a resumed j3 sees no later
    assert store.turns("c1", limit=0) == [] and store.turns("unknown") == []
    assert store.turns("c-idle") == []  # past its retention: gone for readers before it is pruned
    store.close()

    # another store on the same database (an orchestrator restarted, or a replica): the turns are
    # there; the idle conversation is pruned when it opens
    reopened = make_store(conversation_retention_s=3600.0)
    assert [t.job_id for t in reopened.turns("c1")] == ["j1", "j2", "j3"]
    assert reopened.prune_conversations() == 0  # pruned at open already
    keep_all = make_store(conversation_retention_s=1e9)
    assert keep_all.turns("c-idle") == []
    # a job continuing a conversation is listed under it; a job starting one under its own id
    assert reopened.admit(JobSubmit(job_id="j4", question="and for a child?", conversation_id="c1"), owner="o")
    assert reopened.admit(submit("j5"), owner="o")
    rows = {r["job_id"]: r["conversation_id"] for r in reopened.list()}
    assert rows == {"j4": "c1", "j5": "j5"}


def test_group_commit_in_one_loop_turn_and_reopen(make_store: StoreFactory) -> None:
    store = make_store()

    async def main() -> None:
        assert store.admit(submit("g1"), owner="o")
        store.set_state("g1", "running", "execute")
        store.checkpoint("g1", "usage", {"tokens": 1})
        store.checkpoint("g1", "usage", {"tokens": 3})  # the newer one replaces it before serialising
        store.add_event(JobEvent(job_id="g1", seq=1, phase="execute", message="m"))
        assert store.pending == 3
        assert store.checkpoints("g1") == {"usage": {"tokens": 3}}  # reads see pending writes
        store.checkpoint("g1", "node:a", {"answer": "x"})
        await asyncio.sleep(GROUP_COMMIT_S * 5)
        assert store.pending == 0  # committed, together, within the group-commit window

    asyncio.run(main())
    store.close()
    again = make_store()
    assert again.checkpoints("g1") == {"usage": {"tokens": 3}, "node:a": {"answer": "x"}}
    assert again.get("g1")["state"] == "running"  # type: ignore[index]


def test_lease_blocks_others_until_it_expires(make_store: StoreFactory) -> None:
    a, b = make_store(lease_s=1.0), make_store(lease_s=1.0)
    assert a.admit(submit("l1"), owner="A")
    assert a.held() == {"l1": 1}
    assert b.acquire("l1", "B") is None  # A's lease is live
    assert b.claimable("B") == []
    assert a.renew("A") == []
    time.sleep(1.2)  # A stops renewing (dead or paused)
    row = b.get("l1")
    assert row is not None and row["orphaned"] and shown_state(row) == ORPHANED  # what `foa jobs` shows
    assert b.claimable("B") == ["l1"]
    assert b.acquire("l1", "B") == 2  # the fencing token grows on every acquisition
    row = b.get("l1")
    assert row is not None and (row["owner"], row["lease_token"], row["takeovers"], shown_state(row)) == (
        "B",
        2,
        1,
        "queued",
    )
    assert a.renew("A") == ["l1"]  # A learns it lost the job
    assert a.held() == {}


def test_a_stale_runner_cannot_end_a_newer_lease(make_store: StoreFactory) -> None:
    """A replica fenced out of a job and then taking it again holds a new token: the old
    runner's exit (`release` with the token it started with) must not end the new lease, and
    a result needs the lease (unfenced writes of a job held nowhere were the chaos test's
    duplicate)."""
    a, b = make_store(lease_s=0.5), make_store(lease_s=0.5)
    assert a.admit(submit("r1"), owner="A")
    first = a.token("r1")
    time.sleep(0.7)
    assert b.acquire("r1", "B") == 2  # B takes it over, then stops renewing
    assert a.renew("A") == ["r1"] and a.token("r1") is None
    time.sleep(0.7)
    assert a.acquire("r1", "A") == 3  # A takes it again
    a.release("r1", first)  # the old runner unwinds: the new lease stays
    assert a.token("r1") == 3 and b.acquire("r1", "B") is None
    a.release("r1", 3)  # the new runner is cancelled: now it is free at once
    assert a.token("r1") is None and b.acquire("r1", "B") == 4
    with pytest.raises(FencedOut):  # A holds nothing: no result of A's lands
        a.finish(JobResult(job_id="r1", status="completed", answer="A's answer"))
    assert b.result("r1") is None
    b.finish(JobResult(job_id="r1", status="completed", answer="B's answer"))
    result = a.result("r1")
    assert result is not None and result.answer == "B's answer"


def test_fenced_replica_cannot_write(make_store: StoreFactory) -> None:
    a, b = make_store(lease_s=0.5), make_store(lease_s=10.0)
    fenced: list[str] = []
    a.on_fenced = fenced.append
    assert a.admit(submit("f1"), owner="A")
    a.checkpoint("f1", "dag", {"by": "A"})
    time.sleep(0.7)  # A is paused past its lease
    assert b.acquire("f1", "B") == 2
    b.checkpoint("f1", "dag", {"by": "B"})
    # A wakes up and writes: dropped, and A is told to abandon the job
    a.checkpoint("f1", "dag", {"by": "A, stale"})
    a.set_state("f1", "running", "stale")
    a.add_event(JobEvent(job_id="f1", seq=7, phase="stale", message="from A"))
    assert fenced == ["f1"]
    with pytest.raises(FencedOut):
        a.finish(JobResult(job_id="f1", status="completed", answer="A's answer"))
    assert b.checkpoints("f1") == {"dag": {"by": "B"}}
    assert b.events("f1") == []
    b.finish(JobResult(job_id="f1", status="completed", answer="B's answer"))
    result = a.result("f1")
    assert result is not None and result.answer == "B's answer"
    assert b.acquire("f1", "C") is None  # a finished job is never taken over


def test_one_winner_when_replicas_race_for_an_expired_lease(make_store: StoreFactory) -> None:
    first = make_store(lease_s=0.3)
    for i in range(20):
        assert first.admit(submit(f"r{i}"), owner="dead")
    time.sleep(0.5)
    racers = [make_store(lease_s=30.0) for _ in range(3)]
    won: dict[str, list[str]] = {}
    barrier = threading.Barrier(len(racers))

    def race(k: int) -> None:
        barrier.wait()
        for i in range(20):
            if racers[k].acquire(f"r{i}", f"R{k}") is not None:
                won.setdefault(f"r{i}", []).append(f"R{k}")

    threads = [threading.Thread(target=race, args=(k,)) for k in range(len(racers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(won) == sorted(f"r{i}" for i in range(20))
    assert all(len(winners) == 1 for winners in won.values()), won  # exactly once


def test_restarted_replica_reclaims_its_own_jobs_at_once(make_store: StoreFactory) -> None:
    before = make_store(lease_s=30.0)
    assert before.admit(submit("o1"), owner="orchestrator-0")
    after = make_store(lease_s=30.0)  # the same replica id after a crash: no need to wait 30 s
    assert after.claimable("orchestrator-0") == ["o1"]
    assert after.claimable("orchestrator-1") == []
    assert after.acquire("o1", "orchestrator-0") == 2
    assert after.get("o1")["takeovers"] == 0  # type: ignore[index]


def test_sqlite_file_from_before_leases_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, submit TEXT NOT NULL, state TEXT NOT NULL,"
        " phase TEXT NOT NULL DEFAULT '', owner TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " result TEXT, failure TEXT);"
    )
    db.execute(
        "INSERT INTO jobs VALUES ('old', ?, 'running', 'execute', 'o', 1, 1, NULL, NULL)",
        (submit("old").model_dump_json(),),
    )
    db.commit()
    db.close()
    store = JobStore(path, lease_s=5.0)
    row = store.get("old")
    assert row is not None and (row["state"], row["lease_token"]) == ("running", 0)
    assert store.claimable("new-owner") == ["old"]  # never leased: free to take
    assert store.acquire("old", "new-owner") == 1
    store.close()


def test_postgres_store_survives_a_server_restart(postgres: PostgresCluster, tmp_path: Path) -> None:  # noqa: F811
    """Replicas outlive a PostgreSQL restart (upgrade, failover): the next statement reconnects."""
    url = postgres.new_database(f"t_{uuid.uuid4().hex[:10]}")
    store = open_store(Settings(data_dir=tmp_path, store_url=url, lease_s=30.0))
    try:
        assert store.admit(submit("pg1"), owner="A")
        store.checkpoint("pg1", "dag", {"n": 1})
        postgres.restart()
        store.checkpoint("pg1", "dag", {"n": 2})  # the first write after the restart: a new connection
        assert store.checkpoints("pg1") == {"dag": {"n": 2}}
        assert store.renew("A") == []
        store.finish(JobResult(job_id="pg1", status="completed", answer="a"))
        assert store.get("pg1")["state"] == "completed"  # type: ignore[index]
    finally:
        store.close()
