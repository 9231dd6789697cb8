"""A2A agents join through the gateway: the example A2A server (a2a-sdk, a real subprocess) is
routed to and works in jobs of a real federation (broker, router, orchestrator); its card
changes → new VCV version; it dies → offline, and back online when it answers; A2A task states
map to FoA outcomes; bad cards are clear errors and the federation keeps serving."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from a2a.client import create_client
from a2a.types import GetTaskRequest, TaskState

from agents.sdk import TaskFailed
from fabric.federation import LocalFederation
from fabric.interop.a2a_gateway import A2AGateway
from fabric.interop.specs import A2AConfig, GatewayError, GatewaySpec
from fabric.messages import JobOptions, RouteQuery, TaskRequest
from fabric.registry import Registry
from router.client import RouterClient
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.interop_support import a2a_example, free_port, process
from tests.scripted_federation import SPECS, backend_factory

WRITER = [s for s in SPECS if s.id == "writer"]


def gateway_spec(url: str, **config: object) -> GatewaySpec:
    return GatewaySpec(id="echo-agent", policies=["public"], a2a=A2AConfig(url=url, **config))  # type: ignore[arg-type]


def draft_task(text: str, deadline_s: float | None = None) -> TaskRequest:
    return TaskRequest(
        task_id=f"t-{time.monotonic_ns()}",
        task_kind="draft",
        agent_id="echo-agent",
        input={"question": text, "subtask": text},
        deadline_at=None if deadline_s is None else time.time() + deadline_s,
    )


def test_an_a2a_agent_joins_plans_and_drafts_in_a_job(mosquitto, tmp_path, embedder) -> None:
    """Its card becomes a VCV (skills from ids and tags), the router ranks it first for its
    kind of task, and a job uses it as the proposer (its JSON plan) and as the drafter."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0)

    async def main() -> None:
        async with LocalFederation(settings, WRITER, backend_factory=backend_factory(), embedder=embedder) as fed:
            gateway = A2AGateway(url, settings, spec=gateway_spec(url), broker=fed.address, embedder=embedder)
            await gateway.start()
            try:
                assert gateway.agent is not None and gateway.agent.vcv is not None
                vcv = gateway.agent.vcv
                assert {"echo", "word stats", "planning", "repeat"} <= set(vcv.skills)
                assert "Repeats the text" in vcv.description and vcv.policies == ["public"]
                bus = await fed.client()
                routed = await RouterClient(bus).route(
                    RouteQuery(text="Repeat this sentence back to me unchanged", top_k=2, abstain=False)
                )
                assert routed.matches[0].agent_id == "echo-agent", routed.matches
                result = await fed.run_job(
                    "Repeat back unchanged: the quick brown fox",
                    # planned, not routed directly: the A2A agent's planning skill is the point
                    JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=0, plan="always"),
                    timeout=120,
                )
                assert result.status == "completed", result.failure_reason
                assert [n.proposers for n in result.dag.nodes] == [["echo-agent"], ["echo-agent"]]  # its plan
                drafted_by = {m.agent_id for ms in result.assignments.values() for m in ms}
                assert "echo-agent" in drafted_by
                assert (
                    "Write the answer to: Repeat back unchanged: the quick brown fox" in result.answer
                )  # echoed subtask
            finally:
                await gateway.stop()

    with a2a_example(port, "--planner"):
        asyncio.run(main())


