"""The router service over the real Bus and embedder: its logic on the in-process broker, the
`foa route` CLI (a subprocess) against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from fabric import topics
from fabric.bus import Bus, RemoteError
from fabric.messages import AgentStatus, AssignQuery, AuditEvent, Reputation, RouteQuery, SubtaskQuery
from fabric.settings import Settings
from router.client import RouterClient
from router.service import RouterService
from tests.fabric_helpers import body
from tests.router_support import AGENTS, make_vcv

pytestmark = pytest.mark.timeout(120)


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def clear_retained(bus: Bus, agent_ids: list[str]) -> None:
    for agent_id in agent_ids:
        await bus.publish(topics.agent_vcv(agent_id), None, retain=True)
        await bus.publish(topics.agent_status(agent_id), None, retain=True)
        await bus.publish(topics.reputation(agent_id), None, retain=True)


def test_service_routes_while_vcvs_stream_in(memory_settings: Settings, embedder) -> None:
    settings = memory_settings

    async def main() -> None:
        ids = [f"svc-{a}" for a in AGENTS]
        async with (
            Bus(settings, "test-agents", persistent=False) as agents,
            Bus(settings, "test-router", persistent=False) as rbus,
            Bus(settings, "test-client", persistent=False) as cbus,
        ):
            service = RouterService(
                settings,
                rbus,
                embedder,
                settle_s=0.2,
                verify_vcv=lambda v: "bad signature" if v.agent_id == "svc-forged" else None,
            )
            await service.start()
            client = RouterClient(cbus, timeout=5.0)
            audits: list[AuditEvent] = []
            await cbus.subscribe(topics.POLICY_ENFORCEMENT, lambda m: audits.append(body(m)), body_types=AuditEvent)
            try:
                # stream VCVs in and query between them: each answer reflects what has arrived
                for n, (agent_id, text) in enumerate(AGENTS.items(), 1):
                    policies = ["hipaa"] if agent_id == "derm" else []
                    await agents.publish(
                        topics.agent_vcv(f"svc-{agent_id}"),
                        make_vcv(embedder, f"svc-{agent_id}", text, policies=policies),
                        retain=True,
                    )
                    await agents.publish(
                        topics.agent_status(f"svc-{agent_id}"),
                        AgentStatus(agent_id=f"svc-{agent_id}", status="online"),
                        retain=True,
                    )
                    res = await client.route(RouteQuery(text=text, top_k=3, abstain=False))
                    assert res.matches, f"no match after {n} agents"
                    assert len(res.matches) == min(3, n)
                assert len(service.index) == len(AGENTS)
                res = await client.route(RouteQuery(text="my ECG shows arrhythmia", top_k=1, abstain=False))
                assert res.matches[0].agent_id == "svc-cardio"
                assert set(res.matches[0].factors) >= {
                    "sim",
                    "lexical",
                    "policy",
                    "skills",
                    "resources",
                    "spec",
                    "reputation",
                }

                # offline -> excluded at once; online -> back
                await agents.publish(
                    topics.agent_status("svc-cardio"), AgentStatus(agent_id="svc-cardio", status="offline"), retain=True
                )
                await wait_for(lambda: not column(service, "online")[service.index.rows["svc-cardio"]])
                res = await client.route(RouteQuery(text="my ECG shows arrhythmia", top_k=12, abstain=False))
                assert "svc-cardio" not in [m.agent_id for m in res.matches]
                await agents.publish(
                    topics.agent_status("svc-cardio"), AgentStatus(agent_id="svc-cardio", status="online"), retain=True
                )
                await wait_for(lambda: bool(column(service, "online")[service.index.rows["svc-cardio"]]))

                # reputation flows into α
                await agents.publish(
                    topics.reputation("svc-math"), Reputation(agent_id="svc-math", score=1.0), retain=True
                )
                await wait_for(lambda: column(service, "reputation")[service.index.rows["svc-math"]] == 1.0)
                res = await client.route(RouteQuery(text="integrate x squared", top_k=1, abstain=False))
                assert res.matches[0].factors["reputation"] == pytest.approx(1.25)

                # policy gate: the blocked top agent produces an audit event
                res = await client.route(
                    RouteQuery(text="what is this rash on my skin", top_k=1, policies=["pii"], abstain=False)
                )
                assert res.matches == []
                res = await client.route(
                    RouteQuery(text="what is this rash on my skin", top_k=1, policies=["hipaa"], abstain=False)
                )
                assert res.matches[0].agent_id == "svc-derm"
                res = await client.route(
                    RouteQuery(text="what is this rash on my skin", top_k=1, skills=["dermoscopy"], abstain=False)
                )
                await wait_for(lambda: any(a.agent_id == "svc-derm" and a.gate == "skills" for a in audits))

                # agent left: empty retained payload -> tombstone
                await agents.publish(topics.agent_vcv("svc-poetry"), None, retain=True)
                await wait_for(lambda: "svc-poetry" not in service.index)

                # refused VCVs: other model, forged (verify hook), wrong topic
                await agents.publish(
                    topics.agent_vcv("svc-alien"), make_vcv(embedder, "svc-alien", "x", model="other-model")
                )
                await agents.publish(topics.agent_vcv("svc-forged"), make_vcv(embedder, "svc-forged", "y"))
                await agents.publish(topics.agent_vcv("svc-thief"), make_vcv(embedder, "svc-math", "z", version=9))
                await wait_for(lambda: service.counters.rejected_vcvs >= 3)
                assert "svc-alien" not in service.index and "svc-forged" not in service.index
                assert service.index.version_of("svc-math") == 1

                # assignment with capacity
                resp = await client.assign(
                    AssignQuery(
                        subtasks=[
                            SubtaskQuery(subtask_id="s1", text="write python code for a data pipeline", max_agents=2),
                            SubtaskQuery(subtask_id="s2", text="translate the report to German"),
                        ]
                    )
                )
                assert set(resp.assignments) == {"s1", "s2"} and resp.solver in ("milp", "uncontended")
                assert 1 <= len(resp.assignments["s1"]) <= 2 and len(resp.assignments["s2"]) == 1
                assert resp.assignments["s2"][0].agent_id == "svc-translate"
            finally:
                await service.stop()
                await clear_retained(agents, [*ids, "svc-alien", "svc-forged", "svc-thief"])

    asyncio.run(main())


def column(service: RouterService, name: str) -> np.ndarray:
    """A column of the router's agent table (AgentTable sets them by name, so by name here)."""
    return np.asarray(getattr(service.index.table, name))


