"""The job store: one row per job, an event log, checkpoints for resuming, and job leases.

Every state transition is written before the job moves on, so a restarted orchestrator (or
another replica) resumes each unfinished job from its last checkpoint (plan, assignments,
finished nodes). A job id is the primary key: a job submitted twice runs once.

`Store` is the interface the orchestrator uses; two implementations pass one test suite
(tests/test_store.py): `JobStore`, SQLite, embedded, the default; and
`fabric.orchestrator.store_postgres.PostgresJobStore` (`FOA_STORE_URL=postgresql://…`), shared by
replicas on several machines. `open_store(settings)` picks one.

Group commit: on an event loop, the writes made within GROUP_COMMIT_S of the first pending one
share one transaction instead of one commit each — a job makes ~40 writes, and a commit costs
~70 µs. Within that window, a newer checkpoint of the same (job, key) or a newer state of the
same job replaces the older one before anything is serialised (a job checkpoints its usage after
every call; the drafts of a node arrive within a millisecond or two of each other). Admission and the final result
commit at once: those two are what redelivery and duplicate detection rely on. Reads see pending
writes (they commit first).

Leases and fencing: a replica owns a job through a lease (owner, expiry, fencing token). Every
acquisition increments the token; the store remembers the token it holds for each job, and a
commit first re-reads the tokens of the jobs it writes (locked against a concurrent takeover) and
drops the writes of a job whose token moved on. That job is reported to `on_fenced`: the replica
that was paused or cut off abandons it instead of running it twice.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from fabric.errors import FoAError
from fabric.messages import JobEvent, JobResult, JobSubmit
from fabric.settings import Settings

#: how long the first pending write waits for others to share its commit. 2 ms gathers the
#: replies of one round of parallel calls: benchmarks/job_overhead.py went from 27 to 15 commits
#: per job and its store share of the critical path from 1.9-2.0 to 1.2-1.4 ms (two runs each;
#: committing at the end of each loop turn, as before, is 0). A crash loses at most this window's
#: writes, which a takeover redoes, as it redoes anything after the last commit.
GROUP_COMMIT_S = 0.002

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    submit TEXT NOT NULL,
    state TEXT NOT NULL,           -- queued | running | completed | failed | canceled
    phase TEXT NOT NULL DEFAULT '',
    owner TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result TEXT,
    failure TEXT,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_expires REAL NOT NULL DEFAULT 0,
    lease_acquired_at REAL NOT NULL DEFAULT 0,
    takeovers INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,          -- a summary: the first ANSWER_SUMMARY_CHARS of the answer
    agents TEXT NOT NULL,          -- JSON list of the agents that drafted it
    policies TEXT NOT NULL DEFAULT '[]',  -- JSON list: the clearances its job ran under
    PRIMARY KEY (conversation_id, job_id)
);
CREATE INDEX IF NOT EXISTS turns_at ON turns(at);
"""

#: columns added after the first release: an older SQLite file gains them on open
LEASE_COLUMNS = {
    "lease_token": "INTEGER NOT NULL DEFAULT 0",
    "lease_expires": "REAL NOT NULL DEFAULT 0",
    "lease_acquired_at": "REAL NOT NULL DEFAULT 0",
    "takeovers": "INTEGER NOT NULL DEFAULT 0",
}

#: a turn keeps this much of its answer: enough for a follow-up's context, small enough for every prompt
ANSWER_SUMMARY_CHARS = 300

TERMINAL = ("completed", "failed", "canceled")
#: what `foa jobs` shows for an unfinished job whose lease expired: no orchestrator runs it now
ORPHANED = "orphaned"


def shown_state(row: dict[str, Any]) -> str:
    """The state a person should see: `orphaned` instead of a stale `running`."""
    return ORPHANED if row.get("orphaned") else str(row["state"])


JOB_COLUMNS = (
    "job_id, submit, state, phase, created_at, updated_at, result, failure, "
    "owner, lease_expires, lease_token, takeovers, lease_acquired_at"
)

log = logging.getLogger("foa.orchestrator")


class ConversationTurn(BaseModel):
    """One answered job of a conversation, as its follow-ups see it."""

    job_id: str
    question: str
    answer: str = Field(description=f"a summary: the answer's first {ANSWER_SUMMARY_CHARS} characters")
    agents: builtins.list[str] = Field(default_factory=builtins.list, description="the agents that drafted it")
    policies: builtins.list[str] = Field(
        default_factory=builtins.list, description="the clearances its job ran under (a follow-up inherits them)"
    )
    at: float


