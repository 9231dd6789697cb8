"""`foa a2a serve` on clients' defaults (issue 21): the official a2a-sdk client built the way the
SDK's own helloworld sample builds it (a2a-samples, samples/python/agents/helloworld/
test_client.py: `A2ACardResolver`, then `create_client(agent=card, client_config=ClientConfig(
streaming=...))`, no httpx client, so httpx's default 5 s timeout), against a real `foa a2a
serve` process in front of a real federation whose scripted LLMs answer after `LATENCY_S`
(orchestration logic only), so every job outlasts the 4 s hold and is quiet longer than the 2 s
heartbeat. Plus requests in older protocol shapes (0.2 `tasks/send`, 0.3 `message/send` with
`kind` parts) as raw JSON-RPC posts."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, create_client
from a2a.helpers import get_artifact_text, get_message_text, new_text_message
from a2a.types import GetTaskRequest, Role, SendMessageRequest, SubscribeToTaskRequest, Task, TaskState

from agents.spec import AgentSpec
from fabric.client import cancel_job
from fabric.federation import LocalFederation
from fabric.llm.base import ChatMessage, LLMError
from fabric.llm.scripted import ScriptedLLM
from tests.conftest import make_settings
from tests.interop_support import env_with, free_port, process
from tests.scripted_federation import SPECS, scripted_answer

QUESTION = "My father has sudden chest pain. What should we do?"
LATENCY_S = 2.5  # each scripted LLM call: longer than the heartbeat, so heartbeats must fill the gaps
HEARTBEAT_S = 2.0  # the defaults, spelled out: the assertions below depend on them
HOLD_S = 4.0
FINAL = {TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED}


def slow_factory(failing: set[str]) -> Any:
    """Scripted agents that take LATENCY_S per call; a question containing a word in `failing`
    makes every call fail (the job then fails after the hold)."""

    def make(spec: AgentSpec) -> ScriptedLLM:
        answer = scripted_answer(spec.id, done_from_round=1)

        def respond(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
            if any(word in m.content for m in messages for word in failing):
                raise LLMError(f"scripted-{spec.id}: told to fail")
            return answer(messages, schema)

        return ScriptedLLM(respond, latency_s=LATENCY_S, name=f"scripted-{spec.id}")

    return make


def serve_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "fabric.cli", "a2a", "serve", "--port", str(port)]


def serve_env(broker_url: str) -> dict[str, str]:
    timing = {"FOA_A2A_HEARTBEAT_S": str(HEARTBEAT_S), "FOA_A2A_HOLD_S": str(HOLD_S)}
    return env_with(FOA_BROKER_URL=broker_url, **timing)


async def sample_client(url: str, streaming: bool, polling: bool = False) -> Client:
    """As the SDK's helloworld sample: resolve the card, then a client on the default ClientConfig
    (plus `streaming` / `polling` as given), no timeout override."""
    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(httpx_client=http, base_url=url).get_agent_card()
    return await create_client(agent=card, client_config=ClientConfig(streaming=streaming, polling=polling))


def ask(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


async def send_timed(client: Client, text: str) -> tuple[Task, float]:
    started = time.monotonic()
    events = [e async for e in client.send_message(ask(text))]
    return events[-1].task, time.monotonic() - started


async def poll(client: Client, task_id: str, timeout: float = 120.0) -> Task:
    """tasks/get until the task ends, as a polling client does."""
    deadline = time.monotonic() + timeout
    while True:
        task = await client.get_task(GetTaskRequest(id=task_id))
        if task.status.state in FINAL or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.5)


def answer_of(task: Task) -> str:
    return {a.name: get_artifact_text(a) for a in task.artifacts}.get("answer", "")


async def stream_gaps(events: Any) -> tuple[list[float], list[str], Any]:
    """Seconds between consecutive stream events, the status texts, and the last state."""
    gaps: list[float] = []
    texts: list[str] = []
    state = None
    last = time.monotonic()
    async for event in events:
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        if event.HasField("status_update"):
            texts.append(get_message_text(event.status_update.status.message))
            state = event.status_update.status.state
        elif event.HasField("task"):
            state = event.task.status.state
    return gaps, texts, state


def test_official_client_on_defaults_blocking_polling_streaming_and_resubscribe(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=30.0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    failing: set[str] = set()

    async def main() -> None:
        async with LocalFederation(settings, SPECS, backend_factory=slow_factory(failing), embedder=embedder) as fed:
            with process(serve_argv(port), f"{url}/.well-known/agent-card.json", env=serve_env(mosquitto.url)):
                # blocking (the sample's non-streaming client): back within the hold, `working`
                blocking = await sample_client(url, streaming=False)
                task, took = await send_timed(blocking, QUESTION)
                assert task.status.state == TaskState.TASK_STATE_WORKING, get_message_text(task.status.message)
                assert HOLD_S - 0.5 <= took < 5.0, took  # held, and answered inside the client's 5 s
                # ... and tasks/get follows the job to its answer
                done = await poll(blocking, task.id)
                assert done.status.state == TaskState.TASK_STATE_COMPLETED, get_message_text(done.status.message)
                assert "call emergency services" in answer_of(done)

                # polling (ClientConfig(polling=True) sends return_immediately): a `working` task at once
                polling = await sample_client(url, streaming=False, polling=True)
                task, took = await send_timed(polling, QUESTION)
                assert task.status.state == TaskState.TASK_STATE_WORKING and took < 2.0, (took, task.status)
                assert "submitted" in get_message_text(task.status.message)
                done = await poll(polling, task.id)
                assert done.status.state == TaskState.TASK_STATE_COMPLETED and "call emergency" in answer_of(done)

                # streaming (the sample's streaming client): an update at least every heartbeat
                streaming = await sample_client(url, streaming=True)
                gaps, texts, state = await stream_gaps(streaming.send_message(ask(QUESTION)))
                assert state == TaskState.TASK_STATE_COMPLETED, texts
                heartbeats = [t for t in texts if "s elapsed" in t]
                assert heartbeats and any(t.startswith("decompose:") for t in heartbeats), texts
                assert max(gaps) < 2 * HEARTBEAT_S, (max(gaps), gaps, texts)

                # the task subscription follows a held send to the end, with heartbeats too
                task, _ = await send_timed(blocking, QUESTION)
                assert task.status.state == TaskState.TASK_STATE_WORKING
                gaps, texts, state = await stream_gaps(streaming.subscribe(SubscribeToTaskRequest(id=task.id)))
                assert state == TaskState.TASK_STATE_COMPLETED, texts
                assert max(gaps[1:]) < 2 * HEARTBEAT_S, (gaps, texts)
                assert "call emergency services" in answer_of(await blocking.get_task(GetTaskRequest(id=task.id)))

                # a job canceled after the hold (here over the bus, as `foa cancel` does) ends `canceled`
                task, _ = await send_timed(blocking, QUESTION)
                assert task.status.state == TaskState.TASK_STATE_WORKING
                await cancel_job(await fed.client(), f"a2a-{task.id}", "canceled by the test")
                ended = await poll(blocking, task.id)
                assert ended.status.state == TaskState.TASK_STATE_CANCELED, get_message_text(ended.status.message)

                # a job that fails after the hold ends `failed`, with the reason
                failing.add("BROKEN")
                task, _ = await send_timed(blocking, QUESTION + " BROKEN")
                assert task.status.state == TaskState.TASK_STATE_WORKING
                ended = await poll(blocking, task.id)
                assert ended.status.state == TaskState.TASK_STATE_FAILED, get_message_text(ended.status.message)
                assert get_message_text(ended.status.message), "a failed task says why"
                for client in (blocking, polling, streaming):
                    await client.close()

    asyncio.run(main())


def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": uuid.uuid4().hex, "method": method, "params": params}


V02_SEND = {  # the older python-a2a library's and A2A 0.2's shape
    "id": "task-1",
    "message": {"role": "user", "parts": [{"type": "text", "text": QUESTION}]},
}


def v03_send(blocking: bool) -> dict[str, Any]:
    parts = [{"kind": "text", "text": QUESTION}]
    message = {"role": "user", "kind": "message", "messageId": uuid.uuid4().hex, "parts": parts}
    return {"message": message, "configuration": {"blocking": blocking}}


@pytest.mark.parametrize("method", ["tasks/send", "tasks/sendSubscribe"])
def test_a2a_0_2_requests_get_an_error_naming_the_versions_and_the_card(mosquitto, method) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process(serve_argv(port), f"{url}/.well-known/agent-card.json", env=serve_env(mosquitto.url)):
        reply = httpx.post(f"{url}/a2a", json=rpc(method, V02_SEND), timeout=5).json()
        message = reply["error"]["message"]
        assert reply["error"]["code"] == -32601 and f"'{method}' is A2A 0.2's" in message
        assert "A2A 1.0" in message and "A2A 0.3" in message and "message/send" in message
        assert f"{url}/.well-known/agent-card.json" in message
        # a client that posts to the base URL gets the same answer
        reply = httpx.post(f"{url}/", json=rpc(method, V02_SEND), timeout=5).json()
        assert reply["error"]["message"] == message
        # other bad input: a hint too, and the server keeps serving
        for body in (rpc("message/send", {"message": {"parts": "not a list"}}), rpc("no/such", {}), [1, 2], "x"):
            reply = httpx.post(f"{url}/a2a", json=body, timeout=5).json()
            assert "error" in reply, reply
        reply = httpx.post(f"{url}/a2a", json=rpc("message/send", {"message": {"parts": "x"}}), timeout=5).json()
        assert "/.well-known/agent-card.json" in reply["error"]["message"], reply
        assert httpx.get(f"{url}/.well-known/agent-card.json", timeout=5).status_code == 200


def test_a2a_0_3_message_send_with_kind_parts_is_served(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=30.0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async def main() -> None:
        async with LocalFederation(settings, SPECS, backend_factory=slow_factory(set()), embedder=embedder):
            with process(serve_argv(port), f"{url}/.well-known/agent-card.json", env=serve_env(mosquitto.url)):
                card = httpx.get(f"{url}/.well-known/agent-card.json", timeout=5).json()
                assert {i["protocolVersion"] for i in card["supportedInterfaces"]} == {"1.0", "0.3"}
                async with httpx.AsyncClient(timeout=5) as http:  # a 0.3 client, on a default-like timeout
                    started = time.monotonic()
                    sent = (await http.post(f"{url}/a2a", json=rpc("message/send", v03_send(True)))).json()
                    assert time.monotonic() - started < 5.0
                    task = sent["result"]
                    assert task["kind"] == "task" and task["status"]["state"] == "working", sent
                    deadline = time.monotonic() + 120
                    while task["status"]["state"] not in ("completed", "failed", "canceled"):
                        assert time.monotonic() < deadline, task["status"]
                        await asyncio.sleep(0.5)
                        got = (await http.post(f"{url}/a2a", json=rpc("tasks/get", {"id": task["id"]}))).json()
                        task = got["result"]
                    assert task["status"]["state"] == "completed", task["status"]
                    texts = [p.get("text", "") for a in task["artifacts"] for p in a["parts"]]
                    assert any("call emergency services" in t for t in texts), task["artifacts"]
                    # 0.3 `blocking: false`: the working task at once
                    started = time.monotonic()
                    sent = (await http.post(f"{url}/a2a", json=rpc("message/send", v03_send(False)))).json()
                    assert sent["result"]["status"]["state"] == "working" and time.monotonic() - started < 2.0, sent

    asyncio.run(main())
