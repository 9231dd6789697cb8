"""The multiplexed agent host against the real mosquitto, router and embedder.

Many agents on one connection must look, to the rest of the federation, exactly like agents
in their own processes: own retained VCV and status, routable by the router, own inbox served
by their own handlers, re-sent tasks answered once, versions continuing across restarts.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from agents.host import AgentHost, vcv_with_vectors
from agents.spec import AgentSpec
from fabric import topics
from fabric.bus import Bus
from fabric.dispatch import TaskError, dispatch
from fabric.messages import RouteQuery, TaskRequest
from fabric.registry import Registry
from fabric.settings import Settings
from fabric.vcv import VCV
from router.service import RouterService
from tests.fabric_helpers import eventually

TOPICS = [
    "tax law for freelancers",
    "sourdough baking",
    "kubernetes networking",
    "marathon training",
    "medieval history",
]


def specs(prefix: str, n: int) -> list[AgentSpec]:
    return [
        AgentSpec(
            id=f"{prefix}-{i}",
            description=f"Expert in {TOPICS[i % len(TOPICS)]}, agent number {i}",
            skills=[TOPICS[i % len(TOPICS)]],
        )
        for i in range(n)
    ]


async def snapshot(settings: Settings) -> Registry:
    registry = Registry()
    async with Bus(settings, f"test-view-{uuid.uuid4().hex[:6]}", persistent=False) as bus:
        await registry.attach(bus)
        await registry.settle(quiet_s=0.5, max_s=10)
    return registry


@pytest.mark.in_memory
def test_hosted_agents_register_route_and_serve(settings: Settings, embedder) -> None:
    prefix = f"h{uuid.uuid4().hex[:4]}"

    async def main() -> None:
        host = AgentHost(settings, f"{prefix}-host", embedder=embedder)
        calls: dict[str, int] = {}
        for spec in specs(prefix, 40):
            agent = host.add(spec)

            def draft(task: TaskRequest, agent_id: str = spec.id) -> dict[str, object]:
                calls[agent_id] = calls.get(agent_id, 0) + 1
                return {"answer": f"{agent_id} answers {task.input['subtask']}", "confidence": 0.9}

            agent.add_handler("draft", draft)
        await host.start()
        try:
            view = await snapshot(settings)
            mine = {e.vcv.agent_id: e for e in view.live() if e.vcv and e.vcv.agent_id.startswith(prefix + "-")}
            assert len(mine) == 40
            assert all(e.status == "online" and e.vcv is not None and e.vcv.version == 1 for e in mine.values())
            # each VCV carries its own description's embedding
            baking = mine[f"{prefix}-1"].vcv
            assert baking is not None
            assert float(np.dot(baking.capability_array(), embedder.embed_one("bread and sourdough"))) > 0.3

            async with (
                Bus(settings, f"test-router-{prefix}", persistent=False) as rbus,
                Bus(settings, f"test-cli-{prefix}", persistent=False) as cli,
            ):
                router = RouterService(settings, rbus, embedder, auto_calibrate=False)
                await router.start()
                await asyncio.wait_for(router.synced.wait(), 15)
                env = await cli.request(
                    topics.ROUTER_QUERY,
                    RouteQuery(text="how do I keep a sourdough starter alive", top_k=3, abstain=False),
                )
                top = [m["agent_id"] for m in env.body["matches"]]
                assert top and all(t.startswith(prefix) and int(t.rsplit("-", 1)[1]) % len(TOPICS) == 1 for t in top), (
                    top
                )

                # its own inbox, its own handler; a re-sent task id runs once
                target = top[0]
                first = await dispatch(cli, target, "draft", {"subtask": "s1"}, timeout=5, task_id="t-1")
                again = await dispatch(cli, target, "draft", {"subtask": "s1"}, timeout=5, task_id="t-1")
                assert first.ok and first.agent_id == target and first.output["answer"] == f"{target} answers s1"
                assert again.output == first.output and calls == {target: 1}
                with pytest.raises(TaskError, match="no handler for task kind 'refine'"):
                    await dispatch(cli, target, "refine", {}, timeout=5)
                await router.stop()
        finally:
            await host.stop()
        view = await snapshot(settings)
        assert all(e.status == "offline" for e in view.live() if e.vcv and e.vcv.agent_id.startswith(prefix + "-"))

    asyncio.run(main())


@pytest.mark.in_memory
def test_precomputed_vcvs_and_versions_across_restarts(settings: Settings, embedder) -> None:
    prefix = f"p{uuid.uuid4().hex[:4]}"
    base = embedder.embed(["solar panel installation and maintenance"])[0]

    def population(description_suffix: str) -> list[tuple[AgentSpec, VCV]]:
        out = []
        rng = np.random.default_rng(0)
        for spec in specs(prefix, 20):
            spec = spec.model_copy(update={"description": spec.description + description_suffix})
            vec = base + rng.normal(0, 0.05, base.shape).astype(np.float32)
            vec /= np.linalg.norm(vec)
            out.append((spec, vcv_with_vectors(spec, vec.tolist(), vec.tolist(), embedder.model_name)))
        return out

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fabric.security import sign_vcv, verify_signature

    key = Ed25519PrivateKey.generate()

    async def run_host(pop: list[tuple[AgentSpec, VCV]]) -> dict[str, int]:
        host = AgentHost(settings, f"{prefix}-host", embedder=embedder)
        for spec, vcv in pop:
            host.add(spec, vcv=vcv, signer=lambda v: sign_vcv(v, key))
        await host.start()
        versions = {a.agent_id: a.vcv.version for a in host.agents.values() if a.vcv}
        # every published version is signed after its version number was set
        assert all(a.vcv is not None and verify_signature(a.vcv) is None for a in host.agents.values())
        await host.stop()
        return versions

    async def main() -> None:
        first = await run_host(population(""))
        same = await run_host(population(""))
        changed = await run_host(population(" (now also batteries)"))
        assert set(first.values()) == {1}
        assert same == first  # unchanged content keeps its version
        assert set(changed.values()) == {2}  # changed content bumps it, continuing from the broker's copy

    asyncio.run(main())


@pytest.mark.in_memory
def test_bad_additions_are_refused(settings: Settings, embedder) -> None:
    host = AgentHost(settings, "refusals", embedder=embedder)
    spec = AgentSpec(id="dup", description="anything")
    host.add(spec)
    with pytest.raises(ValueError, match="already hosted"):
        host.add(spec)
    other = AgentSpec(id="other", description="anything")
    vcv = vcv_with_vectors(spec, [1.0] + [0.0] * 383, [1.0] + [0.0] * 383, embedder.model_name)
    with pytest.raises(ValueError, match="given for agent"):
        host.add(other, vcv=vcv)
    with pytest.raises(ValueError, match="invalid host_id"):
        AgentHost(settings, "a/b")


def test_foa_agent_host_serves_llm_workers_and_signs_off(settings: Settings, tmp_path) -> None:
    """`foa agent host`: specs from a folder and a file, one process, the embedded LLM answering."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from fabric.tasks import DraftInput

    folder = tmp_path / "specs"
    folder.mkdir()
    for agent_id, what in (("h-tax", "tax law for freelancers"), ("h-bread", "sourdough baking")):
        (folder / f"{agent_id}.yaml").write_text(yaml.safe_dump({"id": agent_id, "description": f"Expert in {what}"}))
    extra = tmp_path / "h-run.yaml"
    extra.write_text(yaml.safe_dump({"id": "h-run", "description": "Expert in marathon training"}))
    env = os.environ | {
        "FOA_BROKER_URL": settings.broker_url or "",
        "FOA_DATA_DIR": str(tmp_path),
        "FOA_LLM_BASE_URL": "",
    }
    cmd = [sys.executable, "-m", "fabric.cli", "agent", "host", str(folder), str(extra), "--host-id", "cli-host"]

    dup = subprocess.run([*cmd[:-2], str(extra)], env=env, capture_output=True, text=True, timeout=120)
    assert dup.returncode == 1 and "given more than once: ['h-run']" in dup.stderr

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    async def main() -> None:
        registry = Registry()
        async with Bus(settings, "host-cli-test", persistent=False) as bus:
            await registry.attach(bus)
            ids = ("h-tax", "h-bread", "h-run")

            def status(i: str) -> str | None:
                entry = registry.get(i)
                return entry.status if entry else None

            await eventually(lambda: all(status(i) == "online" for i in ids), timeout=120, what="hosted agents online")
            payload = DraftInput(
                question="How do I start running?", subtask="Give one tip for a first run", max_tokens=12
            )
            result = await dispatch(bus, "h-run", "draft", payload.model_dump(mode="json"), timeout=120, max_tokens=12)
            assert result.agent_id == "h-run" and result.output["answer"].strip()
            assert result.usage.output_tokens > 0  # a real model ran
            os.killpg(proc.pid, signal.SIGTERM)
            await eventually(lambda: all(status(i) == "offline" for i in ids), timeout=30, what="clean sign-off")

    try:
        asyncio.run(main())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