def unchecked(**changes: object) -> RouteQuery:
    """A query the client-side model would refuse: the service must refuse it too."""
    return RouteQuery.model_construct(**(RouteQuery(text="hello", abstain=True).model_dump() | changes))


def test_bad_queries_get_clear_errors(memory_settings: Settings, embedder) -> None:
    settings = memory_settings

    async def main() -> None:
        async with (
            Bus(settings, "test-router2", persistent=False) as rbus,
            Bus(settings, "test-client2", persistent=False) as cbus,
        ):
            service = RouterService(settings, rbus, embedder, settle_s=0.1)
            await service.start()
            client = RouterClient(cbus, timeout=5.0)
            try:
                cases = [
                    (unchecked(text="   "), "bad_request", "empty"),
                    (RouteQuery(text="hello", policies=["secret-clearance"]), "unknown_policy", "secret-clearance"),
                    (unchecked(max_cost=-1.0), "bad_request", "max_cost"),
                    (unchecked(top_k=0), "bad_request", "top_k"),
                ]
                for query, code, words in cases:
                    with pytest.raises(RemoteError) as err:
                        await client.route(query)
                    assert err.value.code == code and words in str(err.value), str(err.value)
                # a known flag nobody has is fine: an empty answer, not an error
                res = await client.route(RouteQuery(text="hello", policies=["hipaa"], abstain=False))
                assert res.matches == []
                assert service.counters.errors == len(cases)
            finally:
                await service.stop()

    asyncio.run(main())


