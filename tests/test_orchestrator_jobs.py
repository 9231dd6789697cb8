"""Whole jobs through the real broker, router, orchestrator, dispatch and job store, with
scripted agents (ScriptedLLM, for orchestration logic only): the DAG, clusters, rounds, budget,
timeouts, duplicates and resuming after the orchestrator dies mid-job."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from fabric.federation import LocalFederation
from fabric.messages import Budget, JobEvent, JobOptions, JobResult
from fabric.orchestrator.service import OrchestratorService
from fabric.orchestrator.store import JobStore
from fabric.settings import Settings
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.scripted_federation import SPECS, backend_factory


def fed_settings(broker, tmp_path: Path, **kw: object) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(broker.url, tmp_path, request_timeout_s=10.0, **kw)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_job_runs_every_phase(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)
    factory = backend_factory(done_from_round=2)

    async def main() -> tuple[JobResult, list[str]]:
        phases: list[str] = []
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            result = await fed.run_job("My father has sudden chest pain. What should we do?",
                                       JobOptions(max_proposers=2, agents_per_node=3, refine_rounds=3),
                                       on_event=lambda e: phases.append(e.phase))
            return result, phases

    result, phases = run(main())
    assert result.status == "completed", result.failure_reason
    nodes = result.dag["nodes"]
    assert len(nodes) == 4 and len(result.dag["edges"]) == 4  # both proposals merged into one plan
    assert all(n["support"] == 2 for n in nodes)
    summary = next(n["id"] for n in nodes if n["text"].startswith("Summarise"))
    assert sorted(src for src, dst in result.dag["edges"] if dst == summary) != []
    # 3 agents per node, chosen by the router, never the policy-less writer for clinical work
    assert all(len(ms) == 3 for ms in result.assignments.values())
    # refinement stopped by consensus in round 2 (every agent votes done from round 2)
    for node_rounds in result.rounds.values():
        for info in node_rounds.values():
            assert info["stopped"] in ("consensus", "single")
            if info["stopped"] == "consensus":
                assert info["rounds"] == 2
    assert "(revised) (revised)" in result.answer
    # concat synthesis: every subtask in topological order, the summary last
    positions = [result.answer.index(n["text"]) for n in nodes]
    assert positions == sorted(positions) and result.answer.rindex("## Summarise") + 3 == max(positions)
    assert result.usage["tokens"] > 0 and result.usage["cost"] > 0 and result.usage["calls"] >= 2 + 12
    for phase in ("decompose", "assign", "draft", "cluster", "refine", "synthesise", "done"):
        assert phase in phases


def test_a_single_drafter_node_reports_its_draft_once(memory_broker, tmp_path, embedder) -> None:
    """One agent per node: its draft is the node's answer, so one node_done event carries it
    (no separate draft event), and the job store keeps exactly what was published."""
    settings = fed_settings(memory_broker, tmp_path)

    async def main() -> tuple[JobResult, list[JobEvent], list[JobEvent]]:
        events: list[JobEvent] = []
        async with LocalFederation(settings, SPECS, backend_factory=backend_factory(), embedder=embedder) as fed:
            result = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=2),
                                       on_event=events.append)
            return result, events, fed.orchestrator.store.events(result.job_id)

    result, events, stored = run(main())
    assert result.status == "completed", result.failure_reason
    phases = [e.phase for e in events]
    assert "draft" not in phases and "cluster" not in phases
    done = [e for e in events if e.phase == "node_done"]
    assert sorted(e.data["node"] for e in done) == sorted(n["id"] for n in result.dag["nodes"])
    for e in done:
        (agent, text), = e.data["drafts"].items()
        assert agent == e.data["representative"] and text
    assert [(e.seq, e.phase, e.message) for e in stored] == [(e.seq, e.phase, e.message) for e in events]


def test_policies_gate_assignment_and_impossible_ones_fail_clearly(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)

    async def main() -> tuple[JobResult, JobResult]:
        async with LocalFederation(settings, SPECS, backend_factory=backend_factory(), embedder=embedder) as fed:
            ok = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, agents_per_node=4, refine_rounds=0), policies=["hipaa"])
            bad = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1), policies=["eu-residency"])
            return ok, bad

    ok, bad = run(main())
    assert ok.status == "completed"
    assigned = {m["agent_id"] for ms in ok.assignments.values() for m in ms}
    assert "writer" not in assigned and assigned <= {"er-doc", "cardio", "gp"}
    assert bad.status == "failed" and "eu-residency" in (bad.failure_reason or "")


def test_budget_stops_refinement_and_impossible_budget_is_refused(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path, llm_max_tokens=64)

    async def main() -> tuple[JobResult, JobResult]:
        async with LocalFederation(settings, SPECS, backend_factory=backend_factory(done_from_round=99), embedder=embedder) as fed:
            tight = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, agents_per_node=3, refine_rounds=3),
                                      budget=Budget(max_tokens=2200))
            silly = await fed.run_job("Chest pain: what to do?", budget=Budget(max_tokens=3))
            return tight, silly

    tight, silly = run(main())
    assert silly.status == "failed" and "rejected" in (silly.failure_reason or "") and "token budget 3" in silly.failure_reason
    assert tight.status == "completed", tight.failure_reason
    stops = [info["stopped"] for node in tight.rounds.values() for info in node.values()]
    assert "budget" in stops  # refinement was cut, not the job
    assert tight.usage["tokens"] <= 2200 + 3 * 64 * 3  # at most one round of calls beyond the check


def test_unresponsive_agents_time_out_and_the_job_still_answers(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path, node_timeout_s=4.0)
    factory = backend_factory()

    async def main() -> JobResult:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            stuck = next(a for a in fed.agents if a.agent_id == "cardio")

            async def hang(task):  # type: ignore[no-untyped-def]
                await asyncio.sleep(3600)  # online, routed to, never answers

            stuck.add_handler("draft", hang)
            return await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, agents_per_node=3, refine_rounds=1), policies=["clinical"])

    result = run(main())
    assert result.status == "completed", result.failure_reason
    assert any("cardio" in f for f in result.usage["failures"]), (result.dag, result.usage["failures"])


def test_duplicate_submission_runs_once(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)
    factory = backend_factory()

    async def main() -> tuple[JobResult, JobResult, int]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            job_id = f"dup-{uuid.uuid4().hex[:6]}"
            first = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, refine_rounds=0), job_id=job_id)
            calls = sum(b.call_count for b in factory.backends.values())
            second = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, refine_rounds=0), job_id=job_id)
            return first, second, sum(b.call_count for b in factory.backends.values()) - calls

    first, second, extra_calls = run(main())
    assert first.status == second.status == "completed"
    assert second.answer == first.answer and extra_calls == 0


def test_a_restarted_orchestrator_resumes_the_job(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)
    factory = backend_factory(latency_s=0.4)

    async def main() -> tuple[JobResult, int, dict[str, int]]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            first = fed.orchestrator
            assert first is not None
            bus = await fed.client()
            job = asyncio.create_task(fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=2, refine_rounds=1), job_id="resume-me"))
            store = first.store
            await eventually(lambda: any(k.startswith("node:") for k in store.checkpoints("resume-me")), timeout=60, what="a finished node")
            decompose_calls = sum(1 for b in factory.backends.values() for c in b.calls if (c.json_schema or {}).get("title") == "Plan")
            # the orchestrator dies: its job task is cancelled, its connection dropped
            for task in list(first.running.values()):
                task.cancel()
            await first.bus.close(clean=False)
            assert JobStore(settings.job_store_path).get("resume-me")["state"] == "running"
            second_bus = await fed._bus("orchestrator")
            second = OrchestratorService(settings, second_bus, embedder)
            await second.start()  # resumes from the store
            result = await asyncio.wait_for(job, 120)
            decompose_after = sum(1 for b in factory.backends.values() for c in b.calls if (c.json_schema or {}).get("title") == "Plan")
            second.store.close()
            return result, decompose_after - decompose_calls, {"completed": second.completed}

    result, extra_decomposes, counts = run(main())
    assert result.status == "completed", result.failure_reason
    assert extra_decomposes == 0  # the plan came from the checkpoint
    assert counts["completed"] == 1 and len(result.dag["nodes"]) == 4
