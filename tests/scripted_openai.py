"""A scripted LLM behind a real OpenAI-compatible HTTP server, for tests of whole `foa up`
processes: `FOA_LLM_BASE_URL` points the real OpenAICompatBackend at it, so a federation started
as a subprocess runs jobs in seconds, with no model. Answers come from
`tests.scripted_federation.scripted_answer` (plans, drafts, refinements), after `latency_s`.

    python -m tests.scripted_openai --port-file PATH [--latency-s 0.3]

runs it as its own process (it must outlive the `foa up` processes a test kills); the
`ScriptedOpenAI` class runs it in a thread.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fabric.llm.base import ChatMessage
from tests.scripted_federation import scripted_answer


def answer(payload: dict[str, Any]) -> str:
    messages = [
        ChatMessage(role=m.get("role", "user"), content=str(m.get("content") or ""))
        for m in payload.get("messages", [])
    ]
    fmt = payload.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema")
    agent = str(payload.get("model") or "agent")
    return str(scripted_answer(agent)(messages, schema))


class ScriptedOpenAI:
    def __init__(self, latency_s: float = 0.3, port: int = 0) -> None:
        latency = latency_s

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._send({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                time.sleep(latency)
                text = answer(body)
                self._send(
                    {
                        "id": "scripted",
                        "object": "chat.completion",
                        "model": body.get("model", "scripted"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {
                            "prompt_tokens": 20,
                            "completion_tokens": max(1, len(text) // 4),
                            "total_tokens": 20 + len(text) // 4,
                        },
                    }
                )

            def _send(self, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-file", type=Path, required=True)
    ap.add_argument("--latency-s", type=float, default=0.3)
    args = ap.parse_args()
    server = ScriptedOpenAI(args.latency_s)
    args.port_file.write_text(str(server.port))
    server.server.serve_forever()


if __name__ == "__main__":
    main()
