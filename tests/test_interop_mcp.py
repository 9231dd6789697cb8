"""MCP servers join through the gateway: the example MCP server (mcp SDK, a real stdio
subprocess) becomes an agent of a real federation; a job whose subtask needs a tool returns the
tool's exact result; tool errors and arguments that never fit the schema are failures with clear
messages; tools/list_changed is a new VCV version; servers that exit or hang at start are clear
errors, and the federation keeps serving.

Where a tool needs structured arguments the gateway's LLM is a ScriptedLLM (this tests the
gateway's logic: picking, validation, retries), whose answers depend on the prompt."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from agents.sdk import TaskFailed
from fabric.federation import LocalFederation
from fabric.interop.mcp_gateway import MCPGateway
from fabric.interop.specs import GatewayError, GatewaySpec, MCPConfig
from fabric.llm.base import ChatMessage
from fabric.llm.scripted import ScriptedLLM
from fabric.messages import JobOptions, RouteQuery, TaskRequest
from fabric.registry import Registry
from router.client import RouterClient
from tests.conftest import make_settings
from tests.fabric_helpers import eventually
from tests.interop_support import MCP_EXAMPLE

STDIO = f"{sys.executable} {MCP_EXAMPLE}"


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """The garbage of a finished federation (closed loops, MCP sessions) is collected here, not
    at some later allocation: on CPython 3.11 a finalizer that formats a traceback inside another
    `ast.parse` (pytest's assertion rewriting at the end of the session) corrupts that parse's
    shared recursion counter ("SystemError: AST constructor recursion depth mismatch", seen
    once this module had seven federation tests)."""
    yield
    gc.collect()


def argument_writer(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
    """Arguments as a careful model would write them for the example's dose and unit tools."""
    if (schema or {}).get("title") == "ToolChoice":
        return json.dumps({"tool": "dose_for_weight"})
    task = "\n".join(m.content for m in messages)
    if "dose_for_weight" in (schema or {}).get("title", ""):
        weight = -3 if "-3 kg" in task else 12
        return json.dumps({"weight_kg": weight, "mg_per_kg": 15})
    if "convert_units" in (schema or {}).get("title", ""):
        return json.dumps({"value": 10, "from_unit": "lb", "to_unit": "kg"})
    raise AssertionError(f"unexpected schema {schema}")


def example_gateway(fed: LocalFederation, settings: Any, embedder: Any, backend: Any, retries: int = 2) -> MCPGateway:
    """The example MCP server (a stdio subprocess) as the agent `tools`, arguments by `backend`."""
    config = MCPConfig(stdio=STDIO, argument_retries=retries)
    spec = GatewaySpec(id="tools", mcp=config)
    return MCPGateway(config, settings, spec=spec, backend=backend, broker=fed.address, embedder=embedder)


def task(text: str) -> TaskRequest:
    return TaskRequest(
        task_id=f"t-{time.monotonic_ns()}",
        task_kind="draft",
        agent_id="tools",
        input={"question": text, "subtask": text},
        deadline_at=time.time() + 30,
    )


def test_an_mcp_server_joins_and_a_job_returns_the_tools_exact_result(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0)

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder) as fed:
            gateway = example_gateway(fed, settings, embedder, ScriptedLLM(argument_writer))
            await gateway.start()
            try:
                vcv = gateway.agents["tools"].vcv
                assert vcv is not None and {"convert units", "dose for weight", "add days", "weekday"} <= set(
                    vcv.skills
                )
                assert "clinical arithmetic" in vcv.description  # the server's instructions
                # weekday takes one string: no LLM involved, the subtask is the argument
                result = await fed.run_job(
                    "What day of the week is 2024-03-01?",
                    JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=0),
                    timeout=120,
                )
                assert result.status == "completed", result.failure_reason
                assert "2024-03-01 is a Friday" in result.answer
                assert {m.agent_id for ms in result.assignments.values() for m in ms} == {"tools"}
                # structured arguments written under the tool's schema; the answer is the tool's result
                out, _usage = await gateway.draft(task("Dose for a child of 12 kg at 15 mg per kg body weight"), None)
                assert out["tool"] == "dose_for_weight" and out["structured"] == {"dose_mg": 180.0, "capped": False}
                assert json.loads(out["answer"]) == {"dose_mg": 180.0, "capped": False}
                out, _usage = await gateway.draft(task("Convert 10 lb to kilograms"), None)
                assert out["tool"] == "convert_units" and out["answer"] == "4.535924"
            finally:
                await gateway.stop()

    asyncio.run(main())


