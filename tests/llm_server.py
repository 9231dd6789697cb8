"""Real OpenAI-compatible servers for tests and benchmarks.

`LlamaServer` runs `python -m llama_cpp.server` on the embedded GGUF as a child process (the
same server people deploy), so the OpenAI-compatible backend is tested against real HTTP,
real SSE and real constrained decoding. `FlakyProxy` is a small real HTTP server in front of
it that answers 503 a set number of times and then forwards requests unchanged, to exercise
the retry path honestly.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from fabric.llm.embedded import find_gguf


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """`python -m llama_cpp.server` on a free port; ready once GET /v1/models answers."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 90.0,
    ) -> None:
        self.model_path = model_path or find_gguf()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.host = host
        self.port = 0
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, chars: int = 2000) -> str:
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def start(self) -> LlamaServer:
        self.port = free_port(self.host)
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
            "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
        ]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        self._log.close()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FlakyProxy:
    """A real HTTP server that answers `failures` POSTs with `status` (and a Retry-After
    header), then forwards every request to `upstream` and relays the answer. Requests that
    carry a top-level field named in `reject_fields` get a 400, as from a server that does not
    support that feature (e.g. response_format on an older TGI)."""

    def __init__(
        self,
        upstream: str,
        *,
        failures: int = 2,
        status: int = 503,
        retry_after: str | None = "0",
        reject_fields: tuple[str, ...] = (),
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.reject_fields = reject_fields
        self.failures = failures
        self.status = status
        self.retry_after = retry_after
        self.seen: list[int] = []  # the status answered for each POST, in order
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    fields = set(json.loads(body or b"{}"))
                except ValueError:
                    fields = set()
                rejected = sorted(fields & set(proxy.reject_fields))
                if rejected:
                    with proxy._lock:
                        proxy.seen.append(400)
                    self._answer(400, {"error": {"message": f"Unsupported parameter: {rejected[0]}"}})
                    return
                with proxy._lock:
                    fail = proxy.failures > 0
                    if fail:
                        proxy.failures -= 1
                        proxy.seen.append(proxy.status)
                if fail:
                    payload = b'{"error": {"message": "overloaded, try again"}}'
                    self.send_response(proxy.status)
                    if proxy.retry_after is not None:
                        self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self._forward(body)

            def _answer(self, status: int, body: dict[str, object]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes | None) -> None:
                url = proxy.upstream + self.path.removeprefix("/v1")
                resp = httpx.request(
                    "POST" if body is not None else "GET", url, content=body,
                    headers={"Content-Type": "application/json"}, timeout=120.0,
                )
                if body is not None:
                    with proxy._lock:
                        proxy.seen.append(resp.status_code)
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="session", name="llm_server")
def llm_server_fixture() -> Iterator[LlamaServer]:
    """A real OpenAI-compatible server on the embedded GGUF, for the whole test session."""
    with LlamaServer() as server:
        yield server
