"""The service bootstrap (fabric/service.py) and the shared embedding model behind it."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric import topics
from fabric.broker import Mosquitto
from fabric.bus import Bus
from fabric.embeddings import Embedder, shared_embedder
from fabric.envelope import make
from fabric.service import ServiceRuntime
from fabric.settings import Settings
from tests.fabric_helpers import vcv_for

ROOT = Path(__file__).resolve().parent.parent


# ---- one model copy per process ----------------------------------------------------------


def test_every_way_of_asking_for_the_default_model_shares_one_copy(embedder: Embedder) -> None:
    """2, 3 or 4 positional arguments, keywords, the alias, the native dim, and the settings
    all name the same model: one copy (an lru_cache over the arguments loaded several)."""
    settings = Settings()
    same = [
        Embedder.from_settings(settings),
        shared_embedder(),
        shared_embedder(model="sentence-transformers/all-MiniLM-L6-v2"),
        shared_embedder(model="all-MiniLM-L6-v2", dim=embedder.native_dim, device="cpu", threads=None),
    ]
    with pytest.warns(DeprecationWarning, match="keyword arguments only"):
        same += [
            shared_embedder(settings.embedding_model, settings.embedding_dim),
            shared_embedder(settings.embedding_model, settings.embedding_dim, settings.embedding_device),
            shared_embedder(settings.embedding_model, settings.embedding_dim, settings.embedding_device, None),
        ]
    assert all(e is embedder for e in same), [id(e) for e in same]
    with pytest.raises(TypeError, match="at most 4"):
        shared_embedder("m", None, "cpu", None, "extra")


def test_a_truncated_model_is_its_own_copy_and_is_shared_too(embedder: Embedder) -> None:
    small = shared_embedder(model="all-MiniLM-L6-v2", dim=128)
    assert small is not embedder
    assert small.dim == 128 and small.model_name.endswith("@128")
    assert shared_embedder(model="sentence-transformers/all-MiniLM-L6-v2", dim=128) is small
    assert small.embed_one("route this task").shape == (128,)


# ---- drain and signals -------------------------------------------------------------------


def test_drain_runs_hooks_newest_first_past_failures_and_timeouts(tmp_path: Path) -> None:
    ran: list[str] = []

    async def slow_close() -> None:
        ran.append("async")

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    async def hangs() -> None:
        ran.append("hangs")
        await asyncio.sleep(60)

    async def main() -> ServiceRuntime:
        settings = Settings(data_dir=tmp_path, metrics_port=0)
        async with ServiceRuntime(settings, "test", handle_signals=False, drain_timeout_s=0.2) as rt:
            assert rt.metrics is not None and rt.metrics.value("foa_heartbeat_timestamp_seconds")
            rt.on_drain(lambda: ran.append("first"))
            rt.on_drain(hangs)
            rt.on_drain(broken)
            rt.on_drain(slow_close)
            assert rt.ready() > 0  # the startup heap is frozen
            asyncio.get_running_loop().call_later(0.05, rt.stop, "test over")
            started = time.monotonic()
            await rt.serve()
            assert time.monotonic() - started < 5
        return rt

    thresholds = gc.get_threshold()
    try:
        rt = asyncio.run(main())
    finally:  # ready() froze this test process's heap: give it back
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert ran == ["async", "broken", "hangs", "first"]
    assert rt.stop_reason == "test over"


def test_sigterm_sets_stop_and_the_handlers_are_removed_afterwards(tmp_path: Path) -> None:
    drained: list[str] = []

    async def main() -> ServiceRuntime:
        async with ServiceRuntime(Settings(data_dir=tmp_path), "test") as rt:
            rt.on_drain(lambda: drained.append("done"))
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(rt.serve(), 10)
        return rt

    rt = asyncio.run(main())
    assert rt.stop_reason == "SIGTERM" and drained == ["done"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_router_process_drains_on_sigterm_snapshot_written_exit_0(
    mosquitto: Mosquitto, tmp_path: Path, embedder: Embedder
) -> None:
    """`foa router` under SIGTERM: the drain writes the index snapshot, then a clean exit
    (before, SIGTERM killed it and the snapshot since the last periodic save was lost)."""
    settings = Settings(broker_url=mosquitto.url, data_dir=tmp_path)

    async def publish_vcv() -> None:
        vcv = vcv_for(embedder, "drain-agent", "computes compound interest on loans")
        async with Bus(settings, "test-publisher", persistent=False) as bus:
            await bus.publish(topics.agent_vcv(vcv.agent_id), make(vcv, sender=bus.client_id), retain=True)

    asyncio.run(publish_vcv())
    env = os.environ | {"FOA_BROKER_URL": mosquitto.url, "FOA_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric.cli", "router"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"router exited early (rc={proc.poll()}): {''.join(seen)}"
            seen.append(line)
            if "router ready" in line:
                break
        time.sleep(1.5)  # the retained VCV arrives and the snapshot settles (settle_s = 1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(seen) + err
    assert "router stopping: SIGTERM" in err
    assert (tmp_path / "router" / "index" / "meta.json").exists()
