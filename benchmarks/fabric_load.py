"""The fabric under load: 10,000 agents on one mosquitto, then 1,000 concurrent jobs.

Processes: mosquitto; an agent host (agents/host.py) serving N agents over ONE connection, each
with its own retained VCV, status and inbox, answering from a scripted LLM (the production
LLMWorker over ScriptedLLM: no model time); `foa router`; and this process, which measures the
router cold start and then runs ONE orchestrator (OrchestratorService, SQLite store) and the client.

Measured:
  registration_s       the host publishing N VCVs (retained, each acknowledged by the broker);
                       capability vectors are precomputed: a few hundred distinct descriptions
                       embedded with the real model, each agent a perturbed, re-normalised copy
  host_ready_s         registration + N `online` statuses + N inbox subscriptions
  router_cold_start_s  a RouterService started after the N are retained, until its index holds
                       all N (router_synced_s: until it also declared the snapshot settled)
  jobs_per_s           J jobs submitted at once, first submission to last result
  p99_dispatch_ms      orchestrator-side time from dispatching a task to holding its result
  cpu_ms_per_job       CPU seconds each process used during the jobs, per job; cpu_ceiling_jobs_per_s
                       = cores / their sum (the best jobs_per_s this machine allows);
                       orchestrator_ceiling_jobs_per_s = 1 / the orchestrator's share (one
                       orchestrator on a core of its own; the client's share is included)
  orchestrator_gc_*    garbage-collector pauses in the orchestrator+client process during the
                       jobs, in all and by generation (its startup heap is frozen and its
                       thresholds raised as in `foa orchestrator`, fabric/heap.py;
                       --gc-python-thresholds and --no-gc-freeze show the difference)
Job shape (default): the scripted 4-node DAG, one proposer, one agent per node, no refinement
rounds — the smallest job that still decomposes, assigns, drafts 4 nodes and synthesises.

    python benchmarks/fabric_load.py --json [--agents 10000] [--jobs 1000] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_s, emit, percentile_ms, progress
from fabric import topics
from fabric.broker import Mosquitto
from fabric.bus import Bus, Incoming
from fabric.envelope import make
from fabric.heap import freeze_startup_heap
from fabric.messages import JobOptions, JobResult, JobSubmit, RouteQuery, RouteResponse
from fabric.settings import Settings
from fabric.transports.paho import install_paho_speedups

VENV_BIN = Path(sys.executable).parent

DOMAINS = [
    "emergency medicine", "cardiology", "paediatrics", "pharmacology", "mental health", "general practice",
    "public health", "nutrition", "physiotherapy", "dermatology", "tax law", "contract law", "python programming",
    "database tuning", "network security", "statistics", "calculus", "translation into Spanish",
    "technical writing", "summarising reports",
]
ANGLES = [
    "answers patient questions about", "writes clear guidance on", "reviews evidence in", "triages cases in",
    "explains the basics of", "audits decisions in", "drafts plans for", "checks safety issues in",
    "teaches beginners", "summarises the literature of", "gives second opinions in", "builds checklists for",
    "estimates costs in", "compares options in", "answers urgent questions about",
]


def descriptions(n_distinct: int) -> list[str]:
    out = [f"An agent that {a} {d}." for d in DOMAINS for a in ANGLES]
    return out[:n_distinct]


# ---- the agent host process ----------------------------------------------------------------


def host_main(agents: int, distinct: int, broker_url: str, seed: int) -> None:
    """Child process: host `agents` scripted agents; print one JSON line when registered."""
    from agents.host import AgentHost, vcv_with_vectors
    from agents.spec import AgentSpec
    from agents.worker import LLMWorker
    from fabric.embeddings import shared_embedder
    from fabric.llm.scripted import ScriptedLLM
    from fabric.vcv import Resources
    from tests.scripted_federation import scripted_answer

    settings = Settings(broker_url=broker_url, log_level="WARNING")
    embedder = shared_embedder()
    texts = descriptions(distinct)
    started = time.perf_counter()
    base = embedder.embed(texts)
    embed_s = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    host = AgentHost(settings, f"load-host-{os.getpid()}", embedder=embedder)
    for i in range(agents):
        k = i % len(texts)
        vec = base[k] + rng.normal(0.0, 0.02, size=(base.shape[1],)).astype(np.float32)
        vec /= np.linalg.norm(vec)
        spec = AgentSpec(id=f"load-{i:05d}", description=f"{texts[k]} (#{i})", skills=[DOMAINS[k // len(ANGLES)]],
                         resources=Resources(max_concurrency=64, cost_per_1k_output=0.001))  # fmt: skip
        agent = host.add(spec, vcv=vcv_with_vectors(spec, vec.tolist(), vec.tolist(), embedder.model_name))
        LLMWorker(spec, settings, ScriptedLLM(scripted_answer(spec.id, done_from_round=1), name="scripted")).attach(
            agent
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await host.start()
        freeze_startup_heap()  # as the service entry points do (fabric/heap.py)
        t = host.timings
        timings = {"registration_s": t["vcvs_s"], "status_s": t["status_s"], "inboxes_s": t["inboxes_s"],
                   "host_ready_s": t["start_s"]}  # fmt: skip
        print(json.dumps({"embed_distinct_s": embed_s, "distinct_descriptions": len(texts), **timings}), flush=True)
        await stop.wait()
        print(json.dumps({"served": host.served}), flush=True)
        await host.stop()

    asyncio.run(serve())


class Child:
    """A child process in its own session; killed with its group in `stop()`."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("wb")
        self.p = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True, text=True
        )

    def read_json(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.p.stdout is not None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"child exited (rc={self.p.poll()}); see {self.log.name}")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError("child did not report in time")

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self.log.close()