def test_a_time_zone_tool_gets_the_zone_not_the_subtask_and_its_errors_are_re_asked(
    mosquitto, tmp_path, embedder
) -> None:
    """Issue 19: current_time(timezone: str) is one string parameter, but not free text. The
    router ranks it first, the zone is read from the text (no LLM), the job completes; an
    `Invalid timezone` error result goes back to the LLM, and after argument_retries re-asks the
    task fails with the tool's own message."""
    settings = make_settings(mosquitto.url, tmp_path, request_timeout_s=10.0)
    misspeller = ScriptedLLM(lambda messages, schema: json.dumps({"timezone": "Tokio"}))

    def corrects(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        told = re.search(r"The tool answered: .*Invalid timezone", messages[-1].content) is not None
        return json.dumps({"timezone": "Asia/Tokyo" if told else "Tokio"})

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder) as fed:
            gateway = example_gateway(fed, settings, embedder, misspeller)
            await gateway.start()
            try:
                question = "What is the current time in Asia/Tokyo?"
                routed = await RouterClient(await fed.client()).route(RouteQuery(text=question, abstain=False))
                assert routed.matches and routed.matches[0].agent_id == "tools"
                result = await fed.run_job(
                    question, JobOptions(max_proposers=1, agents_per_node=1, refine_rounds=0), timeout=120
                )
                assert result.status == "completed", result.failure_reason
                assert "+09:00 (Asia/Tokyo)" in result.answer
                out, usage = await gateway.draft(task(question), None)
                assert out["tool"] == "current_time" and out["arguments"] == {"timezone": "Asia/Tokyo"}
                assert out["exact"] is True and usage.calls == 0 and misspeller.call_count == 0
                out, _ = await gateway.draft(task("What time is it in Tokyo?"), ["current_time"])
                assert out["arguments"] == {"timezone": "Asia/Tokyo"}
                # the text names no zone it can read: the LLM writes one, the tool refuses it
                failures = gateway.failures
                refused = r"current_time failed \(after 3 calls\): .*Invalid timezone 'Tokio'"
                with pytest.raises(TaskFailed, match=refused):
                    await gateway.draft(task("What is the current time in Tokio?"), ["current_time"])
                assert misspeller.call_count == 3 and gateway.failures == failures + 3
                assert re.search(
                    r"The tool answered: .*Invalid timezone 'Tokio'", misspeller.calls[-1].messages[-1].content
                )
                gateway.backend = ScriptedLLM(corrects)
                out, usage = await gateway.draft(task("What is the current time in Tokio?"), ["current_time"])
                assert out["arguments"] == {"timezone": "Asia/Tokyo"} and "+09:00" in out["answer"]
                assert usage.calls == 2
            finally:
                await gateway.stop()

    asyncio.run(main())