def test_cli_route_json_against_running_router(settings: Settings, embedder) -> None:
    async def main() -> None:
        async with (
            Bus(settings, "test-agents3", persistent=False) as agents,
            Bus(settings, "test-router3", persistent=False) as rbus,
        ):
            service = RouterService(settings, rbus, embedder, settle_s=0.1)
            await service.start()
            try:
                for agent_id in ("sql", "python", "tax"):
                    await agents.publish(
                        topics.agent_vcv(f"cli-{agent_id}"),
                        make_vcv(embedder, f"cli-{agent_id}", AGENTS[agent_id]),
                        retain=True,
                    )
                await wait_for(lambda: len(service.index) >= 3)
                env = {
                    **os.environ,
                    "FOA_BROKER_URL": settings.broker_url or "",
                    "FOA_DATA_DIR": str(settings.data_dir),
                }
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "fabric.cli",
                    "route",
                    "write and optimise SQL queries for my PostgreSQL database",
                    "--top-k",
                    "2",
                    "--json",
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                data = json.loads(out)
                assert data["abstained"] is False
                assert [m["agent_id"] for m in data["matches"]][0] == "cli-sql"
                assert set(data["matches"][0]) >= {"agent_id", "version", "score", "factors"}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "fabric.cli",
                    "route",
                    "--calibrate",
                    "--json",
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                cal = json.loads(out)
                assert 0 < cal["threshold"] < 1.5 and cal["agents"] >= 3
            finally:
                await service.stop()
                await clear_retained(agents, ["cli-sql", "cli-python", "cli-tax"])
        env = {k: v for k, v in os.environ.items() if k != "FOA_BROKER_URL"}
        done = subprocess.run(
            [sys.executable, "-m", "fabric.cli", "route", "hello"], env=env, capture_output=True, text=True
        )
        assert done.returncode != 0 and "FOA_BROKER_URL" in done.stderr

    asyncio.run(main())


def test_queries_route_by_the_vector_they_carry(memory_settings: Settings, embedder) -> None:
    """A query that carries its text's vector (as the orchestrator sends) is routed by it, with the
    answer the router gives when it embeds the text itself; a vector of another model is ignored
    and the text embedded; one of this model with the wrong size or length is refused."""
    settings = memory_settings

    async def main() -> None:
        async with (
            Bus(settings, "test-agents3", persistent=False) as agents,
            Bus(settings, "test-router3", persistent=False) as rbus,
            Bus(settings, "test-client3", persistent=False) as cbus,
        ):
            ids = [f"vec-{a}" for a in AGENTS]
            for agent_id, text in AGENTS.items():
                await agents.publish(
                    topics.agent_vcv(f"vec-{agent_id}"), make_vcv(embedder, f"vec-{agent_id}", text), retain=True
                )
            service = RouterService(settings, rbus, embedder, settle_s=0.1, auto_calibrate=False)
            await service.start()
            client = RouterClient(cbus, timeout=5.0)
            model = embedder.model_name
            text = "my ECG shows arrhythmia"
            vec = embedder.embed([text])[0]
            try:
                await wait_for(lambda: len(service.index) == len(AGENTS))
                plain = await client.route(RouteQuery(text=text, top_k=3, abstain=False))
                assert service.counters.by_vector == 0
                carried = await client.route(
                    RouteQuery(text=text, top_k=3, abstain=False, vector=vec, embedding_model=model)
                )
                assert service.counters.by_vector == 1
                assert [m.agent_id for m in carried.matches] == [m.agent_id for m in plain.matches]
                assert [m.score for m in carried.matches] == pytest.approx([m.score for m in plain.matches])

                other = await client.route(
                    RouteQuery(text=text, top_k=3, abstain=False, vector=-vec, embedding_model="other-model")
                )
                assert service.counters.by_vector == 1  # ignored: the text was embedded
                assert [m.agent_id for m in other.matches] == [m.agent_id for m in plain.matches]

                for bad, words in ((vec[:10], "dimensions"), (vec * 2, "not L2-normalised")):
                    with pytest.raises(RemoteError) as err:
                        await client.route(RouteQuery(text=text, abstain=False, vector=bad, embedding_model=model))
                    assert err.value.code == "bad_request" and words in str(err.value), str(err.value)

                subtasks = ["write python code for a data pipeline", "translate the report to German"]
                svecs = embedder.embed(subtasks)
                resp = await client.assign(
                    AssignQuery(
                        subtasks=[
                            SubtaskQuery(subtask_id="s1", text=subtasks[0], vector=svecs[0]),
                            SubtaskQuery(subtask_id="s2", text=subtasks[1]),  # no vector: embedded here
                        ],
                        embedding_model=model,
                    )
                )
                assert service.counters.by_vector == 2
                assert resp.assignments["s2"][0].agent_id == "vec-translate"
                # a subtask with no text is refused before any vector of the query is read or embedded
                with pytest.raises(RemoteError) as err:
                    await client.assign(
                        AssignQuery(
                            subtasks=[
                                SubtaskQuery(subtask_id="s1", text=subtasks[0], vector=svecs[0]),
                                SubtaskQuery(subtask_id="s3", text="  "),
                            ],
                            embedding_model=model,
                        )
                    )
                assert err.value.code == "bad_request" and "empty text" in str(err.value), str(err.value)
                assert service.counters.by_vector == 2
            finally:
                await service.stop()
                await clear_retained(agents, ids)

    asyncio.run(main())
