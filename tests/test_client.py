"""`foa.Client` against a real `foa up` process: the shipped code, a real mosquitto it starts,
the real MiniLM embedder, and the scripted agents behind a real OpenAI-compatible HTTP server
(tests/scripted_openai.py; the tests are about the client, not about the answers).

Covered: ask, stream, cancel, agents, route, a clear error without a federation, a conversation
handle that sends one conversation id with every question (checked on the `JobSubmit` the
orchestrator stored), and `foa submit --conversation`, which goes through the same client.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import foa
from fabric.broker import mosquitto_binary
from fabric.messages import JobSubmit
from fabric.orchestrator.store import JobStore
from tests.scripted_federation import SPECS
from tests.scripted_openai import ScriptedOpenAI
from tests.test_supervision import QUESTION, Up, federation_dir

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")

#: small jobs: one refinement round, two agents a node
SMALL: dict[str, Any] = {"refine_rounds": 1, "agents_per_node": 2}


class Federation:
    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env = path, env

    def settings(self) -> foa.Settings:
        """What a user's `Settings()` reads in that directory: no FOA_BROKER_URL, its `.foa`."""
        return foa.Settings(data_dir=self.path / ".foa", broker_url=None)

    def stored_submit(self, job_id: str) -> JobSubmit | None:
        """The job's submission as the orchestrator received and stored it."""
        store = JobStore(self.path / ".foa" / "jobs.sqlite3")
        try:
            return store.submit_of(job_id)
        finally:
            store.close()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with ScriptedOpenAI(latency_s=0.3) as llm:
        path, env = federation_dir(tmp_path_factory.mktemp("client"), llm)
        up = Up(path, env, "up")
        try:
            up.wait_ready()
            yield Federation(path, env)
        finally:
            up.stop()


