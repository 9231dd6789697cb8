"""The job store on PostgreSQL: one store for orchestrator replicas on several machines.

Same tables, same statements and the same group commit as the SQLite store (it subclasses
`JobStore`, swapping the connection and three dialect hooks), so one test suite covers both
(tests/test_store.py). What PostgreSQL adds: a replica's machine can vanish and its unfinished
jobs stay readable by the others, which take them over when their leases expire. The fencing
check locks the rows it reads (`FOR SHARE`) until the commit, so a concurrent takeover (an UPDATE
of the same row) waits for that commit and the paused replica's last write cannot land after it.

Select it with `FOA_STORE_URL=postgresql://user:pass@host:5432/db` (needs the `postgres` extra:
psycopg 3).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError
from fabric.orchestrator.store import JobStore

log = logging.getLogger("foa.orchestrator")

SCHEMA_PG = [
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        submit TEXT NOT NULL,
        state TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT '',
        owner TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        result TEXT,
        failure TEXT,
        lease_token BIGINT NOT NULL DEFAULT 0,
        lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
        lease_acquired_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        takeovers INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
    "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(lease_expires)",
    """CREATE TABLE IF NOT EXISTS events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        phase TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_id, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        job_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (job_id, key)
    )""",
    """CREATE TABLE IF NOT EXISTS turns (
        conversation_id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        agents TEXT NOT NULL,
        policies TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (conversation_id, job_id)
    )""",
    "CREATE INDEX IF NOT EXISTS turns_at ON turns(at)",
]

#: any constant: replicas starting together create the schema one after the other
SCHEMA_LOCK = 0x464F41


class _Connection:
    """psycopg's connection with sqlite3's shape (`execute`, `executemany`, `in_transaction`),
    reconnecting once when the server restarted between two statements outside a transaction."""

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "FOA_STORE_URL names PostgreSQL but psycopg is not installed: pip install 'foa[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.conn = self._open()
        self._tx = False  # between our BEGIN and COMMIT/ROLLBACK

    def _open(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            raise ConfigError(f"cannot reach the job store at {_redact(self.url)}: {exc}".strip()) from exc

    @property
    def in_transaction(self) -> bool:
        return self._tx

    def execute(self, sql: str, args: Any = ()) -> Any:
        """A statement; after a lost connection (the server restarted) the next statement outside
        a transaction reconnects. Inside one the transaction is gone: the caller's commit fails."""
        if self.conn.closed:
            if self._tx:
                if sql == "ROLLBACK":  # nothing left to roll back
                    self._tx = False
                    return None
                raise self._psycopg.OperationalError("connection to the job store lost inside a transaction")
            log.warning("job store connection lost; reconnecting", extra={"url": _redact(self.url)})
            self.conn = self._open()
        try:
            try:
                cur = self.conn.execute(sql, args or None)
            except self._psycopg.OperationalError:
                if self._tx or not self.conn.closed:
                    raise
                # a statement outside a transaction (or its BEGIN) on a connection the server
                # closed (restart, failover): once more on a new one. A write whose commit was lost
                # with the reply may run twice; every statement here is idempotent or guarded
                # (admit: ON CONFLICT; acquire: the owner check)
                log.warning("job store connection lost; reconnecting", extra={"url": _redact(self.url)})
                self.conn = self._open()
                cur = self.conn.execute(sql, args or None)
            if sql == "BEGIN":
                self._tx = True
            return cur
        finally:
            if sql in ("COMMIT", "ROLLBACK"):
                self._tx = False

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> Any:
        cur = self.conn.cursor()
        cur.executemany(sql, rows)
        return cur

    def close(self) -> None:
        self.conn.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


class PostgresJobStore(JobStore):
    _lock_rows = " FOR SHARE"
    _db: _Connection

    def _connect(self, path: Path | str) -> None:
        self.url = str(path)
        self._db = _Connection(self.url)
        self._db.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            for statement in SCHEMA_PG:
                self._db.execute(statement)
        finally:
            self._db.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _begin(self) -> None:
        self._db.execute("BEGIN")

    def _in_transaction(self) -> bool:
        return self._db.in_transaction

    def _errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)