def conversation_of(submit: JobSubmit) -> str:
    """A job's conversation: the one it continues, else a new one named after the job (no state
    to keep: a resumed or re-delivered job lands in the same conversation)."""
    return submit.conversation_id or submit.job_id


class FencedOut(FoAError):
    """This replica's lease on a job was taken over: its write was rejected; abandon the job."""


class Store(Protocol):
    """What the orchestrator needs from a job store (SQLite or PostgreSQL)."""

    on_fenced: Callable[[str], None] | None

    def admit(self, submit: JobSubmit, owner: str) -> bool: ...
    def set_state(self, job_id: str, state: str, phase: str = "") -> None: ...
    def finish(self, result: JobResult) -> None: ...
    def get(self, job_id: str) -> dict[str, Any] | None: ...
    def list(self, limit: int = 50, state: str | None = None) -> builtins.list[dict[str, Any]]: ...
    def unfinished(self) -> builtins.list[JobSubmit]: ...
    def result(self, job_id: str) -> JobResult | None: ...
    def add_event(self, event: JobEvent) -> None: ...
    def events(self, job_id: str) -> builtins.list[JobEvent]: ...
    def next_seq(self, job_id: str) -> int: ...
    def checkpoint(self, job_id: str, key: str, value: Any, *, lazy: bool = False) -> None: ...
    def checkpoints(self, job_id: str) -> dict[str, Any]: ...
    def add_turn(self, conversation_id: str, turn: ConversationTurn) -> None: ...
    def turns(
        self, conversation_id: str, limit: int | None = None, *, before: str | None = None
    ) -> builtins.list[ConversationTurn]: ...
    def prune_conversations(self) -> int: ...
    def acquire(self, job_id: str, owner: str) -> int | None: ...
    def renew(self, owner: str) -> builtins.list[str]: ...
    def release(self, job_id: str, token: int | None) -> None: ...
    def token(self, job_id: str) -> int | None: ...
    def claimable(self, owner: str, limit: int = 100) -> builtins.list[str]: ...
    def held(self) -> dict[str, int]: ...
    def flush(self, final: tuple[str, tuple[Any, ...]] | None = None) -> None: ...
    def close(self) -> None: ...


