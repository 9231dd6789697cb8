"""Orchestration overhead per job with no LLM time: a 4-node DAG, 3 agents per node, k = 3.

Everything but the LLM is real: mosquitto, the router service, the orchestrator, task dispatch
over MQTT, embeddings for merging and clustering, the SQLite job store. Agents answer from a
script instantly (ScriptedLLM), and every agent keeps voting "not done", so all 3 refinement
rounds run. What remains of a job's wall time is the fabric's own overhead.

`critical_path_median_ms` breaks a job's wall time down by kind of work (embedding, clustering,
store, publishing, router and agent round trips, the broker's share of them, the engine's own
Python; see fabric/orchestrator/critical_path.py), `hops_per_job` counts the sequential round
trips, `per_hop_ms` is the time per hop, and `outside_job_ms` is what the engine does not see
(submission and result over the broker, admission, the final commit).

The router, the orchestrator, the twelve agents and the client all run in this one process on one
event loop (only mosquitto is apart), so the agents' side of every call and the broker's share
are this process's CPU too: `cpu_ms_per_job` gives the process's and the broker's CPU per job,
and `fabric_process_busy_share` (process CPU / wall) near 1 says the job is CPU-bound on one
core, so that cutting CPU anywhere in the fabric, not fewer waits, is what shortens it.

    python benchmarks/job_overhead.py --json [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import cpu_s, emit, progress
from fabric.broker import Mosquitto
from fabric.embeddings import shared_embedder
from fabric.federation import LocalFederation
from fabric.heap import freeze_startup_heap
from fabric.messages import JobOptions
from fabric.orchestrator.critical_path import HOPS_PREFIX, PATH_PREFIX
from fabric.settings import Settings
from fabric.transports.paho import install_paho_speedups
from tests.scripted_federation import SPECS, backend_factory


async def measure(
    settings: Settings, jobs: int, warmup: int, proposers: int, broker_pid: int | None
) -> dict[str, object]:
    factory = backend_factory(done_from_round=99)
    options = JobOptions(max_proposers=proposers, agents_per_node=3, refine_rounds=3, subtasks_max=4)
    walls: list[float] = []
    phases: dict[str, list[float]] = {}
    path: dict[str, list[float]] = {}  # kind -> ms per job
    hops: dict[str, list[float]] = {}  # wait -> sequential round trips per job
    outside: list[float] = []  # ms of a job's wall time before and after the engine
    async with LocalFederation(settings, SPECS, backend_factory=factory, embedder=shared_embedder()) as fed:
        freeze_startup_heap()  # as `foa up` does once the federation is up (fabric/heap.py)
        shape: dict[str, Any] | None = None
        cpu_from: dict[str, float] = {}
        for i in range(warmup + jobs):
            if i == warmup:  # every role but the broker runs in this process, on one thread
                cpu_from = {"fabric_process": time.process_time(), "broker": _broker_cpu(broker_pid)}
            # a new question each time: nothing is served from the embedding cache that a real job would not hit
            started = time.perf_counter()
            result = await fed.run_job(f"My father (case {i}) has sudden chest pain. What should we do?", options)
            wall = time.perf_counter() - started
            if result.status != "completed":
                raise RuntimeError(f"job failed: {result.failure_reason}")
            rounds = [info.rounds for node in result.rounds.values() for info in node.values()]
            shape = {
                "nodes": len(result.dag.nodes),
                "agents_per_node": [len(v) for v in result.assignments.values()],
                "refine_rounds": max(rounds) if rounds else 0,
                "llm_calls": result.usage.calls,
            }
            if i >= warmup:
                walls.append(wall * 1000)
                for k, v in result.timings.items():
                    if k.startswith(PATH_PREFIX):
                        path.setdefault(k.removeprefix(PATH_PREFIX), []).append(v * 1000)
                    elif k.startswith(HOPS_PREFIX):
                        hops.setdefault(k.removeprefix(HOPS_PREFIX), []).append(v)
                    else:
                        phases.setdefault(k, []).append(v * 1000)
                in_path = sum(v for k, v in result.timings.items() if k.startswith(PATH_PREFIX))
                outside.append((wall - in_path) * 1000)
            progress(f"job {i + 1}/{warmup + jobs}: {wall * 1000:.0f} ms")
    cpu_ms = {
        "fabric_process": (time.process_time() - cpu_from["fabric_process"]) * 1000 / len(walls),
        "broker": (_broker_cpu(broker_pid) - cpu_from["broker"]) * 1000 / len(walls),
    }
    llm_ms = 0.0  # ScriptedLLM answers instantly: all of the wall time is orchestration
    per_job = statistics.median(walls) - llm_ms
    path_ms = {k: statistics.median(v) for k, v in path.items()}
    hops_n = {k: statistics.median(v) for k, v in hops.items()}
    per_hop = {k: path_ms[k] / hops_n[k] for k in ("router", "publish") if hops_n.get(k)}
    if hops_n.get("calls"):  # a round of parallel task calls: agents' own time plus the broker's share
        per_hop["calls"] = (path_ms["agents"] + path_ms["broker"]) / hops_n["calls"]
    return {
        "overhead_ms_per_job": per_job,
        "overhead_ms_per_node": per_job / (shape["nodes"] if shape else 4),
        "p90_ms_per_job": sorted(walls)[int(0.9 * (len(walls) - 1))],
        "phase_median_ms": {k: statistics.median(v) for k, v in phases.items()},
        "critical_path_median_ms": path_ms,
        "hops_per_job": hops_n,
        "per_hop_ms": per_hop,
        "outside_job_ms": statistics.median(outside),
        # CPU per job: the fabric process's share of the wall time is the bound when it nears 1
        "cpu_ms_per_job": {k: round(v, 3) for k, v in cpu_ms.items()},
        "fabric_process_busy_share": round(cpu_ms["fabric_process"] / statistics.mean(walls), 3),
        "jobs": len(walls),
        "shape": shape,
        "llm_ms": llm_ms,
    }


def _broker_cpu(pid: int | None) -> float:
    return cpu_s(pid) if pid is not None else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--proposers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    install_paho_speedups()  # as the services do at start (the bus no longer installs them)
    with tempfile.TemporaryDirectory(prefix="foa-overhead-") as tmp:
        broker = Mosquitto(data_dir=Path(tmp) / "broker", persistence=False, die_with_parent=True).start()
        try:
            # assign_floor 0: the measured shape keeps 3 agents a node (the floor, FOA_ASSIGN_FLOOR
            # 0.8 since issue 19, left the scripted nodes one agent each and no refinement: ~37 ms)
            settings = Settings(broker_url=broker.url, data_dir=Path(tmp), log_level="WARNING", assign_floor=0.0)
            result = asyncio.run(measure(settings, args.jobs, args.warmup, args.proposers, broker.pid))
        finally:
            broker.stop()
    result["goal_ms_per_job"] = 50
    emit(result, args.json)


if __name__ == "__main__":
    main()
