"""Whole jobs through the real broker, router, orchestrator, dispatch and job store, with
scripted agents (ScriptedLLM, for orchestration logic only): the DAG, clusters, rounds, budget,
timeouts, duplicates and resuming after the orchestrator dies mid-job."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path

from fabric.broker import Mosquitto
from fabric.bus import Bus
from fabric.federation import LocalFederation
from fabric.messages import Budget, JobEvent, JobOptions, JobResult
from fabric.orchestrator.service import OrchestratorService
from fabric.orchestrator.store import JobStore
from fabric.settings import Settings
from fabric.transports.memory import MemoryBroker
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.scripted_federation import SPECS, backend_factory


def fed_settings(broker: Mosquitto | MemoryBroker, tmp_path: Path, **kw: object) -> Settings:
    return make_settings(broker.url, tmp_path, request_timeout_s=10.0, **kw)


def run(coro):
    return asyncio.run(coro)


def test_a_job_runs_every_phase(memory_broker, tmp_path, embedder) -> None:
    # full teams (no floor: tests/test_exact_answers.py has it), so every phase has several agents
    settings = fed_settings(memory_broker, tmp_path, assign_floor=0.0)
    factory = backend_factory(done_from_round=2)

    async def main() -> tuple[JobResult, list[str]]:
        phases: list[str] = []
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            result = await fed.run_job(
                "My father has sudden chest pain. What should we do?",
                JobOptions(max_proposers=2, agents_per_node=3, refine_rounds=3),
                on_event=lambda e: phases.append(e.phase),
            )
            return result, phases

    result, phases = run(main())
    assert result.status == "completed", result.failure_reason
    nodes = result.dag.nodes
    assert len(nodes) == 4 and len(result.dag.edges) == 4  # both proposals merged into one plan
    assert all(n.support == 2 for n in nodes)
    summary = next(n.id for n in nodes if n.text.startswith("Summarise"))
    assert result.dag.depends_on(summary) != []
    # 3 agents per node, chosen by the router, never the policy-less writer for clinical work
    assert all(len(ms) == 3 for ms in result.assignments.values())
    # refinement stopped by consensus in round 2 (every agent votes done from round 2)
    for node_rounds in result.rounds.values():
        for info in node_rounds.values():
            assert info.stopped in ("consensus", "single")
            if info.stopped == "consensus":
                assert info.rounds == 2
    assert "(revised) (revised)" in result.answer
    # concat synthesis: every subtask in topological order, the summary last
    positions = [result.answer.index(n.text) for n in nodes]
    assert positions == sorted(positions) and result.answer.rindex("## Summarise") + 3 == max(positions)
    assert result.usage.tokens > 0 and result.usage.cost > 0 and result.usage.calls >= 2 + 12
    for phase in ("decompose", "assign", "draft", "cluster", "refine", "synthesise", "done"):
        assert phase in phases


def test_a_single_drafter_node_reports_its_draft_once(memory_broker, tmp_path, embedder) -> None:
    """One agent per node: its draft is the node's answer, so one node_done event carries it
    (no separate draft event), and the job store keeps exactly what was published."""
    settings = fed_settings(memory_broker, tmp_path)

    async def main() -> tuple[JobResult, list[JobEvent], list[JobEvent]]:
        events: list[JobEvent] = []
        async with LocalFederation(settings, SPECS, backend_factory=backend_factory(), embedder=embedder) as fed:
            result = await fed.run_job(
                "Chest pain: what to do?",
                JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=2),
                on_event=events.append,
            )
            assert fed.orchestrator is not None
            return result, events, fed.orchestrator.store.events(result.job_id)

    result, events, stored = run(main())
    assert result.status == "completed", result.failure_reason
    phases = [e.phase for e in events]
    assert "draft" not in phases and "cluster" not in phases
    done = [e for e in events if e.phase == "node_done"]
    assert sorted(e.data["node"] for e in done) == sorted(n.id for n in result.dag.nodes)
    for e in done:
        ((agent, text),) = e.data["drafts"].items()
        assert agent == e.data["representative"] and text
    assert [(e.seq, e.phase, e.message) for e in stored] == [(e.seq, e.phase, e.message) for e in events]


def test_policies_gate_assignment_and_impossible_ones_fail_clearly(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)

    async def main() -> tuple[JobResult, JobResult]:
        async with LocalFederation(settings, SPECS, backend_factory=backend_factory(), embedder=embedder) as fed:
            ok = await fed.run_job(
                "Chest pain: what to do?",
                JobOptions(max_proposers=1, agents_per_node=4, refine_rounds=0),
                policies=["hipaa"],
            )
            bad = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1), policies=["eu-residency"])
            return ok, bad

    ok, bad = run(main())
    assert ok.status == "completed"
    assigned = {m.agent_id for ms in ok.assignments.values() for m in ms}
    assert "writer" not in assigned and assigned <= {"er-doc", "cardio", "gp"}
    assert bad.status == "failed" and "eu-residency" in (bad.failure_reason or "")


def test_budget_stops_refinement_and_impossible_budget_is_refused(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path, llm_max_tokens=64, assign_floor=0.0)  # teams that refine

    async def main() -> tuple[JobResult, JobResult]:
        async with LocalFederation(
            settings, SPECS, backend_factory=backend_factory(done_from_round=99), embedder=embedder
        ) as fed:
            tight = await fed.run_job(
                "Chest pain: what to do?",
                JobOptions(max_proposers=1, agents_per_node=3, refine_rounds=3),
                budget=Budget(max_tokens=2200),
            )
            silly = await fed.run_job("Chest pain: what to do?", budget=Budget(max_tokens=3))
            return tight, silly

    tight, silly = run(main())
    assert (
        silly.status == "failed"
        and "rejected" in (silly.failure_reason or "")
        and "token budget 3" in silly.failure_reason
    )
    assert tight.status == "completed", tight.failure_reason
    stops = [info.stopped for node in tight.rounds.values() for info in node.values()]
    assert "budget" in stops  # refinement was cut, not the job
    assert tight.usage.tokens <= 2200 + 3 * 64 * 3  # at most one round of calls beyond the check


def test_unresponsive_agents_time_out_and_the_job_still_answers(memory_broker, tmp_path, embedder) -> None:
    # full teams (no floor): one stuck drafter among several, not a lone one
    settings = fed_settings(memory_broker, tmp_path, node_timeout_s=4.0, assign_floor=0.0)
    factory = backend_factory()

    async def main() -> JobResult:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            stuck = next(a for a in fed.agents if a.agent_id == "cardio")

            async def hang(task):
                await asyncio.sleep(3600)  # online, routed to, never answers

            stuck.add_handler("draft", hang)
            return await fed.run_job(
                "Chest pain: what to do?",
                JobOptions(max_proposers=1, agents_per_node=3, refine_rounds=1),
                policies=["clinical"],
            )

    result = run(main())
    assert result.status == "completed", result.failure_reason
    assert any("cardio" in f for f in result.usage.failures), (result.dag, result.usage.failures)


def test_duplicate_submission_runs_once(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)
    factory = backend_factory()

    async def main() -> tuple[JobResult, JobResult, int]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            job_id = f"dup-{uuid.uuid4().hex[:6]}"
            first = await fed.run_job(
                "Chest pain: what to do?", JobOptions(max_proposers=1, refine_rounds=0), job_id=job_id
            )
            calls = sum(b.call_count for b in factory.backends.values())
            second = await fed.run_job(
                "Chest pain: what to do?", JobOptions(max_proposers=1, refine_rounds=0), job_id=job_id
            )
            return first, second, sum(b.call_count for b in factory.backends.values()) - calls

    first, second, extra_calls = run(main())
    assert first.status == second.status == "completed"
    assert second.answer == first.answer and extra_calls == 0


def test_a_restarted_orchestrator_resumes_the_job(memory_broker, tmp_path, embedder) -> None:
    settings = fed_settings(memory_broker, tmp_path)
    factory = backend_factory(latency_s=0.4)

    def plan_calls() -> int:
        calls = [c for b in factory.backends.values() for c in b.calls]
        return sum(1 for c in calls if (c.json_schema or {}).get("title") == "Plan")

    async def main() -> tuple[JobResult, int, dict[str, int]]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            first = fed.orchestrator
            assert first is not None
            await fed.client()
            job = asyncio.create_task(
                fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=2, refine_rounds=1), job_id="resume-me")
            )
            store = first.store
            await eventually(
                lambda: any(k.startswith("node:") for k in store.checkpoints("resume-me")),
                timeout=60,
                what="a finished node",
            )
            decompose_calls = plan_calls()
            # the orchestrator dies: its job task is cancelled, its connection dropped
            for task in list(first.running.values()):
                task.cancel()
            await first.bus.close(clean=False)
            row = JobStore(settings.job_store_path).get("resume-me")
            assert row is not None and row["state"] == "running"
            async with Bus(settings, f"orchestrator-second-{uuid.uuid4().hex[:6]}", broker=fed.address) as second_bus:
                second = OrchestratorService(settings, second_bus, embedder)
                await second.start()  # resumes from the store
                result = await asyncio.wait_for(job, 120)
                decompose_after = plan_calls()
                second.store.close()
            return result, decompose_after - decompose_calls, {"completed": second.completed}

    result, extra_decomposes, counts = run(main())
    assert result.status == "completed", result.failure_reason
    assert extra_decomposes == 0  # the plan came from the checkpoint
    assert counts["completed"] == 1 and len(result.dag.nodes) == 4


def test_a_job_taken_again_while_its_fenced_runner_unwinds_runs_once(memory_broker, tmp_path, embedder) -> None:
    """Fenced out of a job, then taking it again before the old runner has unwound (another
    replica took it and let its lease lapse): the new runner starts after the old one, never
    beside it, and under the new lease (the old one's exit leaves it alone). Before, the two ran
    together and the second wrote unfenced: two completed results in tests/test_chaos.py."""
    settings = fed_settings(memory_broker, tmp_path)
    factory = backend_factory(latency_s=0.3)

    async def main() -> tuple[JobResult, dict[str, object], int]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            orch = fed.orchestrator
            assert orch is not None
            await fed.client()
            job = asyncio.create_task(
                fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=2, refine_rounds=1), job_id="twice")
            )
            await eventually(lambda: orch.store.token("twice") == 1 and "twice" in orch.running, timeout=30, what="job")
            old = orch.running["twice"]
            with sqlite3.connect(settings.job_store_path) as other:  # another replica took it, then lapsed
                other.execute(
                    "UPDATE jobs SET lease_token=lease_token+1, owner='other', lease_expires=? WHERE job_id='twice'",
                    (time.time() - 1,),
                )
            orch.store.renew(orch.bus.client_id)  # this replica learns it lost the job: abandons it
            assert "twice" in orch.abandoned and not old.done()
            assert orch.leases.claim() == ["twice"]  # and takes it again at once (token 3)
            assert "twice" not in orch.running  # not beside the old runner, which has not unwound yet
            await asyncio.wait([old])
            await eventually(lambda: "twice" in orch.running, timeout=5, what="the new runner")
            assert orch.store.token("twice") == 3  # the old runner's exit left the new lease alone
            result = await asyncio.wait_for(job, 120)
            row = JobStore(settings.job_store_path).get("twice")
            assert row is not None
            return result, row, orch.completed

    result, row, completed = run(main())
    assert result.status == "completed", result.failure_reason
    assert (row["state"], row["lease_token"], completed) == ("completed", 3, 1)


# ---- typed results ---------------------------------------------------------------------------

#: the JSON shape `JobResult` had when its parts were dicts (what `foa run --json` prints)
OLD_SHAPE = {
    "top": {
        "job_id",
        "status",
        "answer",
        "failure_reason",
        "dag",
        "assignments",
        "clusters",
        "rounds",
        "usage",
        "timings",
    },
    "dag": {"nodes", "edges"},
    "dag_node": {"id", "text", "support", "proposers"},
    "match": {"agent_id", "version", "score", "factors", "expected_cost", "expected_latency_ms"},
    "cluster": {"members", "rounds", "stopped", "representative", "votes"},
    "usage": {"tokens", "input_tokens", "output_tokens", "cost", "calls", "synth_mode", "failures"},
}


def test_typed_results_keep_the_json_shape_and_clusters_report_their_usage(mosquitto, tmp_path, embedder) -> None:
    """JobResult's typed parts dump to exactly the keys the dicts had; a cluster's outcome carries
    the real usage of its refinement calls (it was always zero)."""
    from fabric.messages import JobSubmit
    from fabric.orchestrator.engine import JobRunner
    from fabric.orchestrator.reputation import ReputationBook

    settings = fed_settings(mosquitto, tmp_path, assign_floor=0.0)  # full teams: clusters that refine
    factory = backend_factory(done_from_round=2)

    submit_id = f"typed-{uuid.uuid4().hex[:6]}"

    async def main() -> tuple[JobResult, JobRunner, int]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            assert fed.orchestrator is not None
            submit = JobSubmit(
                job_id=submit_id,
                question="My father has sudden chest pain. What should we do?",
                options=JobOptions(max_proposers=1, agents_per_node=3, refine_rounds=2),
            )
            store = JobStore(tmp_path / "runner.sqlite3")
            runner = JobRunner(submit, fed.orchestrator.ports, settings, store, ReputationBook(), fresh=True)
            result = await runner.run()
            store.close()
            refines = sum(
                1
                for b in factory.backends.values()
                for c in b.calls
                if (c.json_schema or {}).get("title") == "RefineOutput"
            )
            return result, runner, refines

    result, runner, refine_calls = run(main())
    assert result.status == "completed", result.failure_reason
    data = result.model_dump(mode="json")
    # added since: the job's conversation (issue 21), warnings about the answer (a guessed subtask)
    assert set(data) == OLD_SHAPE["top"] | {"conversation_id", "warnings"}
    assert data["warnings"] == []  # every node had agents that fit
    assert data["conversation_id"] == submit_id  # a job that continues none starts one under its own id
    assert set(data["dag"]) == OLD_SHAPE["dag"] and all(set(n) == OLD_SHAPE["dag_node"] for n in data["dag"]["nodes"])
    assert all(isinstance(e, list) and len(e) == 2 for e in data["dag"]["edges"])
    assert all(set(m) == OLD_SHAPE["match"] for ms in data["assignments"].values() for m in ms)
    assert all(
        isinstance(c, list) and all(isinstance(a, str) for a in c) for cs in data["clusters"].values() for c in cs
    )
    assert all(set(info) == OLD_SHAPE["cluster"] for node in data["rounds"].values() for info in node.values())
    assert set(data["usage"]) == OLD_SHAPE["usage"]
    assert JobResult.model_validate(data) == result  # and it reads back
    outcomes = [o for os_ in runner.outcomes.values() for o in os_]
    assert refine_calls > 0 and sum(o.usage.calls for o in outcomes) == refine_calls
    assert all(o.usage.output_tokens > 0 for o in outcomes if o.rounds_run > 0)
    assert sum(o.usage.tokens for o in outcomes) < result.usage.tokens  # refinement is part of the job's usage


# ---- cancellation ----------------------------------------------------------------------------


def test_cancel_mid_draft_ends_the_job_canceled_with_its_usage(mosquitto, tmp_path, embedder) -> None:
    """Agents take 2 s per call; the cancel comes once drafting started: the job ends at once
    (its pending calls abandoned), `canceled`, with the decomposition's usage; a second cancel
    and a cancel of a finished job change nothing, and the orchestrator keeps serving."""
    from fabric.client import cancel_job

    settings = fed_settings(mosquitto, tmp_path)
    factory = backend_factory(latency_s=2.0)

    async def main() -> dict[str, object]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            assert fed.orchestrator is not None
            bus = await fed.client()
            drafting = asyncio.Event()
            job_id = f"cancel-{uuid.uuid4().hex[:6]}"
            job = asyncio.create_task(
                fed.run_job(
                    "Chest pain: what to do?",
                    JobOptions(max_proposers=1, agents_per_node=2, refine_rounds=1),
                    job_id=job_id,
                    on_event=lambda e: drafting.set() if e.phase == "assign" else None,
                )
            )
            await asyncio.wait_for(drafting.wait(), 60)
            await asyncio.sleep(0.3)  # the first drafts are in flight
            sent = time.monotonic()
            await cancel_job(bus, job_id, "user changed their mind")
            await cancel_job(bus, job_id, "twice")  # while it ends: harmless
            result = await asyncio.wait_for(job, 30)
            took = time.monotonic() - sent
            await cancel_job(bus, job_id, "after the end")  # a canceled (finished) job: harmless
            done = await fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1, refine_rounds=0))
            await cancel_job(bus, done.job_id, "too late")
            await asyncio.sleep(0.5)
            stored = fed.orchestrator.store.result(job_id), fed.orchestrator.store.result(done.job_id)
            return {
                "result": result,
                "took": took,
                "done": done,
                "stored": stored,
                "running": dict(fed.orchestrator.running),
                "canceled": fed.orchestrator.canceled,
            }

    out = run(main())
    result, done = out["result"], out["done"]
    assert isinstance(result, JobResult) and isinstance(done, JobResult)
    assert result.status == "canceled" and result.failure_reason == "user changed their mind"
    assert out["took"] < 2.0  # did not wait for the 2 s drafts in flight
    assert result.usage.calls >= 1 and result.usage.tokens > 0  # the decomposition was paid for
    assert result.dag.nodes  # the plan it had
    stored = out["stored"]
    assert isinstance(stored, tuple)
    stored_canceled, stored_done = stored
    assert (
        stored_canceled is not None
        and stored_canceled.status == "canceled"
        and stored_canceled.failure_reason == "user changed their mind"
    )
    assert done.status == "completed" and stored_done is not None and stored_done.status == "completed"
    assert out["running"] == {} and out["canceled"] == 1


def test_a_cancel_before_the_submission_cancels_the_job(mosquitto, tmp_path, embedder) -> None:
    from fabric.client import cancel_job

    settings = fed_settings(mosquitto, tmp_path)
    factory = backend_factory()

    async def main() -> tuple[JobResult, int]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            bus = await fed.client()
            job_id = f"early-{uuid.uuid4().hex[:6]}"
            await cancel_job(bus, job_id, "never mind")
            await asyncio.sleep(0.3)
            result = await fed.run_job(
                "Chest pain: what to do?", JobOptions(max_proposers=1, refine_rounds=0), job_id=job_id
            )
            return result, sum(b.call_count for b in factory.backends.values())

    result, calls = run(main())
    assert result.status == "canceled" and result.failure_reason == "never mind"
    assert calls == 0 and result.usage.calls == 0


def test_synthesis_goes_to_an_agent_that_declares_the_kind_else_to_a_draft(mosquitto, tmp_path, embedder) -> None:
    """LLM synthesis (merge): an agent whose spec lists the skill `synthesise` gets a
    `synthesise` task with the node results; without one, the best writer gets a draft (as before)."""
    from fabric.orchestrator.synthesis import INSTRUCTIONS

    settings = fed_settings(mosquitto, tmp_path)
    declaring = [s if s.id != "writer" else s.model_copy(update={"skills": [*s.skills, "synthesise"]}) for s in SPECS]

    async def one(specs, factory) -> JobResult:
        async with LocalFederation(settings, specs, backend_factory=factory, embedder=embedder) as fed:
            options = JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=0, synth_mode="merge")
            return await fed.run_job("Chest pain: what to do?", options)

    def synthesis_prompts(factory) -> list[str]:
        users = [c.messages[-1].content for b in factory.backends.values() for c in b.calls]
        return [u for u in users if "Expert results, in dependency order" in u]

    with_kind, without = backend_factory(), backend_factory()
    declared = run(one(declaring, with_kind))
    fallback = run(one(SPECS, without))
    for result in (declared, fallback):
        assert result.status == "completed", result.failure_reason
        assert result.usage.synth_mode == "merge" and len(result.dag.nodes) == 4
    (as_kind,) = synthesis_prompts(with_kind)
    (as_draft,) = synthesis_prompts(without)
    assert as_kind.startswith(INSTRUCTIONS["merge"])  # the worker's synthesise prompt: instructions first
    assert as_draft.startswith("Question: ") and INSTRUCTIONS["merge"] in as_draft  # the draft fallback's
    assert len(with_kind.backends["writer"].calls) == 1  # the declaring agent wrote it


def test_foa_job_cancel_from_the_command_line(mosquitto, tmp_path, embedder) -> None:
    settings = fed_settings(mosquitto, tmp_path)
    env = os.environ | {"FOA_BROKER_URL": mosquitto.url, "FOA_DATA_DIR": str(tmp_path / "cli")}
    factory = backend_factory(latency_s=2.0)

    async def main() -> tuple[JobResult, dict[str, object], int]:
        async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=embedder) as fed:
            job_id = f"cli-cancel-{uuid.uuid4().hex[:6]}"
            submitted = fed.run_job("Chest pain: what to do?", JobOptions(max_proposers=1), job_id=job_id)
            job = asyncio.create_task(submitted)
            await asyncio.sleep(1.0)
            cmd = [sys.executable, "-m", "fabric.cli", "job", "cancel", job_id, "--reason", "from the CLI", "--json"]
            proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            return await asyncio.wait_for(job, 30), json.loads(out), proc.returncode or 0

    result, printed, code = run(main())
    assert result.status == "canceled" and result.failure_reason == "from the CLI"
    assert code == 0 and printed == {"job_id": result.job_id, "status": "canceled", "failure_reason": "from the CLI"}