# ---- router cold start ---------------------------------------------------------------------


async def router_cold_start(settings: Settings, agents: int) -> dict[str, float]:
    from fabric.embeddings import shared_embedder
    from router.service import RouterService

    embedder = shared_embedder()
    async with Bus(settings, f"load-router-{os.getpid()}", persistent=False) as bus:
        started = time.perf_counter()
        router = RouterService(settings, bus, embedder, auto_calibrate=False)
        await router.start()
        while len(router.index) < agents:
            await asyncio.sleep(0.01)
        indexed = time.perf_counter() - started
        await router.synced.wait()
        synced = time.perf_counter() - started
        await router.stop()
    return {"router_cold_start_s": indexed, "router_synced_s": synced, "router_indexed": len(router.index)}


# ---- jobs through one orchestrator ---------------------------------------------------------


class GcPauses:
    """Garbage-collector pauses in this process (gc.callbacks), by generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started
            self.count[info["generation"]] += 1


async def run_jobs(
    settings: Settings,
    jobs: int,
    options: JobOptions,
    distinct_questions: int,
    profile: Path | None,
    pids: dict[str, int],
    freeze: bool = True,
    python_thresholds: bool = False,
) -> dict[str, Any]:
    from fabric.embeddings import shared_embedder
    from fabric.orchestrator.service import BusPorts, OrchestratorService

    embedder = shared_embedder()
    dispatch_s: list[float] = []

    class TimedPorts(BusPorts):
        """BusPorts that records how long each task took from dispatch to result."""

        async def call(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await super().call(*args, **kwargs)
            finally:
                dispatch_s.append(time.perf_counter() - started)

    orch_bus = Bus(settings, f"orchestrator-load{os.getpid()}", persistent=False)
    await orch_bus.connect()
    service = OrchestratorService(settings, orch_bus, embedder, resume=False)
    service.ports = TimedPorts(orch_bus, service.registry, embedder, settings)
    await service.start()
    if freeze:
        thresholds = gc.get_threshold()
        freeze_startup_heap()  # as run_orchestrator does (fabric/heap.py)
        if python_thresholds:
            gc.set_threshold(*thresholds)
    progress(f"orchestrator sees {len(service.registry.live())} agents")
    client = Bus(settings, f"load-client-{os.getpid()}", persistent=False)
    await client.connect()
    # (status, total seconds, failure reason) per job: a client keeping every JobResult (DAG,
    # assignments, factors) alive would grow this process's heap and its GC pauses with each job
    done: dict[str, tuple[str, float, str]] = {}
    shapes: list[JobResult] = []
    finished_at: list[float] = []
    all_done = asyncio.Event()

    def on_result(msg: Incoming) -> None:
        assert msg.envelope is not None
        result: JobResult = msg.envelope.body
        if result.job_id.startswith(run) and result.job_id not in done:
            done[result.job_id] = (result.status, result.timings.get("total", 0.0), result.failure_reason or "")
            if result.status == "completed" and not shapes:
                shapes.append(result)
            finished_at.append(time.perf_counter())
            if len(done) % 100 == 0:
                progress(f"{len(done)}/{jobs} jobs done")
            if len(done) == jobs:
                all_done.set()

    run = f"load-{os.getpid()}-{int(time.time())}-"
    await client.subscribe(f"{topics.ROOT}/jobs/+/result", on_result, body_types=JobResult)
    # warm-up: one job end to end (caches, connections), not counted
    await client.publish(
        topics.JOBS_SUBMIT,
        make(JobSubmit(job_id=f"warm-{run}", question="warm-up: chest pain, what now?", options=options)),
    )
    deadline = time.monotonic() + 60
    while not service.completed and not service.failed and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    base_completed, base_failed = service.completed, service.failed
    dispatch_s.clear()

    submits = [
        JobSubmit(
            job_id=f"{run}{i:05d}",
            question=f"My father (case {i % distinct_questions}) has sudden chest pain. What should we do?",
            options=options,
        )
        for i in range(jobs)
    ]
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    started = time.perf_counter()
    for submit in submits:
        await client.publish(
            topics.JOBS_SUBMIT, make(submit, job_id=submit.job_id, sender=client.client_id), wait=False
        )
    submitted = time.perf_counter() - started
    try:
        await asyncio.wait_for(all_done.wait(), timeout=max(120.0, jobs * 0.5))
    except TimeoutError:
        progress(f"timed out with {len(done)}/{jobs} results")
    elapsed = (finished_at[-1] if finished_at else time.perf_counter()) - started
    cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
    gc.callbacks.remove(pauses)
    if profiler:
        profiler.disable()
        profiler.dump_stats(str(profile))
    statuses: dict[str, int] = {}
    for status, _, _ in done.values():
        statuses[status] = statuses.get(status, 0) + 1
    walls = sorted(total for _, total, _ in done.values())
    shape = shapes[0] if shapes else None
    failures = sorted({reason for status, _, reason in done.values() if status != "completed"})[:5]
    await client.close()
    await orch_bus.close()
    service.store.close()
    return {
        "jobs": jobs,
        "jobs_completed": statuses.get("completed", 0),
        "jobs_failed": statuses.get("failed", 0),
        "jobs_missing": jobs - len(done),
        "jobs_per_s": len(done) / elapsed if elapsed > 0 else 0.0,
        "jobs_wall_s": elapsed,
        "submit_s": submitted,
        "p50_dispatch_ms": percentile_ms(dispatch_s, 50),
        "p99_dispatch_ms": percentile_ms(dispatch_s, 99),
        "tasks_dispatched": len(dispatch_s),
        "tasks_per_job": len(dispatch_s) / max(1, len(done)),
        "p50_job_s": statistics.median(walls) if walls else None,
        "p99_job_s": walls[min(len(walls) - 1, int(0.99 * len(walls)))] if walls else None,
        "job_shape": {
            "nodes": len(shape.dag.nodes),
            "agents_per_node": [len(v) for v in shape.assignments.values()],
        }
        if shape
        else None,
        "failure_reasons": failures,
        "cpu_s_during_jobs": cpu,
        **cpu_budget(cpu, len(done)),
        "orchestrator_gc_pause_s": sum(pauses.seconds),
        "orchestrator_gc_pause_s_by_generation": [round(x, 4) for x in pauses.seconds],
        "orchestrator_gc_full_collections": pauses.count[2],
        "orchestrator_heap_frozen": freeze,
        "orchestrator_gc_thresholds": list(gc.get_threshold()),
        "orchestrator_counts": {
            "completed": service.completed - base_completed,
            "failed": service.failed - base_failed,
        },
    }


def cpu_budget(cpu: dict[str, float], jobs: int) -> dict[str, Any]:
    """CPU per job per process, and the job rates that CPU allows: all processes sharing this
    machine's cores (what jobs_per_s can reach here at best), and the orchestrator process on a
    core of its own (what one orchestrator could sustain with the rest on other machines)."""
    per_job = {name: round(1000.0 * s / max(1, jobs), 3) for name, s in cpu.items() if s == s}  # NaN: unreadable
    total = sum(per_job.values())
    return {
        "cpu_ms_per_job": per_job,
        # issue #14's goal: <= 10 ms with a new question per job (200 jobs/s on two cores)
        "cpu_ms_per_job_total": round(total, 3),
        "cpu_ceiling_jobs_per_s": round(1000.0 * (os.cpu_count() or 1) / total, 1) if total else None,
        "orchestrator_ceiling_jobs_per_s": round(1000.0 / per_job["orchestrator+client"], 1)
        if per_job.get("orchestrator+client")
        else None,
    }


async def wait_router(settings: Settings, agents: int, timeout: float) -> float:
    started = time.monotonic()
    async with Bus(settings, f"load-probe-{os.getpid()}", persistent=False) as bus:
        while time.monotonic() - started < timeout:
            try:
                env = await bus.request(
                    topics.ROUTER_QUERY,
                    RouteQuery(text="chest pain", top_k=3, abstain=False),
                    expect=RouteResponse,
                    timeout=3.0,
                )
                if env.body.candidates_considered and env.body.matches:
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - still starting
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("the router process did not answer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--distinct-descriptions", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--distinct-questions", type=int, default=None, help="default: every job its own question")
    ap.add_argument("--proposers", type=int, default=1)
    ap.add_argument("--agents-per-node", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument(
        "--profile", type=Path, default=None, help="cProfile the orchestrator+client process during the jobs"
    )
    ap.add_argument(
        "--gc-python-thresholds",
        action="store_true",
        help="freeze the orchestrator's startup heap but keep Python's collection thresholds (for comparison)",
    )
    ap.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the orchestrator's garbage collector as Python ships it: no frozen startup heap, "
        "default thresholds (for comparison)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--host-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--broker-url", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    install_paho_speedups()  # as the services do at start (the bus no longer installs them)
    if args.host_child:
        host_main(args.agents, args.distinct_descriptions, args.broker_url, args.seed)
        return

    options = JobOptions(
        max_proposers=args.proposers, agents_per_node=args.agents_per_node, refine_rounds=args.rounds, subtasks_max=4
    )
    result: dict[str, Any] = {"agents": args.agents}
    with tempfile.TemporaryDirectory(prefix="foa-load-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(data_dir=work / "broker", persistence=False, die_with_parent=True).start()
        children: list[Child] = []
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
               "FOA_BROKER_URL": broker.url, "FOA_LOG_LEVEL": "WARNING"}  # fmt: skip
        try:
            settings = Settings(
                broker_url=broker.url, data_dir=work / "orchestrator", log_level="WARNING", request_timeout_s=30.0
            )
            progress(f"starting an agent host with {args.agents} agents")
            host = Child([sys.executable, __file__, "--host-child", "--agents", str(args.agents),
                          "--distinct-descriptions", str(args.distinct_descriptions), "--broker-url", broker.url,
                          "--seed", str(args.seed)], env, work / "host.log")  # fmt: skip
            children.append(host)
            result.update(host.read_json(timeout=600))
            progress(f"host registered: {result}")
            result.update(asyncio.run(router_cold_start(settings, args.agents)))
            progress(f"router cold start: {result['router_cold_start_s']:.2f}s")
            router = Child(
                [str(VENV_BIN / "foa"), "router", "--no-snapshot"],
                {**env, "FOA_DATA_DIR": str(work / "router")},
                work / "router.log",
            )
            children.append(router)
            result["router_process_ready_s"] = asyncio.run(wait_router(settings, args.agents, 300))
            pids = {
                "orchestrator+client": os.getpid(),
                "agent_host": host.p.pid,
                "router": router.p.pid,
                "mosquitto": broker._proc.pid if broker._proc else -1,
            }
            result.update(asyncio.run(run_jobs(settings, args.jobs, options, args.distinct_questions or args.jobs,
                                               args.profile, pids, freeze=not args.no_gc_freeze,
                                               python_thresholds=args.gc_python_thresholds)))  # fmt: skip
        finally:
            for child in children:
                child.stop()
            broker.stop()
    result["options"] = options.model_dump(exclude_none=True)
    result["goals"] = {"router_cold_start_s": 5.0, "jobs_per_s": 200}
    result["cores"] = os.cpu_count()
    emit(result, args.json)


if __name__ == "__main__":
    main()