def test_card_change_bumps_the_version_and_a_dead_agent_goes_offline_then_returns(
    mosquitto, tmp_path, embedder
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = tmp_path / "extra-skill.json"
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False) as fed:
            registry = Registry()
            await registry.attach(await fed.client())
            spec = gateway_spec(url, refresh_s=0.3, offline_after=2)
            gateway = A2AGateway(url, settings, spec=spec, broker=fed.address, embedder=embedder)
            with a2a_example(port, "--extra-skill-file", str(extra)):
                await gateway.start()
                await eventually(
                    lambda: (e := registry.get("echo-agent")) is not None and e.status == "online", what="online"
                )
                first = registry.get("echo-agent").vcv.version  # type: ignore[union-attr]
                extra.write_text(
                    json.dumps(
                        {
                            "id": "shout",
                            "name": "Shout",
                            "description": "Repeats text in capitals",
                            "tags": ["uppercase"],
                            "examples": ["shout this"],
                        }
                    )
                )
                await eventually(lambda: registry.get("echo-agent").vcv.version == first + 1, what="a new version")  # type: ignore[union-attr]
                assert "shout" in registry.get("echo-agent").vcv.skills  # type: ignore[union-attr]
            # the server is gone: two failed reads later the agent is offline
            await eventually(lambda: registry.agents["echo-agent"].status == "offline", timeout=15, what="offline")
            assert gateway.misses >= 2 and "cannot read the agent card" in (gateway.last_error or "")
            with a2a_example(port, "--extra-skill-file", str(extra)):
                await eventually(
                    lambda: registry.agents["echo-agent"].status == "online", timeout=15, what="back online"
                )
                assert registry.get("echo-agent").vcv.version == first + 1  # type: ignore[union-attr]  # same card, same version
            await gateway.stop()

    asyncio.run(main())


def test_a2a_task_states_map_to_foa_outcomes_and_a_deadline_cancels_the_task(mosquitto, tmp_path, embedder) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False, with_router=False) as fed:
            for stream in (False, True):
                gateway = A2AGateway(
                    url, settings, spec=gateway_spec(url, stream=stream), broker=fed.address, embedder=embedder
                )
                await gateway.start()
                try:
                    ok = await gateway.draft(draft_task("hello federation"))
                    assert ok["answer"] == "hello federation" and not ok["exact"]
                    # a data artifact is a result: exact, its numbers in the answer as JSON
                    counted = await gateway.draft(draft_task("count: one two three"))
                    assert counted["exact"] and counted["answer"].startswith("3 words")
                    assert '{"characters": 14, "sentences": 1, "words": 3}' in counted["answer"]
                    for text, expected in [
                        ("fail:disk full", "ended the task failed: disk full"),
                        ("reject:not my job", "ended the task rejected: not my job"),
                        ("ask:which patient?", "ended the task input-required: which patient?"),
                    ]:
                        with pytest.raises(TaskFailed, match=expected):
                            await gateway.draft(draft_task(text))
                    with pytest.raises(TaskFailed, match="did not finish within") as info:
                        await gateway.draft(draft_task("sleep:30", deadline_s=1.0))
                    if stream:  # the stream gave the task id, so the A2A task was canceled on the server
                        remote_id = str(info.value).split("its task ", 1)[1].split(" ", 1)[0]
                        client = await create_client(url)
                        remote = await client.get_task(GetTaskRequest(id=remote_id))
                        await client.close()
                        assert remote.status.state == TaskState.TASK_STATE_CANCELED
                    with pytest.raises(TaskFailed, match="declines decompose"):  # no planning skill without --planner
                        await gateway.decompose(
                            TaskRequest(
                                task_id="d1",
                                task_kind="decompose",
                                agent_id="echo-agent",
                                input={"question": "plan something"},
                            )
                        )
                finally:
                    await gateway.stop()

    with a2a_example(port):
        asyncio.run(main())


