"""A supervised local federation, with real processes: `foa up` (subprocess) with the shipped
code, scripted agents behind a real OpenAI-compatible HTTP server (tests/scripted_openai.py), a
real mosquitto it starts itself, and `foa submit` as a second subprocess.

- `foa up` SIGKILLed mid-job and started again: its broker died with it (no orphan), the job
  resumes and completes once, and the waiting `foa submit` prints the answer.
- A second `foa up` on the same directory refuses and names the holder's pid.
- The broker killed under a running `foa up`: restarted on its port, every client reconnects,
  the running job completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from fabric.broker import Mosquitto, mosquitto_binary, orphan_brokers, pid_alive, reap_orphans
from fabric.orchestrator.store import JobStore
from tests.scripted_federation import SPECS
from tests.scripted_openai import ScriptedOpenAI

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")

QUESTION = "My father has sudden chest pain. What should we do?"


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI(latency_s=0.4) as server:
        yield server


class Up:
    """One `foa up` process in `workdir` (its own session, so the test kills only what it means to)."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str) -> None:
        self.log = workdir / f"{name}.log"
        self.fh = self.log.open("wb")
        specs = workdir / "specs"
        self.p = subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "up", "--specs", str(specs), "--port", "0"],
            cwd=workdir, env=env, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(lambda: "federation up on" in self.text(), timeout, f"`foa up` ready:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.fh.close()


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def workdir(tmp_path: Path, llm: ScriptedOpenAI) -> tuple[Path, dict[str, str]]:
    return federation_dir(tmp_path, llm)


def federation_dir(tmp_path: Path, llm: ScriptedOpenAI) -> tuple[Path, dict[str, str]]:
    """`tmp_path` with the scripted agents' specs, and the environment of a `foa up` there."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for spec in SPECS:
        (specs / f"{spec.id}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = {
        **os.environ,
        "FOA_DATA_DIR": str(tmp_path / ".foa"),
        "FOA_LLM_BASE_URL": llm.base_url,
        "FOA_LEASE_S": "4",
        "FOA_KEEPALIVE_S": "3",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FOA_BROKER_URL", None)
    env.pop("FOA_STORE_URL", None)
    return tmp_path, env


def submit(workdir: Path, env: dict[str, str], job_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fabric.cli", "submit", QUESTION, "--job-id", job_id, "--json", "--timeout", "240",
         "--rounds", "2", "--agents-per-node", "2"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def store_of(workdir: Path) -> JobStore:
    return JobStore(workdir / ".foa" / "jobs.sqlite3")


def started(workdir: Path, job_id: str) -> bool:
    path = workdir / ".foa" / "jobs.sqlite3"
    if not path.exists():
        return False
    store = store_of(workdir)
    try:
        return "dag" in store.checkpoints(job_id)
    finally:
        store.close()


def broker_pid(workdir: Path) -> int | None:
    path = workdir / ".foa" / "broker" / "broker.pid"
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def jobs_state(workdir: Path, env: dict[str, str], job_id: str) -> str | None:
    argv = [sys.executable, "-m", "fabric.cli", "jobs", "--json"]
    out = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return next((r["state"] for r in json.loads(out) if r["job_id"] == job_id), None)


def finish(sub: subprocess.Popen[bytes], timeout: float = 240) -> dict[str, object]:
    out, err = sub.communicate(timeout=timeout)
    assert sub.returncode == 0, f"foa submit exited {sub.returncode}:\n{err.decode()[-3000:]}"
    result: dict[str, object] = json.loads(out)
    return result


def test_foa_up_sigkilled_mid_job_and_started_again(workdir: tuple[Path, dict[str, str]]) -> None:
    path, env = workdir
    first = Up(path, env, "up-1")
    second: Up | None = None
    sub: subprocess.Popen[bytes] | None = None
    new_broker: int | None = None
    try:
        first.wait_ready()
        old_broker = broker_pid(path)
        assert old_broker is not None and pid_alive(old_broker)
        sub = submit(path, env, "killed-mid-job")
        wait_for(lambda: started(path, "killed-mid-job"), 120, "the job to have a plan")
        os.kill(first.p.pid, signal.SIGKILL)  # a person's kill -9 of `foa up` (its pid, not a group)
        first.p.wait(10)
        wait_for(lambda: not pid_alive(old_broker), 10, "the broker to die with its `foa up`")
        # no orchestrator holds the job now: `foa jobs` says so once its lease (FOA_LEASE_S=4) ran out
        wait_for(
            lambda: jobs_state(path, env, "killed-mid-job") == "orphaned", 20, "`foa jobs` to show the job orphaned"
        )
        second = Up(path, env, "up-2")
        second.wait_ready()
        result = finish(sub)
        assert result["status"] == "completed" and result["answer"], result
        assert result["job_id"] == "killed-mid-job"
        store = store_of(path)
        try:
            row = store.get("killed-mid-job")
            assert row is not None and row["state"] == "completed"
            done = [e for e in store.events("killed-mid-job") if e.phase == "done"]
            assert len(done) == 1  # completed once
            assert "resumed with a" in " ".join(
                e.message for e in store.events("killed-mid-job")
            )  # from its checkpoint
        finally:
            store.close()
        new_broker = broker_pid(path)
        assert orphan_brokers(path / ".foa" / "broker") == [new_broker]  # one broker on the data dir: the new one
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
        first.stop()
        if second is not None:
            second.stop()
    assert new_broker is not None and not pid_alive(new_broker)  # and it stops with its `foa up`


def test_second_up_refuses_and_broker_death_is_survived(workdir: tuple[Path, dict[str, str]]) -> None:
    path, env = workdir
    up = Up(path, env, "up")
    sub: subprocess.Popen[bytes] | None = None
    try:
        up.wait_ready()
        again = subprocess.run(
            [sys.executable, "-m", "fabric.cli", "up", "--specs", str(path / "specs"), "--port", "0"],
            cwd=path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 1
        assert f"pid {up.p.pid}" in again.stderr, again.stderr

        sub = submit(path, env, "broker-dies")
        wait_for(lambda: started(path, "broker-dies"), 120, "the job to have a plan")
        old_broker = broker_pid(path)
        assert old_broker is not None
        os.kill(old_broker, signal.SIGKILL)  # the broker crashes (OOM kill) under a running `foa up`
        wait_for(lambda: broker_pid(path) not in (None, old_broker), 15, f"a restarted broker:\n{up.text()[-2000:]}")
        result = finish(sub)
        assert result["status"] == "completed" and result["answer"], result
        assert "broker restarted" in up.text()
        assert up.p.poll() is None  # the federation kept running
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
        up.stop()


def test_submit_timeout_is_a_clear_error(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """No orchestrator on the broker: `foa submit --timeout 2` gives up with a message and exit 1."""
    env = {**os.environ, "FOA_BROKER_URL": mosquitto.url, "FOA_DATA_DIR": str(tmp_path)}
    started_at = time.monotonic()
    argv = [sys.executable, "-m", "fabric.cli", "submit", QUESTION, "--timeout", "2"]
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no orchestrator picked up job" in proc.stderr and "within 2s" in proc.stderr, proc.stderr
    assert time.monotonic() - started_at < 30


def test_orphaned_broker_is_found_and_stopped(tmp_path: Path) -> None:
    """A broker a dead run left on the data dir (no parent-death signal: another OS, an older
    version) is found from its pid file or, without one, from /proc, and stopped."""
    data = tmp_path / "broker"
    orphan = Mosquitto(data_dir=data, persistence=True)  # not die_with_parent: it would outlive us
    orphan.start()
    pid = orphan.pid
    assert pid is not None
    try:
        assert orphan_brokers(data) == [pid]
        (data / "broker.pid").unlink()  # even without its pid file
        assert orphan_brokers(data) == [pid]
        assert orphan_brokers(tmp_path / "elsewhere") == []  # other data dirs' brokers are not ours
        assert reap_orphans(data) == [pid]
        wait_for(lambda: orphan.running is False, 10, "the orphan to exit")
        assert orphan_brokers(data) == []
    finally:
        orphan.stop()