def test_tool_errors_and_arguments_that_never_fit_are_failures_with_the_message(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path)
    never_fits = ScriptedLLM(lambda messages, schema: json.dumps({"weight": "heavy"}))

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False, with_router=False) as fed:
            gateway = example_gateway(fed, settings, embedder, ScriptedLLM(argument_writer))
            await gateway.start()
            try:
                with pytest.raises(
                    TaskFailed, match=r"failed \(after 3 calls\): .*weight_kg must be between 0 and 400 kg, got -3"
                ):  # the text's -3 is refused, re-asked twice (this writer keeps -3), then the tool's message
                    await gateway.draft(task("Dose for a patient of -3 kg at 15 mg per kg"), ["dose_for_weight"])
                with pytest.raises(TaskFailed, match="no ISO date"):
                    await gateway.draft(task("What weekday was it yesterday?"), ["weekday"])
                # near ties between tools: the LLM decides (here it names the dose tool for a unit question)
                gateway.config = gateway.config.model_copy(update={"tie_margin": 1.0})
                chosen, _ = await gateway.pick_tool("Convert 10 lb to kilograms", None)
                assert chosen.name == "dose_for_weight"
                gateway.config = gateway.config.model_copy(update={"tie_margin": 0.0})
                chosen, _ = await gateway.pick_tool("Convert 10 lb to kilograms", None)
                assert chosen.name == "convert_units"  # no tie: similarity alone
                gateway.backend = never_fits
                with pytest.raises(
                    TaskFailed, match="never fit its input schema after 3 attempts; last error: .*required"
                ):
                    await gateway.draft(task("Convert 10 lb to kilograms"), ["convert_units"])
                assert never_fits.call_count == 3
                assert "do not fit the schema" in never_fits.calls[-1].messages[-1].content  # the error fed back
                gateway.backend = None
                with pytest.raises(TaskFailed, match="needs structured arguments and this gateway has no LLM"):
                    await gateway.draft(task("Convert 10 lb to kilograms"), ["convert_units"])
                # what the text states needs no LLM at all
                out, _ = await gateway.draft(task("Dose for 12 kg at 15 mg/kg"), ["dose_for_weight"])
                assert out["arguments"] == {"weight_kg": 12, "mg_per_kg": 15} and out["exact"] is True
                ok, _ = await gateway.draft(task("2024-12-25"), ["weekday"])  # the server still serves
                assert ok["answer"] == "2024-12-25 is a Wednesday"
            finally:
                await gateway.stop()

    asyncio.run(main())


def test_a_call_that_would_drop_a_value_the_task_names_is_not_made(mosquitto, tmp_path, embedder) -> None:
    """The user trials' wrong exact answers. "What weekday is 2025-12-25?" went to a current-time
    tool, which answered today's time: a tool none of whose parameters can hold the date is not
    called at all. "What date is 45 days after 2025-01-10?" went to weekday(text), which answered
    "2025-01-10 is a Friday": a tool whose own parameters the task fills now goes first. (The
    re-ask of an LLM that left a value out: test_tool_arguments.py.)"""
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False, with_router=False) as fed:
            writer = ScriptedLLM(lambda messages, schema: json.dumps({"timezone": "Asia/Tokyo"}))
            gateway = example_gateway(fed, settings, embedder, writer)
            await gateway.start()
            try:
                calls = gateway.calls
                with pytest.raises(
                    TaskFailed, match=r"current_time cannot take 2025-12-25 \(its parameters: timezone\)"
                ):
                    await gateway.draft(task("What weekday is 2025-12-25 in Tokyo?"), ["current_time"])
                assert gateway.calls == calls and writer.call_count == 0  # no call, no LLM
                # any tool: weekday(text) is nearest by similarity (0.51 vs 0.42 for add_days)
                out, usage = await gateway.draft(task("What date is 45 days after 2025-01-10?"), None)
                assert out["tool"] == "add_days" and out["arguments"] == {"date": "2025-01-10", "days": 45}
                assert out["answer"] == "2025-02-24" and usage.calls == 0 and gateway.calls == calls + 1
                out, _ = await gateway.draft(task("What weekday is 2025-12-25?"), None)
                assert out["tool"] == "weekday" and out["answer"] == "2025-12-25 is a Thursday"
            finally:
                await gateway.stop()

    asyncio.run(main())


def test_tools_list_changed_is_a_new_version_and_per_tool_agents_follow(mosquitto, tmp_path, embedder) -> None:
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False, with_router=False) as fed:
            registry = Registry()
            await registry.attach(await fed.client())
            whole = MCPGateway(
                MCPConfig(stdio=STDIO), settings, spec=GatewaySpec(id="tools"), broker=fed.address, embedder=embedder
            )
            per_tool = MCPGateway(
                MCPConfig(stdio=STDIO, per_tool=True),
                settings,
                spec=GatewaySpec(id="t"),
                broker=fed.address,
                embedder=embedder,
            )
            await whole.start()
            await per_tool.start()
            try:
                assert set(per_tool.agents) == {
                    "t.convert-units",
                    "t.dose-for-weight",
                    "t.add-days",
                    "t.weekday",
                    "t.current-time",
                    "t.enable-bmi",
                }
                await eventually(lambda: registry.get("tools") is not None, what="the server's agent")
                assert registry.get("tools").vcv.version == 1  # type: ignore[union-attr]
                for gateway in (whole, per_tool):
                    await gateway.call(gateway.tools["enable_bmi"], {}, None)
                await eventually(lambda: registry.get("tools").vcv.version == 2, what="version 2")  # type: ignore[union-attr]
                assert "bmi" in registry.get("tools").vcv.skills  # type: ignore[union-attr]
                await eventually(lambda: registry.get("t.bmi") is not None, what="the new per-tool agent")
                assert "t.bmi" in per_tool.agents and whole.list_changes == 1
            finally:
                await whole.stop()
                await per_tool.stop()

    asyncio.run(main())


