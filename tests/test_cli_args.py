"""`foa` checks its arguments before anything starts and finds the broker the same way for every
command (fabric/cli/resolve.py). Real `foa` processes: exit codes and stderr are the interface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric.broker import Mosquitto
from fabric.runtime import RuntimeInfo

ROOT = Path(__file__).resolve().parent.parent


def foa(
    *args: str, cwd: Path, timeout: float = 60, settings: dict[str, str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FOA_")}
    return subprocess.run(
        [sys.executable, "-m", "fabric.cli", *args],
        cwd=cwd, env=clean | {"PYTHONPATH": str(ROOT)} | (settings or {}) | env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", ""], "foa: error: the question is empty: give it, e.g. foa run"),
        (["run", "   "], "foa: error: the question is empty"),
        (["submit", ""], "foa: error: the question is empty: give it, e.g. foa submit"),
        (["run", "why?", "--budget-tokens", "-5"], "foa: error: --budget-tokens must be at least 1, not -5"),
        (["run", "why?", "--budget-cost", "-0.5"], "foa: error: --budget-cost must be at least 0, not -0.5"),
        (["submit", "why?", "--deadline", "-1"], "foa: error: --deadline must be greater than 0, not -1"),
        (["submit", "why?", "--deadline", "0"], "foa: error: --deadline must be greater than 0, not 0"),
        (["submit", "why?", "--conversation", " "], "foa: error: --conversation: conversation id ' ' must be 1 to 128"),
        (["run", "why?", "--rounds", "-1"], "foa: error: --rounds must be at least 0, not -1"),
        (["run", "why?", "--proposers", "0"], "foa: error: --proposers must be at least 1, not 0"),
        (["run", "why?", "--max-tokens", "4"], "foa: error: --max-tokens must be at least 8, not 4"),
        (["run", "why?", "--timeout", "nan"], "foa: error: --timeout must be greater than 0, not nan"),
        (["run", "why?", "--plan", "sometimes"], "foa run: error: argument --plan: invalid choice: 'sometimes'"),
        (["route", ""], "foa: error: the task text is empty"),
        (["route", "tax question", "--top-k", "0"], "foa: error: --top-k must be at least 1, not 0"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(args: list[str], message: str, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = foa(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert "starting federation" not in proc.stderr and "Traceback" not in proc.stderr
    assert "validation error" not in proc.stderr  # no raw pydantic dump
    assert not (tmp_path / ".foa").exists()  # no job store, no broker data, no runtime file
    assert time.monotonic() - started < 30  # it did not wait for a broker or load a model


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FOA_EMBEDDING_BACKEND": "onnx-fp16"}, "foa: error: bad setting FOA_EMBEDDING_BACKEND: Input should be"),
        ({"FOA_LEASE_S": "-1"}, "foa: error: bad setting FOA_LEASE_S: Input should be greater than 0"),
        ({"FOA_PLAN": "sometimes"}, "foa: error: bad setting FOA_PLAN: Input should be 'auto', 'always' or 'never'"),
    ],
)
def test_a_bad_setting_names_its_variable(env: dict[str, str], message: str, tmp_path: Path) -> None:
    proc = foa("run", "why?", cwd=tmp_path, settings=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and "validation error" not in proc.stderr


@pytest.mark.parametrize("command", [["status"], ["agents"], ["submit", "why?"], ["route", "tax question"]])
def test_commands_that_need_a_federation_say_how_to_get_one(command: list[str], tmp_path: Path) -> None:
    proc = foa(*command, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "foa: error: no federation to talk to: start one with `foa up` (in this directory) "
        "or set FOA_BROKER_URL=mqtt://host:1883"
    )


def write_federation_json(folder: Path, broker_url: str, pid: int) -> None:
    data_dir = folder / ".foa"
    data_dir.mkdir()
    info = RuntimeInfo(broker_url=broker_url, pid=pid, started_at=time.time(), agents=[])
    (data_dir / "federation.json").write_text(info.model_dump_json())


def test_status_and_agents_find_the_foa_up_of_this_directory(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """`foa status` read only FOA_BROKER_URL while `foa agents` also read .foa/federation.json."""
    write_federation_json(tmp_path, mosquitto.url, os.getpid())  # this test process stands in for `foa up`
    status = foa("status", "--json", "--wait", "0.3", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["broker"] == mosquitto.url.split("@")[-1] and report["agents_total"] == 0
    agents = foa("agents", "--json", "--wait", "0.5", cwd=tmp_path)
    assert agents.returncode == 0, agents.stderr
    assert json.loads(agents.stdout) == []


def test_a_stale_federation_json_is_not_a_federation(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_federation_json(tmp_path, "mqtt://127.0.0.1:1", int(dead.stdout))
    proc = foa("status", cwd=tmp_path)
    assert proc.returncode == 1 and "no federation to talk to" in proc.stderr, proc.stderr


def test_foa_broker_url_wins_over_federation_json(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """An explicit FOA_BROKER_URL is what the user asked for, even beside a `foa up`'s file."""
    write_federation_json(tmp_path, "mqtt://127.0.0.1:1", os.getpid())
    proc = foa("status", "--json", "--wait", "0.3", cwd=tmp_path, FOA_BROKER_URL=mosquitto.url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["broker"] == mosquitto.url.split("@")[-1]


def test_foa_up_names_foa_broker_url_when_its_broker_is_not_there(tmp_path: Path) -> None:
    """With FOA_BROKER_URL exported, `foa up` joins that broker: when it is not there, the error
    says which variable sent it there and what to do (a URL left over from another shell)."""
    proc = foa("up", "--port", "0", cwd=tmp_path, FOA_BROKER_URL="mqtt://127.0.0.1:1")
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach MQTT broker at mqtt://127.0.0.1:1" in proc.stderr, proc.stderr
    assert "FOA_BROKER_URL=mqtt://127.0.0.1:1 is set" in proc.stderr and "unset FOA_BROKER_URL" in proc.stderr
    assert "Traceback" not in proc.stderr


STUBBORN = """
import asyncio, sys
from fabric.cli import sigterm_as_sigint

async def main(swallow):
    print("ready", flush=True)
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not swallow:
                raise
            swallow = False  # one cancellation lost (as a race in asyncio.wait_for loses it)

came = []
try:
    with sigterm_as_sigint(came, grace_s=1.0):
        asyncio.run(main(sys.argv[1] == "swallow"))
except KeyboardInterrupt:
    print("interrupted", len(came), flush=True)
    sys.exit(143)
"""


@pytest.mark.parametrize(
    ("mode", "ignore_sigint", "at_most_s"),
    [
        ("swallow", False, 5.0),  # the first cancellation is lost: after the grace, KeyboardInterrupt
        ("cancel", True, 0.9),  # started with SIGINT ignored (a script's background job): at once
    ],
)
def test_sigterm_stops_a_program_that_loses_its_cancellation_or_ignores_sigint(
    mode: str, ignore_sigint: bool, at_most_s: float
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN, mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        # set either way: a test run started as a shell's background job inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "interrupted" in out
    assert took < at_most_s, took