def test_bad_cards_are_clear_errors_and_the_federation_keeps_serving(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path)
    site = tmp_path / "site"
    (site / "bad" / ".well-known").mkdir(parents=True)
    (site / "bad" / ".well-known" / "agent-card.json").write_text("{ this is not json")
    (site / "empty" / ".well-known").mkdir(parents=True)
    (site / "empty" / ".well-known" / "agent-card.json").write_text(
        json.dumps(
            {
                "name": "No skills",
                "description": "has nothing",
                "version": "1",
                "skills": [],
                "supportedInterfaces": [
                    {"url": "http://127.0.0.1:1/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
                ],
            }
        )
    )
    port = free_port()
    static = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)]

    async def main() -> None:
        async with LocalFederation(
            settings, WRITER, backend_factory=backend_factory(), embedder=embedder, with_orchestrator=False
        ) as fed:
            base = f"http://127.0.0.1:{port}"
            cases = [
                (f"http://127.0.0.1:{free_port()}", "cannot read the agent card"),
                (f"{base}/bad", "cannot read the agent card"),
                (f"{base}/empty", "declares no skills"),
            ]
            for url, message in cases:
                gateway = A2AGateway(url, settings, spec=gateway_spec(url), broker=fed.address, embedder=embedder)
                with pytest.raises(GatewayError, match=message):
                    await gateway.start()
            routed = await RouterClient(await fed.client()).route(RouteQuery(text="summarise this text", abstain=False))
            assert routed.matches and routed.matches[0].agent_id == "writer"

    with process(static, f"http://127.0.0.1:{port}/"):
        asyncio.run(main())


def test_a_spec_folder_mixes_native_and_a2a_agents(mosquitto, tmp_path, embedder) -> None:
    """`foa up --specs DIR`: an agent spec with an `a2a:` entry starts a gateway next to the native agents."""
    from agents.spec import load_specs

    port = free_port()
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "writer.yaml").write_text("id: writer\ndescription: Summarising and editing\npolicies: [public]\n")
    (folder / "echo.yaml").write_text(f"id: echo-agent\npolicies: [public]\na2a: {{url: 'http://127.0.0.1:{port}'}}\n")
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        specs = load_specs(folder)
        async with LocalFederation(
            settings, specs, backend_factory=backend_factory(), embedder=embedder, with_orchestrator=False
        ) as fed:
            assert [a.agent_id for a in fed.agents] == ["writer"] and len(fed.gateways) == 1
            routed = await RouterClient(await fed.client()).route(
                RouteQuery(text="echo hello world", top_k=2, abstain=False)
            )
            assert routed.matches[0].agent_id == "echo-agent"

    with a2a_example(port):
        asyncio.run(main())


def test_foa_agent_a2a_and_foa_agent_mcp_join_as_processes_and_leave_on_sigterm(mosquitto, tmp_path, embedder) -> None:
    """The commands themselves: `foa agent a2a URL --id` and `foa agent mcp --stdio CMD` as
    subprocesses join the broker's federation; SIGTERM takes them offline."""
    import signal
    import subprocess

    from tests.interop_support import MCP_EXAMPLE, env_with

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(mosquitto.url, tmp_path)
    env = env_with(FOA_BROKER_URL=mosquitto.url, FOA_DATA_DIR=str(tmp_path / "cli"))
    commands = {
        "cli-echo": [sys.executable, "-m", "fabric.cli", "agent", "a2a", url, "--id", "cli-echo"],
        "cli-tools": [
            sys.executable,
            "-m",
            "fabric.cli",
            "agent",
            "mcp",
            "--stdio",
            f"{sys.executable} {MCP_EXAMPLE}",
            "--id",
            "cli-tools",
        ],
    }

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False) as fed:
            registry = Registry()
            await registry.attach(await fed.client())
            procs = {name: subprocess.Popen(argv, env=env, stderr=subprocess.PIPE) for name, argv in commands.items()}
            try:
                for name in commands:
                    await eventually(
                        lambda n=name: (e := registry.get(n)) is not None and e.status == "online",  # type: ignore[misc]
                        timeout=90,
                        what=f"{name} online",
                    )
                assert "echo" in registry.get("cli-echo").vcv.skills  # type: ignore[union-attr]
                assert "weekday" in registry.get("cli-tools").vcv.skills  # type: ignore[union-attr]
            finally:
                for proc in procs.values():
                    proc.send_signal(signal.SIGTERM)
                for proc in procs.values():
                    await asyncio.to_thread(proc.wait, 20)
            for name in commands:
                await eventually(lambda n=name: registry.agents[n].status == "offline", what=f"{name} offline")  # type: ignore[misc]
            assert all(p.returncode == 0 for p in procs.values()), [
                p.stderr.read()[-500:] for p in procs.values() if p.stderr
            ]

    with a2a_example(port):
        asyncio.run(main())


