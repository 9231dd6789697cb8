"""Exact answers from the agents that fit (issue 19): the plan check, the assignment floor,
exact results through refinement and synthesis, and the direct route.

The rules are tested on their own with the real embedder, then in whole jobs through the real
broker, router, orchestrator and job store, where the LLM behind each agent is a ScriptedLLM
(orchestration logic only) and the tool agent is an SDK agent that returns exact results."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agents.sdk import Agent, TaskFailed
from agents.spec import AgentSpec, default_specs_dir, load_specs
from fabric.arithmetic import pure_arithmetic
from fabric.cli.federation import print_result
from fabric.federation import LocalFederation
from fabric.llm.base import ChatMessage
from fabric.llm.scripted import ScriptedLLM
from fabric.messages import JobEvent, JobOptions, JobResult, Match, Usage
from fabric.orchestrator.consensus import pick_node_answer, refine_cluster
from fabric.orchestrator.direct import clear_winner, question_parts, route_directly
from fabric.orchestrator.exactness import carry_exact, eligible_answers
from fabric.orchestrator.floor import apply_floor
from fabric.orchestrator.plan_check import altered_copy_reason, check_plans, degenerate_reason
from fabric.settings import Settings
from fabric.tasks import DraftInput, DraftOutput, Plan, ProposedSubtask, RefineInput, RefineOutput
from fabric.vcv import Resources
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.scripted_federation import SPECS

GARBAGE = "20-Nov-20, 23:45:56.789,"
FEVER = (
    "My 4-year-old has a fever of 39.5 C and a rash that does not fade under a glass. What should I do?"
)


def m(agent_id: str, score: float) -> Match:
    return Match(agent_id=agent_id, version=1, score=score)


def plan(*texts: str) -> Plan:
    return Plan(subtasks=[ProposedSubtask(id=f"s{i + 1}", text=t) for i, t in enumerate(texts)])


# ---- plans that fit the question -------------------------------------------------------------


def test_degenerate_subtasks_are_named_with_their_reason() -> None:
    assert "fragment" in (degenerate_reason(GARBAGE) or "")
    assert "fragment" in (degenerate_reason("2025-12-25") or "")
    assert "echo" in (degenerate_reason("Split this request into subtasks that different experts could work on") or "")
    assert "statement" in (degenerate_reason("I love this product") or "")
    assert "statement" in (degenerate_reason("This is a great idea. I'm excited about it") or "")
    assert degenerate_reason("Check whether the rash is a sign of meningitis") is None
    assert degenerate_reason("Is this rash an emergency?") is None  # a question is an instruction too


def test_a_copy_of_the_question_with_other_values_is_not_a_subtask(embedder) -> None:
    question = "What weekday is 2025-12-25?"
    assert "2025-12-26 instead of 2025-12-25" in (altered_copy_reason("What weekday is 2025-12-26?", question) or "")
    assert altered_copy_reason("Which weekday is 2025-12-25?", question) is None  # same values
    assert altered_copy_reason("Count the days from 2025-01-01 to 2026-01-01", question) is None  # its own words
    assert altered_copy_reason("Multiply 1234 by 5000", "Calculate 1234 * 5678") is None  # a step, not a copy
    proposals = [("planner", plan("What weekday is 2025-12-26?", "Find the weekday of 2025-12-25 in the calendar"))]
    kept, dropped = check_plans(question, proposals, embedder.embed, similarity_floor=Settings().plan_similarity_floor)
    assert [s.text for _, p in kept for s in p.subtasks] == ["Find the weekday of 2025-12-25 in the calendar"]
    assert [d.text for d in dropped] == ["What weekday is 2025-12-26?"] and "values changed" in dropped[0].reason


def test_plan_check_drops_garbage_and_off_question_subtasks_and_keeps_real_ones(embedder) -> None:
    proposals = [
        ("planner", plan(GARBAGE, "Assess whether a non-blanching rash with fever is an emergency")),
        ("other", plan("Compute the integral of x squared", "Explain how to bring a child's fever down")),
    ]
    kept, dropped = check_plans(FEVER, proposals, embedder.embed, similarity_floor=Settings().plan_similarity_floor)
    kept_texts = [s.text for _, p in kept for s in p.subtasks]
    assert kept_texts == [
        "Assess whether a non-blanching rash with fever is an emergency",
        "Explain how to bring a child's fever down",
    ]
    reasons = {d.text: d.reason for d in dropped}
    assert set(reasons) == {GARBAGE, "Compute the integral of x squared"}
    assert "fragment" in reasons[GARBAGE] and "off the question" in reasons["Compute the integral of x squared"]


def test_plan_check_removes_dependencies_on_dropped_subtasks(embedder) -> None:
    p = Plan(
        subtasks=[
            ProposedSubtask(id="a", text=GARBAGE),
            ProposedSubtask(id="b", text="Decide whether the child needs emergency care now", depends_on=["a"]),
        ]
    )
    kept, _ = check_plans(FEVER, [("x", p)], embedder.embed, similarity_floor=Settings().plan_similarity_floor)
    assert [(s.id, s.depends_on) for s in kept[0][1].subtasks] == [("b", [])]


# ---- only agents that fit --------------------------------------------------------------------


def test_floor_keeps_agents_near_the_best_and_always_the_best() -> None:
    cut = apply_floor([m("tool", 0.18), m("clinician", 0.019), m("gp", 0.15)], fraction=0.8, threshold=0.02)
    assert [x.agent_id for x in cut.kept] == ["tool", "gp"]
    assert [(o.agent_id, o.score) for o in cut.left_out] == [("clinician", 0.019)]
    assert cut.floor == pytest.approx(0.144) and not cut.unfit
    assert "clinician (α 0.019 < floor 0.144)" == cut.left_out[0].why()
    # below the abstention threshold: the node is marked unfit, its agents still ranked by the fraction
    lone = apply_floor([m("a", 0.01), m("b", 0.009), m("c", 0.002)], fraction=0.8, threshold=0.05)
    assert [x.agent_id for x in lone.kept] == ["a", "b"] and lone.unfit


# ---- a direct route ----------------------------------------------------------------------------


def test_direct_route_needs_a_clear_winner_above_the_threshold() -> None:
    assert clear_winner([m("tool", 0.18), m("gp", 0.019)], threshold=0.05, margin=0.5)
    assert not clear_winner([m("cardio", 0.13), m("er", 0.12)], threshold=0.05, margin=0.5)
    assert not clear_winner([m("tool", 0.04), m("gp", 0.001)], threshold=0.05, margin=0.5)
    assert route_directly("never", [m("cardio", 0.13), m("er", 0.12)], threshold=0.05, margin=0.5)
    assert not route_directly("always", [m("tool", 0.18)], threshold=0.05, margin=0.5)


# ---- exact results survive refinement and synthesis --------------------------------------------


def test_an_exact_answer_represents_its_cluster_whatever_the_llms_vote(embedder) -> None:
    drafts = {"tool": ("2025-12-25 is a Thursday", 0.9), "llm1": ("It is a Friday", 0.9), "llm2": ("Friday", 0.9)}
    calls: list[str] = []

    async def call(agent_id: str, payload: RefineInput) -> tuple[RefineOutput, Usage]:
        calls.append(agent_id)  # scripted refiners that agree with each other, not with the tool
        return RefineOutput(answer="Friday, surely", done=True, confidence=1.0), Usage()

    out = asyncio.run(
        refine_cluster(
            cluster_id="c1", members=list(drafts), drafts=drafts, question="What weekday is 2025-12-25?",
            subtask="What weekday is 2025-12-25?", rounds=2, call=call, embed=embedder.embed,
            reputation=lambda a: 1.0, may_continue=lambda: True, exact=["tool"],
        )
    )
    assert "tool" not in calls  # a result is not re-opened
    assert out.representative == "tool" and out.answer == "2025-12-25 is a Thursday" and out.exact
    assert out.final_answers["tool"] == "2025-12-25 is a Thursday"
    opinions = out.model_copy(update={"exact": False, "members": ["a", "b", "c", "d"], "confidence": 1.0})
    assert pick_node_answer([opinions, out], lambda a: 1.0) is out  # exact beats a bigger cluster


def test_llm_answers_that_quote_the_exact_result_stay_eligible() -> None:
    answers = {"tool": "42", "llm": "The result is 42, computed by the tool", "other": "about 40"}
    assert set(eligible_answers(answers, {"tool": "42"})) == {"tool", "llm"}
    assert set(eligible_answers(answers, {})) == set(answers)


def test_carry_exact_appends_what_a_synthesis_lost_and_states_failures() -> None:
    kept = carry_exact("Thursday, 25 December.", {"What weekday?": "Thursday"}, {})
    assert kept == "Thursday, 25 December."
    lost = carry_exact("A fine day.", {"What weekday is 2025-12-25?": "2025-12-25 is a Thursday"}, {})
    assert lost.endswith("Exact results:\n- What weekday is 2025-12-25?: 2025-12-25 is a Thursday")
    failed = carry_exact("maybe 20:13", {}, {"Time in Tokyo?": ["tz-tool: Invalid timezone"]})
    assert "Failed exact calls:" in failed and "tz-tool: Invalid timezone" in failed


# ---- whole jobs --------------------------------------------------------------------------------


def garbage_planner(agent_id: str, plan: Sequence[str] = (GARBAGE,)):
    """A scripted planner that proposes what the 135M model proposed (the garbage subtask)."""

    def respond(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        title = (schema or {}).get("title")
        if title == "Plan":
            return json.dumps({"subtasks": [{"id": f"s{i}", "text": t, "depends_on": []} for i, t in enumerate(plan)]})
        if title == "RefineOutput":
            own = messages[-1].content.split("Your answer:\n", 1)[1].split("\n\nYour peers'", 1)[0]
            return json.dumps({"answer": own, "done": True, "confidence": 0.6})
        return f"{agent_id}: seek emergency care now; a rash that does not fade can be meningitis."

    return respond


PEDIATRIC = [
    AgentSpec(id="pediatrician", description="Pediatrics: fever, rashes and illness in infants and children",
              skills=["pediatrics", "fever in children"], policies=["clinical"],
              resources=Resources(max_concurrency=8)),
    AgentSpec(id="er-doc", description="Emergency medicine: urgent symptoms, when to call an ambulance, triage",
              skills=["triage"], policies=["clinical"], resources=Resources(max_concurrency=8)),
    AgentSpec(id="mathematician", description="Mathematics: arithmetic, algebra, calculus and statistics",
              skills=["arithmetic"], policies=["public"], resources=Resources(max_concurrency=8)),
    AgentSpec(id="mental-health", description="Mental health: anxiety, depression, stress and sleep",
              skills=["psychiatry"], policies=["clinical"], resources=Resources(max_concurrency=8)),
]


def console_view(result: JobResult, events: list[JobEvent]) -> Any:
    from fabric.ui.jobs import JobRecord, derive

    record = JobRecord(result.job_id, events={e.seq: e.model_dump(mode="json") for e in events},
                       result=result.model_dump(mode="json"))
    return derive(record)


def run_job(settings, specs, factory, embedder, question: str, options: JobOptions) -> tuple[JobResult, list[JobEvent]]:
    async def main() -> tuple[JobResult, list[JobEvent]]:
        events: list[JobEvent] = []
        async with LocalFederation(settings, specs, backend_factory=factory, embedder=embedder) as fed:
            # the router calibrates its abstention threshold once the agents have settled
            await eventually(lambda: fed.router.engine.threshold is not None, timeout=30, what="calibration")
            result = await fed.run_job(question, options, on_event=events.append)
            return result, events

    return asyncio.run(main())


def test_a_garbage_plan_falls_back_to_the_question_and_reaches_the_specialists(
    memory_broker, tmp_path: Path, embedder
) -> None:
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    backends: dict[str, ScriptedLLM] = {}

    def factory(spec: AgentSpec) -> ScriptedLLM:
        backends[spec.id] = ScriptedLLM(garbage_planner(spec.id), name=f"scripted-{spec.id}")
        return backends[spec.id]

    result, events = run_job(settings, PEDIATRIC, factory, embedder, FEVER,
                             JobOptions(plan="always", max_proposers=2, agents_per_node=3, refine_rounds=1))
    assert result.status == "completed", result.failure_reason
    assert [n.text for n in result.dag.nodes] == [FEVER]  # the question verbatim, not the timestamp
    assigned = {x.agent_id for ms in result.assignments.values() for x in ms}
    assert "pediatrician" in assigned and "mathematician" not in assigned
    check = next(e for e in events if e.phase == "plan_check")
    assert check.data["dropped"][0]["text"] == GARBAGE and "fragment" in check.data["dropped"][0]["reason"]
    assert any("no usable proposal" in e.message for e in events if e.phase == "decompose")
    detail = console_view(result, events)  # what the console's job page shows
    assert detail.dropped[0]["text"] == GARBAGE and "dropped 1 proposed subtask" in detail.plan_note


def planned_fever_job(subtasks: Sequence[str], memory_broker, tmp_path: Path, embedder) -> tuple[JobResult, JobEvent]:
    """FEVER planned as `subtasks` by every proposer: the completed result and its `unfit` event."""
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)

    def factory(spec: AgentSpec) -> ScriptedLLM:
        return ScriptedLLM(garbage_planner(spec.id, subtasks), name=f"scripted-{spec.id}")

    result, events = run_job(settings, PEDIATRIC, factory, embedder, FEVER,
                             JobOptions(plan="always", max_proposers=1, agents_per_node=2, refine_rounds=0))
    assert result.status == "completed", result.failure_reason
    return result, next(e for e in events if e.phase == "unfit")


def test_a_subtask_nobody_fits_leaves_the_plan(memory_broker, tmp_path: Path, embedder) -> None:
    """The 135M plan for chest pain had "What should I do?" as a node: no agent fits it, and the
    least-bad one (mental health) answered it. Now it is reported and dropped."""
    subtasks = ("Decide whether the rash and fever need emergency care", "What should I do?")
    result, unfit = planned_fever_job(subtasks, memory_broker, tmp_path, embedder)
    assert "dropped from the plan" in unfit.message
    assert [n.text for n in result.dag.nodes] == [subtasks[0]]
    assert "What should I do?" not in result.answer
    assert result.warnings == []  # dropped, not guessed: nothing to warn about


def test_a_plan_nobody_fits_is_answered_with_a_warning(memory_broker, tmp_path: Path, embedder) -> None:
    """When every subtask is below the abstention threshold the job still runs (the best agent
    there is answers), and the result, not only the events, says that the answer is a guess:
    `foa run` printed a poorly matching agent's answer with nothing to tell it apart."""
    result, unfit = planned_fever_job(("What should I do?",), memory_broker, tmp_path, embedder)
    assert "answered by the best agent there is" in unfit.message
    assert [n.text for n in result.dag.nodes] == ["What should I do?"]
    assert len(result.warnings) == 1 and "'What should I do?'" in result.warnings[0]
    assert "guess" in result.warnings[0] and "abstention threshold" in result.warnings[0]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        print_result(result, as_json=False)  # what `foa run` prints
    assert f"warning: {result.warnings[0]}" in err.getvalue()


