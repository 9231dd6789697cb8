"""The task-kind registry: every kind is served by the generic worker and shown by the CLI;
handlers take their kind from their input annotation and are validated once, by the SDK; the
orchestrator's typed call makes a payload of the wrong kind a type error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from agents.server import HandlerSignatureError, TaskFailed, TaskServer
from agents.spec import AgentSpec
from agents.worker import LLMWorker
from fabric.cli.federation import KIND_PROGRESS
from fabric.errors import FoAError, ProtocolError
from fabric.llm.scripted import ScriptedLLM
from fabric.messages import TaskRequest, Usage
from fabric.settings import Settings
from fabric.tasks import (
    DRAFT,
    REGISTRY,
    SYNTHESISE,
    DraftInput,
    DraftOutput,
    PeerAnswer,
    RefineInput,
    SynthesiseInput,
    TaskKind,
)
from tests.scripted_federation import scripted_answer

ROOT = Path(__file__).resolve().parent.parent


class Custom(BaseModel):
    """An agent's own input model (module level: handlers' annotations are resolved by name)."""

    x: int


def test_every_registered_kind_has_a_worker_handler_and_a_progress_line() -> None:
    server = TaskServer("w", "r1")
    LLMWorker(AgentSpec(id="w", description="anything"), Settings(), ScriptedLLM(scripted_answer("w"))).attach(server)
    assert set(server.kinds) == set(REGISTRY), "agents/worker.py must serve every kind in fabric/tasks.py"
    for name, kind in REGISTRY.items():
        route = server.routes[name]
        assert route.input is kind.input and route.output is kind.output
    assert set(KIND_PROGRESS) >= set(REGISTRY), "fabric/cli/federation.py KIND_PROGRESS needs a line for every kind"


def test_registry_is_read_only_and_kinds_are_named_safely() -> None:
    with pytest.raises(TypeError):
        REGISTRY["mine"] = DRAFT  # type: ignore[index]  # the point: it refuses
    with pytest.raises(ProtocolError, match="invalid task kind"):
        TaskKind("Not OK/", DraftInput, DraftOutput, "bad")
    with pytest.raises(ValueError, match="invalid task kind"):
        TaskRequest(task_id="t", task_kind="a/b", agent_id="x")
    assert TaskRequest(task_id="t", task_kind="my-kind", agent_id="x").task_kind == "my-kind"


def request(kind: str, payload: BaseModel | dict[str, object]) -> TaskRequest:
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    return TaskRequest(task_id="t1", task_kind=kind, agent_id="a", input=data)


def test_handlers_take_their_kind_from_the_input_model_and_are_validated_once() -> None:
    server = TaskServer("a", "r1")
    seen: list[object] = []

    @server.handler
    async def draft(task: DraftInput) -> DraftOutput:
        seen.append(task)
        return DraftOutput(answer=task.subtask.upper(), confidence=0.9)

    @server.handler
    def refine(task: RefineInput, ctx: TaskRequest) -> tuple[dict[str, object], Usage]:
        return {"answer": f"{ctx.task_id}: {task.own_answer}", "done": True, "confidence": 85}, Usage(output_tokens=3)

    @server.handler("my-kind")
    def mine(task: TaskRequest) -> dict[str, object]:
        return {"echo": task.input}

    assert server.kinds == ["draft", "my-kind", "refine"]

    async def main() -> None:
        ok = await server.execute(request("draft", DraftInput(question="q", subtask="go")))
        assert ok.ok and isinstance(seen[0], DraftInput)
        assert ok.output == {"answer": "GO", "confidence": 0.9, "exact": False}
        refine_in = RefineInput(
            question="q",
            subtask="s",
            cluster_id="c",
            round=1,
            own_answer="mine",
            peers=[PeerAnswer(agent_id="b", answer="x")],
        )
        refined = await server.execute(request("refine", refine_in))
        # a dict answer is validated into the kind's output model (85 reads as 0.85)
        assert refined.ok and refined.output == {"answer": "t1: mine", "done": True, "confidence": 0.85}
        assert refined.usage.output_tokens == 3
        custom = await server.execute(request("my-kind", {"anything": [1, 2]}))
        assert custom.ok and custom.output == {"echo": {"anything": [1, 2]}}
        bad_in = await server.execute(request("draft", {"question": "q"}))
        assert not bad_in.ok and "invalid draft input" in (bad_in.error or "") and "subtask" in (bad_in.error or "")
        assert seen == [seen[0]]  # the handler never ran on bad input
        unknown = await server.execute(request("refine-x", {}))
        assert not unknown.ok and "no handler for task kind 'refine-x'" in (unknown.error or "")

    asyncio.run(main())
    assert server.served == 3 and server.failed == 2


def test_wrong_outputs_and_annotations_fail_clearly() -> None:
    server = TaskServer("a", "r1")

    @server.handler(DRAFT)
    async def wrong_model(task: TaskRequest) -> BaseModel:
        return PeerAnswer(agent_id="x", answer="not a draft")

    @server.handler(SYNTHESISE)
    async def bad_dict(task: SynthesiseInput) -> dict[str, object]:
        return {"text": "no answer field"}

    @server.handler("refuses")
    async def refuses(task: TaskRequest) -> dict[str, object]:
        raise TaskFailed("I only answer on Tuesdays")

    async def main() -> None:
        wrong = await server.execute(request("draft", DraftInput(question="q", subtask="s")))
        assert not wrong.ok and "returned PeerAnswer, expected DraftOutput" in (wrong.error or "")
        synth_in = SynthesiseInput(
            question="q", mode="merge", instructions="merge", results=[PeerAnswer(agent_id="n1", answer="a")]
        )
        bad = await server.execute(request("synthesise", synth_in))
        assert not bad.ok and "invalid synthesise output" in (bad.error or "") and "answer" in (bad.error or "")
        refused = await server.execute(request("refuses", {}))
        assert not refused.ok and refused.error == "I only answer on Tuesdays"

    asyncio.run(main())

    async def unannotated(task):  # the point: no annotation
        return {}

    async def custom_model(task: Custom) -> dict[str, object]:
        return {}

    async def mismatched(task: RefineInput) -> DraftOutput:
        return DraftOutput(answer="")

    with pytest.raises(HandlerSignatureError, match="annotate its first parameter with a task input model"):
        server.handler(unannotated)
    with pytest.raises(HandlerSignatureError, match="or name its kind"):
        server.handler(custom_model)
    with pytest.raises(
        HandlerSignatureError, match="whose input is DraftInput, but its first parameter is annotated RefineInput"
    ):
        server.add_handler("draft", mismatched)
    server.add_handler("custom", custom_model)  # an agent's own kind may have its own model
    assert server.routes["custom"].input is Custom
    assert issubclass(HandlerSignatureError, FoAError) and issubclass(TaskFailed, FoAError)


def test_a_payload_of_the_wrong_kind_is_a_type_error(tmp_path: Path) -> None:
    """mypy rejects `dispatch_task(..., DRAFT, RefineInput(...))` and reads the answer as DraftOutput."""
    snippet = tmp_path / "wrong_kind.py"
    snippet.write_text(
        "from fabric.bus import Bus\n"
        "from fabric.dispatch import dispatch_task\n"
        "from fabric.tasks import DRAFT, DraftOutput, RefineInput\n\n\n"
        "async def main(bus: Bus) -> None:\n"
        "    bad = RefineInput(question='q', subtask='s', cluster_id='c', round=1, own_answer='a', peers=[])\n"
        "    answer = await dispatch_task(bus, 'agent', DRAFT, bad, timeout=5)\n"
        "    out: DraftOutput = answer.output\n"
        "    reveal_type(out)\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-error-summary",
            "--follow-imports=silent",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    # exactly one error, on the call (line 8): mypy cannot make RefineInput the input of DRAFT
    assert len(errors) == 1 and "wrong_kind.py:8:" in errors[0] and "dispatch_task" in errors[0], proc.stdout
    assert "DraftOutput" in proc.stdout
