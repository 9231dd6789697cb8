"""The job store: SQLite, one row per job, an event log, and checkpoints for resuming.

Every state transition is written before the job moves on, so a restarted orchestrator resumes
each unfinished job from its last checkpoint (plan, assignments, finished nodes). A job id is the
primary key: a job submitted twice runs once.

Group commit: on an event loop, the writes made during one loop turn share one transaction
(committed at the end of that turn) instead of one commit each — a job makes ~40 writes, and a
commit costs ~70 µs. Within a turn, a newer checkpoint of the same (job, key) or a newer state of
the same job replaces the older one before anything is serialised (a job checkpoints its usage
after every call; drafts of a node often land in the same turn). Admission and the final result
commit at once: those two are what redelivery and duplicate detection rely on. Reads see pending
writes (they commit first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fabric.messages import JobEvent, JobResult, JobSubmit

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    submit TEXT NOT NULL,
    state TEXT NOT NULL,           -- queued | running | completed | failed
    phase TEXT NOT NULL DEFAULT '',
    owner TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result TEXT,
    failure TEXT
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
"""

TERMINAL = ("completed", "failed")

log = logging.getLogger("foa.orchestrator")


class JobStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        # this turn's writes: events in order; checkpoints and job states, newest per key
        self._events: list[tuple[Any, ...]] = []
        self._checkpoints: dict[tuple[str, str], Any] = {}
        self._states: dict[str, tuple[str, str, float]] = {}
        self._flush_scheduled = False

    @property
    def pending(self) -> int:
        """Writes waiting for this loop turn's commit."""
        return len(self._events) + len(self._checkpoints) + len(self._states)

    def close(self) -> None:
        self.flush()
        self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run now (reads, and writes whose result matters); pending writes commit first."""
        self.flush()
        with self._lock:
            return self._db.execute(sql, args)

    def _queued(self) -> None:
        """A write was queued (lock held): commit it at the end of this loop turn, or now without a loop."""
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self, final: tuple[str, tuple[Any, ...]] | None = None) -> None:
        """Commit the pending writes (and `final`, a statement that must land with them) as one transaction."""
        with self._lock:
            self._flush_scheduled = False
            events, self._events = self._events, []
            checkpoints, self._checkpoints = self._checkpoints, {}
            states, self._states = self._states, {}
            if not (events or checkpoints or states or final):
                return
            rows = []
            for (job_id, key), value in checkpoints.items():
                try:
                    rows.append((job_id, key, json.dumps(value, default=str)))
                except (TypeError, ValueError):  # e.g. a cycle: lose this checkpoint, not the turn
                    log.exception("checkpoint not serialisable", extra={"job_id": job_id, "key": key})
            try:
                self._db.execute("BEGIN")
                if states:
                    self._db.executemany(
                        "UPDATE jobs SET state=?, phase=?, updated_at=? WHERE job_id=?",
                        [(*v, job_id) for job_id, v in states.items()],
                    )
                if events:
                    self._db.executemany("INSERT OR REPLACE INTO events(job_id, seq, phase, message, data, at) VALUES (?,?,?,?,?,?)", events)
                if rows:
                    self._db.executemany("INSERT OR REPLACE INTO checkpoints(job_id, key, value) VALUES (?,?,?)", rows)
                if final:
                    self._db.execute(*final)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                log.exception("job store write failed", extra={"statements": len(events) + len(checkpoints) + len(states) + bool(final)})
                raise

    # ---- jobs ---------------------------------------------------------------------------

    def admit(self, submit: JobSubmit, owner: str) -> bool:
        """Record a new job; False when the id is already known (a duplicate submission)."""
        now = time.time()
        cur = self._exec(
            "INSERT OR IGNORE INTO jobs(job_id, submit, state, owner, created_at, updated_at) VALUES (?,?,?,?,?,?)",
            (submit.job_id, submit.model_dump_json(), "queued", owner, now, now),
        )
        return cur.rowcount == 1

    def set_state(self, job_id: str, state: str, phase: str = "") -> None:
        with self._lock:
            self._states[job_id] = (state, phase, time.time())
            self._queued()

    def finish(self, result: JobResult) -> None:
        """The result, with everything still pending, in one commit before this returns."""
        sql = "UPDATE jobs SET state=?, phase='done', result=?, failure=?, updated_at=? WHERE job_id=?"
        with self._lock:
            self._states.pop(result.job_id, None)  # the final state wins
            self.flush((sql, (result.status, result.model_dump_json(), result.failure_reason, time.time(), result.job_id)))

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._exec("SELECT job_id, submit, state, phase, created_at, updated_at, result, failure FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def list(self, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT job_id, submit, state, phase, created_at, updated_at, result, failure FROM jobs"
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state=?"
            args = (state,)
        rows = self._exec(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._row(r) for r in rows]

    def unfinished(self) -> list[JobSubmit]:
        rows = self._exec("SELECT submit FROM jobs WHERE state NOT IN (?, ?) ORDER BY created_at", TERMINAL).fetchall()
        return [JobSubmit.model_validate_json(r[0]) for r in rows]

    def result(self, job_id: str) -> JobResult | None:
        row = self._exec("SELECT result FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return JobResult.model_validate_json(row[0]) if row and row[0] else None

    @staticmethod
    def _row(row: tuple[Any, ...]) -> dict[str, Any]:
        submit = json.loads(row[1])
        return {
            "job_id": row[0],
            "question": submit.get("question", ""),
            "state": row[2],
            "phase": row[3],
            "created_at": row[4],
            "updated_at": row[5],
            "result": json.loads(row[6]) if row[6] else None,
            "failure": row[7],
        }

    # ---- events and checkpoints ------------------------------------------------------------

    def add_event(self, event: JobEvent) -> None:
        with self._lock:
            self._events.append((event.job_id, event.seq, event.phase, event.message, json.dumps(event.data, default=str), event.at))
            self._queued()

    def events(self, job_id: str) -> list[JobEvent]:
        rows = self._exec("SELECT seq, phase, message, data, at FROM events WHERE job_id=? ORDER BY seq", (job_id,)).fetchall()
        return [JobEvent(job_id=job_id, seq=r[0], phase=r[1], message=r[2], data=json.loads(r[3]), at=r[4]) for r in rows]

    def next_seq(self, job_id: str) -> int:
        row = self._exec("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id=?", (job_id,)).fetchone()
        return int(row[0]) + 1

    def checkpoint(self, job_id: str, key: str, value: Any) -> None:
        """Saved as it is when this turn commits (serialised then, once, if not replaced before)."""
        with self._lock:
            self._checkpoints[(job_id, key)] = value
            self._queued()

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        rows = self._exec("SELECT key, value FROM checkpoints WHERE job_id=?", (job_id,)).fetchall()
        return {k: json.loads(v) for k, v in rows}