class JobStore:
    """The SQLite store (embedded default). `PostgresJobStore` subclasses it and swaps the
    connection and the few dialect hooks (`_connect`, `_sql`, `_begin`, `_lock_rows`)."""

    #: SQL for "lock the job rows read here against a concurrent takeover until commit"
    _lock_rows = ""
    _db: Any

    def __init__(
        self, path: Path | str, *, lease_s: float | None = None, conversation_retention_s: float | None = None
    ) -> None:
        """`lease_s`: when set, `admit` takes a lease for its owner and the store fences writes.
        `conversation_retention_s`: conversations idle longer are forgotten (None: kept)."""
        self.retention_s = conversation_retention_s
        self._pruned_at = 0.0
        self.path = Path(path) if not str(path).startswith("postgres") else Path(".")
        self.lease_s = lease_s
        self.on_fenced: Callable[[str], None] | None = None
        self._lock = threading.RLock()
        self._held: dict[str, int] = {}  # job id -> the fencing token this store holds
        self._lost: set[str] = set()  # jobs taken over from this store: their writes are dropped here
        # this turn's writes: events in order; checkpoints and job states, newest per key
        self._events: builtins.list[tuple[Any, ...]] = []
        self._checkpoints: dict[tuple[str, str], Any] = {}
        self._states: dict[str, tuple[str, str, float]] = {}
        self._flush_scheduled = False
        #: seconds spent committing, cumulative: a job's critical-path breakdown reads it (critical_path.py)
        self.busy_s = 0.0
        self._connect(path)
        self.prune_conversations()

    # ---- dialect hooks ----------------------------------------------------------------------

    def _connect(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")  # replicas on one host may share the file
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, decl in LEASE_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")

    def _sql(self, sql: str) -> str:
        """SQL is written with `?` placeholders (SQLite's); other dialects translate."""
        return sql

    def _begin(self) -> None:
        # IMMEDIATE: the fencing check and the writes after it are one atomic step against
        # another process writing the same file
        self._db.execute("BEGIN IMMEDIATE")

    def _in_transaction(self) -> bool:
        return bool(self._db.in_transaction)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    # ---- plumbing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Writes not committed yet (the group commit's, and lazy checkpoints waiting for the next commit)."""
        return len(self._events) + len(self._checkpoints) + len(self._states)

    def close(self) -> None:
        self.flush()
        self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """Run now (reads, and writes whose result matters); pending writes commit first."""
        self.flush()
        with self._lock:
            return self._db.execute(self._sql(sql), args)

    def _queued(self) -> None:
        """A write was queued (lock held): commit it within GROUP_COMMIT_S, or now without a loop."""
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_later(GROUP_COMMIT_S, self.flush)

    def _fenced_jobs(self, job_ids: Iterable[str]) -> set[str]:
        """Of the jobs about to be written, those whose lease token moved past the one held here
        (in the open transaction; PostgreSQL locks the rows until commit)."""
        wanted = set(job_ids)
        held = [j for j in wanted if j in self._held]
        lost = wanted & self._lost
        if not held:
            return lost
        marks = ",".join("?" * len(held))
        rows = self._db.execute(
            self._sql(f"SELECT job_id, lease_token FROM jobs WHERE job_id IN ({marks}){self._lock_rows}"), held
        )
        current = {r[0]: int(r[1]) for r in rows.fetchall()}
        return lost | {j for j in held if current.get(j) != self._held[j]}

    def _fence(self, job_ids: set[str]) -> None:
        for job_id in job_ids - self._lost:
            self._held.pop(job_id, None)
            self._lost.add(job_id)
            log.warning("lease lost: another replica took this job over; abandoning it", extra={"job_id": job_id})
            if self.on_fenced is not None:
                try:
                    self.on_fenced(job_id)
                except Exception:  # noqa: BLE001 - a callback must not break the commit
                    log.exception("on_fenced callback failed", extra={"job_id": job_id})

    def flush(self, final: tuple[str, tuple[Any, ...]] | None = None, final_job: str | None = None) -> None:
        """Commit the pending writes (and `final`, a statement for `final_job` that must land with
        them) as one transaction. Writes of a job fenced out are dropped; a fenced `final` raises."""
        started = time.perf_counter()
        try:
            self._commit(final, final_job)
        finally:
            self.busy_s += time.perf_counter() - started

    def _commit(self, final: tuple[str, tuple[Any, ...]] | None, final_job: str | None) -> None:
        fenced: set[str] = set()
        with self._lock:
            self._flush_scheduled = False
            events, self._events = self._events, []
            checkpoints, self._checkpoints = self._checkpoints, {}
            states, self._states = self._states, {}
            if not (events or checkpoints or states or final):
                return
            try:
                self._begin()
                if self._held or self._lost:
                    touched = [e[0] for e in events] + [k[0] for k in checkpoints] + list(states)
                    fenced = self._fenced_jobs([*touched, *([final_job] if final_job else [])])
                if final_job and self.lease_s and final_job not in self._held:
                    fenced.add(final_job)  # a result needs the lease: never held, released or lost here
                rows = []
                for (job_id, key), value in checkpoints.items():
                    if job_id in fenced:
                        continue
                    try:
                        rows.append((job_id, key, json.dumps(value, default=str)))
                    except (TypeError, ValueError):  # e.g. a cycle: lose this checkpoint, not the turn
                        log.exception("checkpoint not serialisable", extra={"job_id": job_id, "key": key})
                state_rows = [(*v, job_id) for job_id, v in states.items() if job_id not in fenced]
                event_rows = [e for e in events if e[0] not in fenced]
                if state_rows:
                    self._db.executemany(
                        self._sql("UPDATE jobs SET state=?, phase=?, updated_at=? WHERE job_id=?"), state_rows
                    )
                if event_rows:
                    self._db.executemany(
                        self._sql(
                            "INSERT INTO events(job_id, seq, phase, message, data, at) VALUES (?,?,?,?,?,?) "
                            "ON CONFLICT (job_id, seq) DO UPDATE SET phase=excluded.phase, message=excluded.message, "
                            "data=excluded.data, at=excluded.at"
                        ),
                        event_rows,
                    )
                if rows:
                    self._db.executemany(
                        self._sql(
                            "INSERT INTO checkpoints(job_id, key, value) VALUES (?,?,?) "
                            "ON CONFLICT (job_id, key) DO UPDATE SET value=excluded.value"
                        ),
                        rows,
                    )
                if final and final_job not in fenced:
                    self._db.execute(self._sql(final[0]), final[1])
                self._db.execute("COMMIT")
            except self._errors():
                if self._in_transaction():
                    self._db.execute("ROLLBACK")
                log.exception(
                    "job store write failed",
                    extra={"statements": len(events) + len(checkpoints) + len(states) + bool(final)},
                )
                raise
        if fenced:
            self._fence(fenced)
            if final_job in fenced:
                raise FencedOut(
                    f"job {final_job}: another orchestrator replica took it over; its result is not written here"
                )

    # ---- jobs ---------------------------------------------------------------------------

    def admit(self, submit: JobSubmit, owner: str) -> bool:
        """Record a new job (with a lease for `owner` when leases are on); False when the id is
        already known (a duplicate submission)."""
        now = time.time()
        token, expires = (1, now + self.lease_s) if self.lease_s else (0, 0.0)
        cur = self._exec(
            "INSERT INTO jobs(job_id, submit, state, owner, created_at, updated_at, "
            "lease_token, lease_expires, lease_acquired_at) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (job_id) DO NOTHING",
            (submit.job_id, submit.model_dump_json(), "queued", owner, now, now, token, expires, now),
        )
        admitted = bool(cur.rowcount == 1)
        if admitted and token:
            self._held[submit.job_id] = token
        return admitted

    def set_state(self, job_id: str, state: str, phase: str = "") -> None:
        with self._lock:
            self._states[job_id] = (state, phase, time.time())
            self._queued()

    def finish(self, result: JobResult) -> None:
        """The result, with everything still pending, in one commit before this returns.
        Raises `FencedOut` when another replica holds the job now (nothing of it is written)."""
        sql = "UPDATE jobs SET state=?, phase='done', result=?, failure=?, updated_at=?, lease_expires=0 WHERE job_id=?"
        with self._lock:
            self._states.pop(result.job_id, None)  # the final state wins
            self.flush(
                (sql, (result.status, result.model_dump_json(), result.failure_reason, time.time(), result.job_id)),
                result.job_id,
            )
            self._held.pop(result.job_id, None)

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._exec(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 50, state: str | None = None) -> builtins.list[dict[str, Any]]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state=?"
            args = (state,)
        rows = self._exec(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._row(r) for r in rows]

    def unfinished(self) -> builtins.list[JobSubmit]:
        marks = ",".join("?" * len(TERMINAL))
        rows = self._exec(
            f"SELECT submit FROM jobs WHERE state NOT IN ({marks}) ORDER BY created_at", TERMINAL
        ).fetchall()
        return [JobSubmit.model_validate_json(r[0]) for r in rows]

    def submit_of(self, job_id: str) -> JobSubmit | None:
        row = self._exec("SELECT submit FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return JobSubmit.model_validate_json(row[0]) if row else None

    def result(self, job_id: str) -> JobResult | None:
        row = self._exec("SELECT result FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return JobResult.model_validate_json(row[0]) if row and row[0] else None

    @staticmethod
    def _row(row: Sequence[Any]) -> dict[str, Any]:
        submit = json.loads(row[1])
        lease_expires = float(row[9] or 0)
        return {
            "job_id": row[0],
            "question": submit.get("question", ""),
            "conversation_id": submit.get("conversation_id") or row[0],
            "state": row[2],
            # a lease that ran out on an unfinished job: its orchestrator is gone (or cut off) and
            # no replica has taken it over yet (`foa jobs` shows it as ORPHANED). Jobs of a store
            # without leases (expiry 0) are never flagged.
            "orphaned": row[2] not in TERMINAL and 0 < lease_expires < time.time(),
            "phase": row[3],
            "created_at": row[4],
            "updated_at": row[5],
            "result": json.loads(row[6]) if row[6] else None,
            "failure": row[7],
            "owner": row[8],
            "lease_expires": lease_expires,
            "lease_token": int(row[10] or 0),
            "takeovers": int(row[11] or 0),
            "lease_acquired_at": float(row[12] or 0),
        }

    # ---- leases -----------------------------------------------------------------------------

    def acquire(self, job_id: str, owner: str) -> int | None:
        """Take the lease of an unfinished job when it is free, expired or already `owner`'s
        (a restarted replica with a stable id gets its own jobs back at once). Atomic: of two
        replicas racing for one expired lease exactly one gets a token. Returns the new fencing
        token, or None."""
        assert self.lease_s, "leases are off (lease_s=None)"
        now = time.time()
        marks = ",".join("?" * len(TERMINAL))
        row = self._exec(
            "UPDATE jobs SET lease_token=lease_token+1, lease_expires=?, lease_acquired_at=?, "
            "takeovers=takeovers + CASE WHEN owner=? THEN 0 ELSE 1 END, owner=? "
            f"WHERE job_id=? AND state NOT IN ({marks}) AND (owner=? OR lease_expires<?) RETURNING lease_token",
            (now + self.lease_s, now, owner, owner, job_id, *TERMINAL, owner, now),
        ).fetchone()
        if row is None:
            return None
        self._held[job_id] = int(row[0])
        self._lost.discard(job_id)
        return int(row[0])

    def renew(self, owner: str) -> builtins.list[str]:
        """Extend every lease held here; returns the jobs whose lease was lost (taken over while
        this replica was paused or cut off): they are no longer held, and `on_fenced` is told."""
        with self._lock:
            if not self._held:
                return []
            self.flush()
            expires = time.time() + self.lease_s if self.lease_s else 0.0
            lost: builtins.list[str] = []
            self._begin()
            try:
                for job_id, token in list(self._held.items()):
                    cur = self._db.execute(
                        self._sql("UPDATE jobs SET lease_expires=? WHERE job_id=? AND lease_token=? AND owner=?"),
                        (expires, job_id, token, owner),
                    )
                    if cur.rowcount != 1:
                        lost.append(job_id)
                self._db.execute("COMMIT")
            except self._errors():
                if self._in_transaction():
                    self._db.execute("ROLLBACK")
                raise
        self._fence(set(lost))  # logged, and reported to on_fenced
        return lost

    def release(self, job_id: str, token: int | None) -> None:
        """Give up `job_id` (its task was cancelled: a shutdown, not a crash): its lease ends now,
        so another replica takes it over at its next scan instead of after `lease_s`. A no-op for
        a finished or fenced job (no longer held), and unless `token`, the one its runner started
        with, is still the one held: the exit of a runner that was fenced out must not end the
        lease this replica took again since (its next runner then wrote unfenced, and another
        replica took the job as well: two completed results in `tests/test_chaos.py`)."""
        if token is None or self._held.get(job_id) != token:
            return
        del self._held[job_id]
        try:
            self._exec(
                "UPDATE jobs SET lease_expires=? WHERE job_id=? AND lease_token=?", (time.time() - 1, job_id, token)
            )
        except Exception:  # noqa: BLE001 - closed on the way out: the lease then simply expires
            log.debug("could not release lease", extra={"job_id": job_id}, exc_info=True)

    def held(self) -> dict[str, int]:
        return dict(self._held)

    def token(self, job_id: str) -> int | None:
        """The fencing token held here for `job_id` (None: not held, or leases are off)."""
        return self._held.get(job_id)

    def claimable(self, owner: str, limit: int = 100) -> builtins.list[str]:
        """Unfinished jobs this owner may acquire: lease expired, or already its own but not
        held by this store (left by this replica's previous life)."""
        marks = ",".join("?" * len(TERMINAL))
        rows = self._exec(
            f"SELECT job_id FROM jobs WHERE state NOT IN ({marks}) AND (lease_expires<? OR owner=?) "
            "ORDER BY created_at LIMIT ?",
            (*TERMINAL, time.time(), owner, limit + len(self._held)),
        ).fetchall()
        return [r[0] for r in rows if r[0] not in self._held][:limit]

    # ---- events and checkpoints ------------------------------------------------------------

    def add_event(self, event: JobEvent) -> None:
        with self._lock:
            self._events.append(
                (event.job_id, event.seq, event.phase, event.message, json.dumps(event.data, default=str), event.at)
            )
            self._queued()

    def events(self, job_id: str) -> builtins.list[JobEvent]:
        rows = self._exec(
            "SELECT seq, phase, message, data, at FROM events WHERE job_id=? ORDER BY seq", (job_id,)
        ).fetchall()
        return [
            JobEvent(job_id=job_id, seq=r[0], phase=r[1], message=r[2], data=json.loads(r[3]), at=r[4]) for r in rows
        ]

    def next_seq(self, job_id: str) -> int:
        row = self._exec("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id=?", (job_id,)).fetchone()
        return int(row[0]) + 1

    def checkpoint(self, job_id: str, key: str, value: Any, *, lazy: bool = False) -> None:
        """Saved as it is when this turn commits (serialised then, once, if not replaced before).
        `lazy`: no commit of its own; it lands with the store's next one (any write, a read, a
        job's result, close). For values only a resume reads and that a job rewrites often: a
        job's usage after each call was 17 of its 43 commits (~1 ms of a 55 ms job)."""
        with self._lock:
            self._checkpoints[(job_id, key)] = value
            if not lazy:
                self._queued()

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        rows = self._exec("SELECT key, value FROM checkpoints WHERE job_id=?", (job_id,)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    # ---- conversations ----------------------------------------------------------------------

    def add_turn(self, conversation_id: str, turn: ConversationTurn) -> None:
        """Record an answered job as a turn of its conversation (again: replaced). Commits at
        once: the next question of the conversation may arrive right after the answer."""
        self._exec(
            "INSERT INTO turns(conversation_id, job_id, at, question, answer, agents, policies) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (conversation_id, job_id) DO UPDATE SET at=excluded.at, "
            "question=excluded.question, answer=excluded.answer, agents=excluded.agents, policies=excluded.policies",
            (
                conversation_id,
                turn.job_id,
                turn.at,
                turn.question,
                turn.answer[:ANSWER_SUMMARY_CHARS],
                json.dumps(turn.agents),
                json.dumps(turn.policies),
            ),
        )
        if self.retention_s and time.time() - self._pruned_at > min(3600.0, self.retention_s / 10):
            self.prune_conversations()

    def turns(
        self, conversation_id: str, limit: int | None = None, *, before: str | None = None
    ) -> builtins.list[ConversationTurn]:
        """The conversation's turns, oldest first: the last `limit` of them, those before job
        `before` when it is one of them (a resumed job does not see itself or later turns). An
        idle conversation past its retention has none, pruned or not yet."""
        rows = self._exec(
            "SELECT job_id, at, question, answer, agents, policies FROM turns WHERE conversation_id=? "
            "ORDER BY at, job_id",
            (conversation_id,),
        ).fetchall()
        turns = [
            ConversationTurn(
                job_id=r[0],
                at=float(r[1]),
                question=r[2],
                answer=r[3],
                agents=json.loads(r[4]),
                policies=json.loads(r[5]),
            )
            for r in rows
        ]
        if turns and self.retention_s and turns[-1].at < time.time() - self.retention_s:
            return []
        cut = next((i for i, t in enumerate(turns) if t.job_id == before), None)
        if cut is not None:
            turns = turns[:cut]
        return turns[-limit:] if limit else ([] if limit == 0 else turns)

    def prune_conversations(self) -> int:
        """Forget the turns of conversations idle longer than the retention; how many were
        deleted. One statement on the index of `at`, run at open and at most every retention/10 (an hour at
        most) as turns are added."""
        self._pruned_at = time.time()
        if not self.retention_s:
            return 0
        cutoff = time.time() - self.retention_s
        cur = self._exec(
            "DELETE FROM turns WHERE conversation_id IN (SELECT conversation_id FROM turns WHERE at < ?) "
            "AND conversation_id NOT IN (SELECT conversation_id FROM turns WHERE at >= ?)",
            (cutoff, cutoff),
        )
        return max(0, int(cur.rowcount or 0))


def open_store(settings: Settings, *, leases: bool = True) -> JobStore:
    """The store `settings` name: PostgreSQL at FOA_STORE_URL, else SQLite in the data dir.
    `leases=False` for readers (`foa jobs`) that never own a job."""
    lease_s = settings.lease_s if leases else None
    retention = settings.conversation_retention_s
    if settings.store_url:
        from fabric.orchestrator.store_postgres import PostgresJobStore

        return PostgresJobStore(settings.store_url, lease_s=lease_s, conversation_retention_s=retention)
    return JobStore(settings.job_store_path, lease_s=lease_s, conversation_retention_s=retention)