def test_ask_and_stream(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOA_BROKER_URL", raising=False)

    async def main() -> tuple[foa.JobResult, list[foa.JobEvent], list[foa.JobEvent | foa.JobResult]]:
        async with foa.Client(fed.settings(), timeout=120) as client:
            events: list[foa.JobEvent] = []
            asked = await client.ask(QUESTION, job_id="client-ask", on_event=events.append, **SMALL)
            streamed = [item async for item in client.stream(QUESTION, job_id="client-stream", **SMALL)]
            return asked, events, streamed

    asked, events, streamed = asyncio.run(main())
    assert asked.status == "completed" and asked.answer and asked.job_id == "client-ask", asked
    assert events and {e.job_id for e in events} == {"client-ask"}
    assert [e.phase for e in events][-1] == "done"
    assert len({e.seq for e in events}) == len(events)  # each event once
    *progress, last = streamed
    assert isinstance(last, foa.JobResult) and last.status == "completed" and last.job_id == "client-stream"
    events_seen = [e for e in progress if isinstance(e, foa.JobEvent) and e.job_id == "client-stream"]
    assert events_seen and events_seen == progress and events_seen[-1].phase == "done"


def test_cancel_a_running_job(fed: Federation) -> None:
    async def main() -> tuple[foa.JobResult | None, foa.JobResult]:
        async with foa.Client(fed.settings(), timeout=120) as client:
            started = asyncio.Event()
            job = asyncio.create_task(
                client.ask(QUESTION, job_id="client-cancel", on_event=lambda e: started.set(), refine_rounds=3)
            )
            await asyncio.wait_for(started.wait(), 60)
            canceled = await client.cancel("client-cancel", "the test cancels it")
            return canceled, await job

    canceled, followed = asyncio.run(main())
    assert canceled is not None and canceled.status == "canceled", canceled
    assert "the test cancels it" in (canceled.failure_reason or "")
    assert followed.status == "canceled" and followed.job_id == "client-cancel"


def test_agents_and_route(fed: Federation) -> None:
    async def main() -> tuple[list[foa.AgentInfo], foa.RouteResponse, foa.RouteResponse]:
        async with foa.Client(fed.settings()) as client:
            agents = await client.agents()
            heart = await client.route("sudden chest pain and a heart attack", top_k=2)
            public = await client.route("merge these answers into one summary", top_k=4, policies=["public"])
            return agents, heart, public

    agents, heart, public = asyncio.run(main())
    assert sorted(a.agent_id for a in agents) == sorted(s.id for s in SPECS)
    assert all(a.status != "offline" and a.description for a in agents)
    assert len(heart.matches) == 2 and heart.matches[0].agent_id in {"er-doc", "cardio"}, heart
    assert [m.agent_id for m in public.matches] == ["writer"], public  # the only agent cleared for "public"


def test_conversation_sends_one_id_with_every_question(fed: Federation) -> None:
    """The handle makes its id and sends it from the first question on; the orchestrator stored
    it on both jobs' submissions. (That the orchestrator uses it, and names it in the result, is
    the orchestrator's side; the handle follows an id a result names.)"""

    async def main() -> tuple[str, list[foa.JobResult]]:
        async with foa.Client(fed.settings(), timeout=120) as client:
            conv = client.conversation()
            first = await conv.ask("My father has a fever. What should we do?", job_id="conv-1", **SMALL)
            second = await conv.ask("And for a child?", job_id="conv-2", **SMALL)
            return conv.id, [first, second]

    conversation, results = asyncio.run(main())
    assert conversation.startswith("conv-")
    assert [r.status for r in results] == ["completed", "completed"]
    for job_id in ("conv-1", "conv-2"):
        submit = fed.stored_submit(job_id)
        assert isinstance(submit, JobSubmit) and submit.conversation_id == conversation, submit
    for r in results:  # an orchestrator that names the conversation names this one
        assert r.conversation_id in (None, conversation)


def test_submit_continues_a_conversation(fed: Federation) -> None:
    """`foa submit` (the same client) prints the conversation id after the answer, and
    `--conversation ID` sends the follow-up in it."""

    def submit(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "fabric.cli", "submit", *extra, "--rounds", "1", "--timeout", "120"]
        return subprocess.run(argv, cwd=fed.path, env=fed.env, capture_output=True, text=True, timeout=180)

    first = submit("My father has a fever. What should we do?", "--job-id", "cli-conv-1")
    assert first.returncode == 0, first.stderr[-3000:]
    line = next(ln for ln in first.stderr.splitlines() if ln.startswith("conversation: "))
    conversation = line.split()[1]
    follow = submit("And for a child?", "--job-id", "cli-conv-2", "--conversation", conversation, "--json")
    assert follow.returncode == 0, follow.stderr[-3000:]
    out = json.loads(follow.stdout)
    assert out["status"] == "completed" and out["conversation_id"] == conversation
    for job_id in ("cli-conv-1", "cli-conv-2"):
        submitted = fed.stored_submit(job_id)
        assert isinstance(submitted, JobSubmit) and submitted.conversation_id == conversation


def test_the_readme_python_example_runs(
    fed: Federation, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first Python example, as written, in the directory of a running `foa up`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = re.search(r"### From Python\n\n```python\n(.*?)```", readme, re.S)
    assert found, "the README's client example moved: update this test"
    assert readme.index("```python") == found.start(1) - len("```python\n"), "no longer the first Python example"
    monkeypatch.delenv("FOA_BROKER_URL", raising=False)
    monkeypatch.delenv("FOA_DATA_DIR", raising=False)
    monkeypatch.chdir(fed.path)  # `Client()` finds the `foa up` running here
    exec(compile(found.group(1), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("completed ") and len(printed[0]) > len("completed ") + 10, printed
    assert any(line.startswith("done: ") for line in printed), printed  # the stream's last event
    conversation = next(line for line in printed if line.startswith("conv-"))
    assert "er-doc" in printed[-2] and "agent_id='" in printed[-1], printed
    assert conversation.split()[0].startswith("conv-")


def test_no_federation_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOA_BROKER_URL", raising=False)

    async def enter() -> None:
        async with foa.Client(foa.Settings(data_dir=tmp_path / ".foa", broker_url=None)):
            raise AssertionError("entered a client with no federation")

    with pytest.raises(foa.NoFederation) as caught:
        asyncio.run(enter())
    assert isinstance(caught.value, foa.FoAError)
    assert "start one with `foa up`" in str(caught.value) and "FOA_BROKER_URL" in str(caught.value)

    async def unreachable() -> None:  # a broker named, nobody there
        async with foa.Client(broker_url="mqtt://127.0.0.1:9") as client:
            await client.agents()

    with pytest.raises(foa.TransportError, match=r"cannot reach the federation's broker at mqtt://127.0.0.1:9"):
        asyncio.run(unreachable())


def test_bad_arguments_are_refused_before_anything_is_sent() -> None:
    client = foa.Client(foa.Settings(broker_url="mqtt://127.0.0.1:9"))
    for call, message in (
        (client.ask("  "), "the question is empty"),
        (client.ask("q", refine_roundz=1), "unknown options ['refine_roundz']"),
        (client.ask("q", refine_rounds=-1), "refine_rounds"),
        (client.ask("q", conversation_id=""), "conversation id"),
        (client.route("", top_k=1), "route query text is empty"),
    ):
        with pytest.raises(foa.ConfigError) as caught:
            asyncio.run(call)
        assert message in str(caught.value), caught.value

    async def stream_with_on_event() -> object:
        return await anext(client.stream("q", on_event=print))

    with pytest.raises(foa.ConfigError, match="drop on_event"):
        asyncio.run(stream_with_on_event())


def test_a_conversation_follows_the_id_a_result_names() -> None:
    """The orchestrator's side names the conversation in `JobResult.conversation_id`; the handle
    continues that one (here without a federation: the result is made by hand)."""
    client = foa.Client(foa.Settings(broker_url="mqtt://127.0.0.1:9"))
    conv = client.conversation()
    made = conv.id
    assert made.startswith("conv-") and client.conversation().id != made  # a new one per handle
    unnamed = conv._adopt(foa.JobResult(job_id="j1", status="completed"))
    assert conv.id == made and conv.results == [unnamed]  # an orchestrator that names none: keep ours
    conv._adopt(foa.JobResult(job_id="j2", status="completed", conversation_id="conv-orchestrator"))
    assert conv.id == "conv-orchestrator"
    assert client.conversation("conv-given").id == "conv-given"
    with pytest.raises(foa.ConfigError, match="must be 1 to 128"):
        client.conversation("x" * 129)