def test_servers_that_exit_or_hang_at_start_are_clear_errors_and_the_federation_keeps_serving(
    mosquitto, tmp_path, embedder
) -> None:
    from tests.scripted_federation import SPECS, backend_factory

    settings = make_settings(mosquitto.url, tmp_path)
    writer = [s for s in SPECS if s.id == "writer"]

    async def main() -> None:
        async with LocalFederation(
            settings, writer, backend_factory=backend_factory(), embedder=embedder, with_orchestrator=False
        ) as fed:
            exits = MCPConfig(stdio=f"{sys.executable} -c 'import sys; sys.exit(3)'", timeout_s=10)
            hangs = MCPConfig(stdio=f"{sys.executable} -c 'import time; time.sleep(60)'", timeout_s=2)
            for config, message in [
                (exits, "failed to start or exited during initialize"),
                (hangs, "did not complete initialize within 2s"),
            ]:
                started = time.monotonic()
                with pytest.raises(GatewayError, match=message):
                    await MCPGateway(config, settings, broker=fed.address, embedder=embedder).start()
                assert time.monotonic() - started < 12
            with pytest.raises(GatewayError, match="did not complete initialize|failed to start"):
                await MCPGateway(
                    MCPConfig(url="http://127.0.0.1:9/mcp", timeout_s=3),
                    settings,
                    broker=fed.address,
                    embedder=embedder,
                ).start()
            routed = await RouterClient(await fed.client()).route(RouteQuery(text="summarise this text", abstain=False))
            assert routed.matches and routed.matches[0].agent_id == "writer"

    asyncio.run(main())


def test_an_mcp_server_that_dies_takes_its_agent_offline(mosquitto, tmp_path, embedder) -> None:
    """Streamable HTTP this time: the example server as its own process; killed, its agent goes offline."""
    from tests.interop_support import free_port, process

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    settings = make_settings(mosquitto.url, tmp_path)

    async def main() -> None:
        async with LocalFederation(settings, [], embedder=embedder, with_orchestrator=False, with_router=False) as fed:
            registry = Registry()
            await registry.attach(await fed.client())
            gateway = MCPGateway(
                MCPConfig(url=url), settings, spec=GatewaySpec(id="http-tools"), broker=fed.address, embedder=embedder
            )
            with process([sys.executable, str(MCP_EXAMPLE), "--http", str(port)], url) as server:
                await gateway.start()
                await eventually(lambda: registry.get("http-tools") is not None, what="online")
                ok, _ = await gateway.draft(task("2030-01-01"), ["weekday"])
                assert ok["answer"] == "2030-01-01 is a Tuesday"
                server.kill()
                await asyncio.to_thread(server.wait)  # without blocking the loop (keepalive is 2 s here)
            await eventually(lambda: registry.agents["http-tools"].status == "offline", timeout=20, what="offline")
            assert gateway.lost
            with pytest.raises(TaskFailed, match="not connected"):
                await gateway.draft(task("2030-01-01"), ["weekday"])
            await gateway.stop()

    asyncio.run(main())


def test_credentials_come_from_the_environment_variables_named_in_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from fabric.interop.specs import AuthConfig

    monkeypatch.setenv("FOA_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("FOA_TEST_KEY", "k-123")
    auth = AuthConfig(bearer_env="FOA_TEST_TOKEN", api_key_env="FOA_TEST_KEY", api_key_header="X-Api-Key")
    assert auth.headers() == {"Authorization": "Bearer s3cret", "X-Api-Key": "k-123"}
    monkeypatch.delenv("FOA_TEST_TOKEN")
    with pytest.raises(GatewayError, match="FOA_TEST_TOKEN .* unset or empty: export it"):
        auth.headers()
