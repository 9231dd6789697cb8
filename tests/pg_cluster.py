"""A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` + `pg_ctl` in a temporary
directory, on a free loopback port, trust authentication, gone after `stop()`.

Nothing assumes a running server. The binaries come from `pg_config --bindir` or Debian's
/usr/lib/postgresql/N/bin (scripts/test.sh installs the `postgresql` package when missing).
PostgreSQL refuses to run as root; as root the cluster is owned by and run as the `postgres`
system user (the Debian package creates it) via `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are, or None when PostgreSQL is not installed."""
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """`with PostgresCluster() as pg: pg.url` — a fresh database `foa` owned by user `foa`."""

    def __init__(self) -> None:
        """The cluster lives in the system temp dir: as root it runs as `postgres`, which must be
        able to reach it (pytest's per-test dirs are private to root)."""
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/test.sh does it)"
            )
        self.bindir = bindir
        self._tmp = tempfile.mkdtemp(prefix="foa-pg-")
        self.dir = Path(self._tmp)
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            try:
                import pwd

                pw = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError(
                    "running as root, PostgreSQL needs the 'postgres' system user (apt-get install postgresql)"
                ) from None
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o700)
        self.url = f"postgresql://foa@127.0.0.1:{self.port}/foa"
        self._started = False

    def _run(self, *cmd: str, timeout: float = 60) -> str:
        argv = list(cmd)
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd[:2])} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def start(self) -> PostgresCluster:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "foa", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
            " -c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._started = True
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "foa", "foa")
        return self

    def restart(self) -> None:
        """Restart the server (fast shutdown): every open connection is closed under its client."""
        log = str(self.dir / "postgres.log")  # the server must not inherit our pipes
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        if self._started:
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30
                )
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self._started = False
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def new_database(self, name: str) -> str:
        """A fresh empty database on this cluster; returns its URL (one per test: no shared rows)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://foa@127.0.0.1:{self.port}/{name}"

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL not listening on {self.port}")


def postgres_fixture() -> Iterator[PostgresCluster]:
    """Body of the session-scoped `postgres` fixture (tests import `postgres` from here)."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


postgres = pytest.fixture(scope="session")(postgres_fixture)