def test_fillers_below_the_floor_are_left_out_and_reported(memory_broker, tmp_path: Path, embedder) -> None:
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    specs = [*SPECS, AgentSpec(id="poet", description="Poetry: sonnets, haiku and rhymes about nature",
                               skills=["poetry"], policies=["clinical", "hipaa"],
                               resources=Resources(max_concurrency=8))]
    from tests.scripted_federation import backend_factory

    result, events = run_job(settings, specs, backend_factory(), embedder,
                             "Chest pain: what to do?", JobOptions(plan="never", agents_per_node=4, refine_rounds=0))
    assert result.status == "completed", result.failure_reason
    assert "poet" not in {x.agent_id for ms in result.assignments.values() for x in ms}
    assign = next(e for e in events if e.phase == "assign")
    left = [o["agent_id"] for o in assign.data["left_out"].get("n1", [])]
    assert "poet" in left and "left out" in assign.message
    floor = assign.data["floors"]["n1"]
    assert all(x.score >= floor for x in result.assignments["n1"])
    (node,) = console_view(result, events).nodes
    assert "poet" in [o["agent_id"] for o in node.left_out] and all(o["score"] < o["floor"] for o in node.left_out)


def tool_agent_specs() -> list[AgentSpec]:
    return [
        AgentSpec(id="calendar-tool", description="Calendar tool: the weekday of a calendar date",
                  skills=["weekday", "calendar date"], policies=["public"], tags=["exact"],
                  resources=Resources(max_concurrency=8)),
        AgentSpec(id="writer", description="Summarising and editing: merges answers into one clear answer",
                  skills=["summarisation"], policies=["public"], resources=Resources(max_concurrency=8)),
    ]