def test_a_signed_card_is_verified_and_a_tampered_one_refused(mosquitto, tmp_path, embedder) -> None:
    """Cards signed with a2a-sdk's signer (ES256, JWS over the canonical card) verify with the key
    named in the spec; the same card changed after signing is refused."""
    from a2a.utils.signing import create_agent_card_signer
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from google.protobuf.json_format import MessageToDict

    from examples.a2a_echo_agent import build_card

    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "card-key.pem"
    pem.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = create_agent_card_signer(private, {"kid": "k1", "alg": "ES256", "jku": None, "typ": "JOSE"})
    port = free_port()
    site = tmp_path / "site"
    for name, tamper in (("good", False), ("tampered", True)):
        card = MessageToDict(
            signer(build_card(f"http://127.0.0.1:{port}/{name}", planner=False, extra_skill_file=None))
        )
        if tamper:
            card["description"] = "An agent that now claims to do anything."
        (site / name / ".well-known").mkdir(parents=True)
        (site / name / ".well-known" / "agent-card.json").write_text(json.dumps(card))
    settings = make_settings(mosquitto.url, tmp_path)
    static = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)]

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False, with_router=False) as fed:
            keys = {"k1": str(pem)}
            good = f"http://127.0.0.1:{port}/good"
            gateway = A2AGateway(
                good, settings, spec=gateway_spec(good, card_keys=keys), broker=fed.address, embedder=embedder
            )
            await gateway.start()
            assert gateway.card is not None and len(gateway.card.signatures) == 1
            await gateway.stop()
            bad = f"http://127.0.0.1:{port}/tampered"
            gateway = A2AGateway(
                bad, settings, spec=gateway_spec(bad, card_keys=keys), broker=fed.address, embedder=embedder
            )
            with pytest.raises(GatewayError, match="signature that does not verify"):
                await gateway.start()
            unknown = A2AGateway(good, settings, spec=gateway_spec(good), broker=fed.address, embedder=embedder)
            with pytest.raises(GatewayError, match="no key to verify the card signature"):
                await unknown.start()

    with process(static, f"http://127.0.0.1:{port}/"):
        asyncio.run(main())


def test_a_dead_a2a_agent_fails_its_draft_and_the_node_is_reassigned(mosquitto, tmp_path, embedder) -> None:
    """Killed between two card checks (still `online`), the A2A agent's draft fails with a clear
    error; the orchestrator re-assigns the node to a native agent and the job completes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0)

    async def main() -> None:
        async with LocalFederation(settings, WRITER, backend_factory=backend_factory(), embedder=embedder) as fed:
            gateway = A2AGateway(
                url, settings, spec=gateway_spec(url, refresh_s=600), broker=fed.address, embedder=embedder
            )
            with a2a_example(port) as server:
                await gateway.start()
                server.kill()
                await asyncio.to_thread(server.wait)
            try:
                result = await fed.run_job(
                    "Repeat back unchanged: the quick brown fox",
                    JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=0),
                    timeout=120,
                )
                assert result.status == "completed", result.failure_reason
                assert [m.agent_id for ms in result.assignments.values() for m in ms] == ["echo-agent"]
                failures = " ".join(result.usage.failures)
                assert "draft n1 by echo-agent" in failures and "failed the request" in failures
                assert "writer on" in result.answer  # the scripted writer's draft, after the reassignment
            finally:
                await gateway.stop()

    asyncio.run(main())
