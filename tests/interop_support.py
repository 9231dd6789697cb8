"""Real processes for the interop tests: the example A2A agent, `foa a2a serve`, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
A2A_EXAMPLE = ROOT / "examples" / "a2a_echo_agent.py"
MCP_EXAMPLE = ROOT / "examples" / "mcp_tools_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@contextmanager
def process(argv: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix="foa-interop-", suffix=".log", delete=False)  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, env=env or env_with(), stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_http(ready_url, proc=proc)
        yield proc
    except BaseException:
        log.flush()
        tail = Path(log.name).read_text(errors="replace")[-4000:]
        print(f"--- stderr of {' '.join(argv[:4])} ---\n{tail}", file=sys.stderr)
        raise
    finally:
        log.close()
        Path(log.name).unlink(missing_ok=True)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def a2a_example(port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(A2A_EXAMPLE), "--port", str(port), *args]
    with process(argv, f"{url}/.well-known/agent-card.json") as proc:
        yield proc