async def with_tool(fed, spec: AgentSpec, settings, embedder, handler) -> Agent:
    """An SDK agent next to the federation (a stand-in tool that returns exact results)."""
    tool = Agent(spec, settings, broker=fed.address, embedder=embedder)
    tool.handler(handler)
    await tool.start()
    await eventually(
        lambda: fed.orchestrator.registry.get(spec.id) is not None and spec.id in fed.router.index.rows,
        what=f"{spec.id} registered",
    )
    return tool


def test_a_direct_route_answers_with_the_exact_tool_result_verbatim(memory_broker, tmp_path: Path, embedder) -> None:
    """No plan (the tool fits the whole question); the tool's exact output survives a scripted
    writer that rewrites everything in refinement and in a rebase synthesis."""
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    specs = tool_agent_specs()
    tool_output = "2025-12-25 is a Thursday"
    calls = 0

    def writer(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        if (schema or {}).get("title") == "RefineOutput":
            return json.dumps({"answer": "It is a Friday.", "done": True, "confidence": 1.0})
        return "It is a Friday."

    async def draft(task: DraftInput) -> DraftOutput:
        nonlocal calls
        calls += 1
        return DraftOutput(answer=tool_output, confidence=0.9, exact=True)

    async def main() -> tuple[JobResult, list[JobEvent]]:
        events: list[JobEvent] = []
        async with LocalFederation(settings, [specs[1]], backend_factory=lambda s: ScriptedLLM(writer),
                                   embedder=embedder) as fed:
            tool = await with_tool(fed, specs[0], settings, embedder, draft)
            try:
                result = await fed.run_job("What weekday is 2025-12-25?",
                                           JobOptions(agents_per_node=2, refine_rounds=1, synth_mode="rebase"),
                                           on_event=events.append)
            finally:
                await tool.stop()
            return result, events

    result, events = asyncio.run(main())
    assert result.status == "completed", result.failure_reason
    direct = [e for e in events if e.phase == "decompose" and e.data.get("direct")]
    assert direct and direct[0].data["agent_id"] == "calendar-tool" and "direct" in direct[0].message
    assert [n.text for n in result.dag.nodes] == ["What weekday is 2025-12-25?"]
    assert calls == 1 and tool_output in result.answer


def test_a_failed_exact_call_fails_the_node_with_the_tools_message(memory_broker, tmp_path: Path, embedder) -> None:
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    specs = tool_agent_specs()

    async def draft(task: DraftInput) -> DraftOutput:
        raise TaskFailed("Invalid date: 2025-13-45")

    async def main() -> tuple[JobResult, list[JobEvent]]:
        events: list[JobEvent] = []
        async with LocalFederation(settings, [specs[1]], backend_factory=lambda s: ScriptedLLM(lambda m, s: "Friday"),
                                   embedder=embedder) as fed:
            tool = await with_tool(fed, specs[0], settings, embedder, draft)
            try:
                result = await fed.run_job("What weekday is 2025-13-45?", JobOptions(agents_per_node=2),
                                           on_event=events.append)
            finally:
                await tool.stop()
            return result, events

    result, events = asyncio.run(main())
    failed = [e for e in events if e.phase == "exact_failed"]
    assert failed and "Invalid date: 2025-13-45" in failed[0].message
    # the writer is far below the tool's α: it never guessed in the tool's place
    assert result.status == "failed" and "Invalid date: 2025-13-45" in (result.failure_reason or "")


# ---- as a user runs it: real processes ---------------------------------------------------------


@pytest.mark.slow
def test_foa_run_mixed_weekday_goes_direct_to_the_tool(tmp_path: Path) -> None:
    """`foa run --specs examples/mixed "What weekday is 2025-12-25?"` in a subprocess: the real
    broker, embedded model, the MCP server subprocess and the A2A example agent. The tool fits the
    whole question, so there is no plan (the 135M planner used to copy the date wrongly), and
    the answer is the tool's output, verbatim."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.interop_support import a2a_example, free_port

    root = Path(__file__).resolve().parent.parent
    specs = tmp_path / "mixed"
    shutil.copytree(root / "examples" / "mixed", specs)
    port = free_port()  # the example's 9101 may be taken on a shared machine
    utility = specs / "text-utility.yaml"
    utility.write_text(utility.read_text().replace("127.0.0.1:9101", f"127.0.0.1:{port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOA_")} | {"FOA_DATA_DIR": str(tmp_path / "d")}
    with a2a_example(port):
        proc = subprocess.run(
            [sys.executable, "-m", "fabric.cli", "run", "--specs", str(specs), "What weekday is 2025-12-25?", "--json"],
            env=env, cwd=root, capture_output=True, text=True, timeout=600,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["status"] == "completed"
    assert "Thursday" in out["answer"] and "2025-12-25" in out["answer"]
    assert [n["text"] for n in out["dag"]["nodes"]] == ["What weekday is 2025-12-25?"]
    assert [m["agent_id"] for m in out["assignments"]["n1"]] == ["clinical-tools"]
    assert "direct: clinical-tools fits the whole question" in proc.stderr
    assert "propose a plan" not in proc.stderr  # no planner was asked


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Calculate 1234 * 5678", "1234 * 5678 = 7006652"),
        ("What is 2^10?", "2^10 = 1024"),
        ("what is (3 + 4) * 5", "(3 + 4) * 5 = 35"),
        ("How much is 1,234 x 3?", "1,234 x 3 = 3702"),
        ("What is 2.5 * 4?", "2.5 * 4 = 10"),
        ("10 / 4", "10 / 4 = 2.5"),
        ("10 / 3", "10 / 3 ≈ 3.33333333333"),
        ("-3 - -2", "-3 - -2 = -1"),
        # a value, not a request for one: the LLM answers
        ("Compute 7 ÷ 0", None),
        ("2 ** 100000", None),  # bounded: no input makes it slow
        ("What is 17% of 250?", "17% of 250 = 42.5"),
        ("What is 15 percent of 1,240?", "15 percent of 1,240 = 186"),
        ("what's 33% of 10", "33% of 10 = 3.3"),
        ("What is 17% of 250 apples?", None),  # a unit: the LLM answers
        ("Is 17% of 250 more than 40?", None),
        ("What is 17% of 250 and 3% of 10?", None),
        (
            "How many days are there between 2025-01-01 and 2025-03-01?",
            "from 2025-01-01 to 2025-03-01 = 59 days",
        ),
        ("days from 2024-03-01 to 2024-02-28", "from 2024-03-01 to 2024-02-28 = 2 days"),
        ("How many business days are there between 2025-01-01 and 2025-03-01?", None),
        ("How many days between 2025-02-30 and 2025-03-01?", None),  # no such date
        ("What weekday is 2025-12-25?", None),
        ("What is 2024-03-01?", None),
        ("Find the area of a triangle with base 10 and height 5", None),
        ("If I have 3 apples and buy 2*4 more, how many do I have?", None),
        ("Solve 3x + 2 = 5", None),
        ("Calculate 2 + 2 and 3 + 3", None),
        ("What is 5?", None),
    ],
)
def test_plain_arithmetic_is_answered_exactly_and_nothing_else_is(text: str, answer: str | None) -> None:
    assert pure_arithmetic(text) == answer


@pytest.mark.parametrize(
    ("question", "parts"),
    [
        (
            "Translate 'good morning' into French, and calculate 12 * 12.",
            ["Translate 'good morning' into French", "calculate 12 * 12."],
        ),
        ("I have a fever. Should I take ibuprofen?", ["I have a fever.", "Should I take ibuprofen?"]),
        ("What weekday is 2025-12-25?", ["What weekday is 2025-12-25?"]),
        ("Chest pain and sweating: what should we do?", ["Chest pain and sweating: what should we do?"]),
        ("Is it safe? Yes.", ["Is it safe? Yes."]),  # parts of fewer than three words are not parts
    ],
)
def test_a_question_asking_several_things_has_parts(question: str, parts: list[str]) -> None:
    assert question_parts(question) == parts


def answering(text: str) -> tuple[dict[str, ScriptedLLM], Callable[[AgentSpec], ScriptedLLM]]:
    """Scripted LLMs (orchestration tests only) that answer `text` to everything, by agent id."""
    backends: dict[str, ScriptedLLM] = {}

    def factory(spec: AgentSpec) -> ScriptedLLM:
        backends[spec.id] = ScriptedLLM(lambda messages, schema: text, name=f"scripted-{spec.id}")
        return backends[spec.id]

    return backends, factory


def test_the_shipped_mathematician_answers_arithmetic_exactly_without_its_llm(
    memory_broker, tmp_path: Path, embedder
) -> None:
    """A user trial: "Calculate 1234 * 5678" reached the mathematician (routing was right) and the
    embedded model answered "1234 * 5678 = 091,128". The shipped spec lists `tools: [arithmetic]`;
    its LLM here is a scripted one that gets sums wrong, to show it is never asked for the answer."""
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    backends, factory = answering("1234 * 5678 = 091,128")
    specs = load_specs(default_specs_dir())
    assert next(s for s in specs if s.id == "mathematician").tools == ["arithmetic"]
    result, _ = run_job(settings, specs, factory, embedder, "Calculate 1234 * 5678", JobOptions())
    assert result.status == "completed", result.failure_reason
    assert result.assignments["n1"][0].agent_id == "mathematician"
    assert "1234 * 5678 = 7006652" in result.answer and "091,128" not in result.answer
    asked = [call.messages[-1].content for call in backends["mathematician"].calls]
    assert not [prompt for prompt in asked if "Answer your part" in prompt]  # proposals only, no draft


@pytest.mark.parametrize(
    ("question", "exact"), [("What is 240 * 0.15?", "240 * 0.15 = 36"), ("What is 15% of 240?", "15% of 240 = 36")]
)
def test_an_arithmetic_question_goes_to_the_arithmetic_skill_whatever_its_similarity(
    memory_broker, tmp_path: Path, embedder, question: str, exact: str
) -> None:
    """A user trial: with the shipped agents "What is 240 * 0.15?" routed to the summariser first
    (α 0.016, the mathematician 0.015), and "What is 15% of 240?" was planned as "The answer is:
    17." and answered "17. You have to provide a response ...". A question that is arithmetic now
    goes directly to the agents with the `arithmetic` skill (the shipped mathematician's tool gives
    it). The LLMs are scripted to answer "17." to everything, to show none is asked."""
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    backends, factory = answering("The answer is: 17.")
    specs = load_specs(default_specs_dir())
    assert "arithmetic" in next(s for s in specs if s.id == "mathematician").skills
    result, events = run_job(settings, specs, factory, embedder, question, JobOptions())
    assert result.status == "completed", result.failure_reason
    direct = next(e for e in events if e.phase == "decompose" and (e.data or {}).get("direct"))
    assert direct.data["skills"] == ["arithmetic"] and [n.text for n in result.dag.nodes] == [question]
    assert [m.agent_id for m in result.assignments["n1"]] == ["mathematician"]
    assert exact in result.answer and "17." not in result.answer
    assert not result.warnings  # the skill fits it, whatever α says: not "that agent's guess"
    assert not any(backend.calls for backend in backends.values())  # no planner, no draft, no LLM at all
    assert any("the question is arithmetic" in e.message for e in events if e.phase == "decompose")


def test_an_arithmetic_question_without_an_arithmetic_agent_is_routed_as_any_other(
    memory_broker, tmp_path: Path, embedder
) -> None:
    """No agent has the skill: the question is routed by its meaning as before, not refused."""
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)
    specs = [s for s in load_specs(default_specs_dir()) if "arithmetic" not in s.skills]
    _, factory = answering("36")

    result, events = run_job(settings, specs, factory, embedder, "What is 15% of 240?", JobOptions())
    assert result.status == "completed", result.failure_reason
    assert not any("the question is arithmetic" in e.message or "skills" in (e.data or {}) for e in events)


def test_a_question_whose_parts_fit_different_agents_is_planned_by_its_parts(
    memory_broker, tmp_path: Path, embedder
) -> None:
    """A user trial: "Translate 'good morning' into French, and calculate 12 * 12." went directly
    to the translator (α 0.073, next 0.023), which answered half of it. Its second part fits the
    mathematician, so each part is a node and each goes to its own agent (scripted LLMs: the
    translator's writes a fixed line, the mathematician's gets sums wrong and is never asked)."""
    settings = make_settings(memory_broker.url, tmp_path, request_timeout_s=10.0)

    def factory(spec: AgentSpec) -> ScriptedLLM:
        line = "Bonjour." if spec.id == "translator" else "12 * 12 = 140"
        return ScriptedLLM(lambda messages, schema: line, name=f"scripted-{spec.id}")

    question = "Translate 'good morning' into French, and calculate 12 * 12."
    result, events = run_job(settings, load_specs(default_specs_dir()), factory, embedder, question, JobOptions())
    assert result.status == "completed", result.failure_reason
    assert [n.text for n in result.dag.nodes] == ["Translate 'good morning' into French", "calculate 12 * 12."]
    assert result.assignments["n1"][0].agent_id == "translator"
    assert result.assignments["n2"][0].agent_id == "mathematician"
    assert "Bonjour." in result.answer and "12 * 12 = 144" in result.answer and "140" not in result.answer
    plan = next(e for e in events if e.phase == "decompose")
    assert plan.data["parts"] is True and "fits mathematician" in plan.message
    # --plan never keeps the old behaviour: the best agent gets the question whole
    whole, _ = run_job(settings, load_specs(default_specs_dir()), factory, embedder, question, JobOptions(plan="never"))
    assert [n.text for n in whole.dag.nodes] == [question]
