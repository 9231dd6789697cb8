"""Fault tolerance under chaos: jobs on a federation of real processes while parts of it crash.

The federation is what a deployment runs, as separate OS processes: mosquitto (persistence on),
`foa router`, `foa orchestrator` (SQLite job store, stable client id) and agent workers, some
with two replicas, each `benchmarks/_scripted_worker.py SPEC --replica-id rK` (the production
worker with a scripted LLM, so no model time). A client submits jobs with unique ids and
follows them (`fabric.client.submit_and_follow`) while this script:

- SIGKILLs random agent processes and restarts them with the same replica id,
- restarts the broker once (SIGTERM, mosquitto saves its persistence file, start again),
- SIGKILLs the orchestrator once and starts it again (it resumes jobs from its store);
  with `--orchestrators 2` it SIGKILLs one replica for good instead: the other takes over its
  unfinished jobs when their leases expire (`--store postgres`: the replicas share a PostgreSQL
  job store, a throwaway cluster this script starts with initdb + pg_ctl; `sqlite`: one file).

Every job must end `completed`, or `failed` with a reason; a job is `lost` when the client never
gets a result and `duplicated` when two different results are published for one job id (every
result on `foa/jobs/+/result` is watched, not only the first). Prints one JSON object.

    python benchmarks/chaos.py --json [--jobs 100] [--concurrency 8] [--keep DIR]
    python benchmarks/chaos.py --json --orchestrators 2 --store postgres --jobs 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import emit, progress  # noqa: E402
from fabric import topics  # noqa: E402
from fabric.broker import Mosquitto  # noqa: E402
from fabric.bus import Bus, Incoming  # noqa: E402
from fabric.client import JobFailed, submit_and_follow  # noqa: E402
from fabric.messages import JobOptions, JobResult, RouteQuery, RouteResponse  # noqa: E402
from fabric.registry import Registry  # noqa: E402
from fabric.settings import Settings  # noqa: E402
from tests.pg_cluster import PostgresCluster  # noqa: E402
from tests.scripted_federation import SPECS  # noqa: E402

VENV_BIN = Path(sys.executable).parent


@dataclass
class ChaosConfig:
    jobs: int = 100
    concurrency: int = 8
    pace_s: float = 0.0  # at least this long between two job submissions (spreads a short run over the chaos)
    #: agent id -> replicas (the scripted federation's four agents)
    replicas: dict[str, int] = field(default_factory=lambda: {"er-doc": 2, "cardio": 2, "gp": 1, "writer": 1})
    agent_kills: int = 8
    kill_every_s: float = 6.0
    restart_after_s: tuple[float, float] = (0.5, 3.0)  # a killed agent comes back after this long
    broker_restart_at: float = 0.25  # fraction of jobs finished
    orchestrator_restart_at: float = 0.55
    node_timeout_s: float = 20.0
    #: how long the broker keeps a vanished agent replica's session. mosquitto keeps handing a
    #: dead member of a shared subscription its share of the tasks until its session expires
    #: (they wait there for the dispatcher's re-send), so a short expiry takes a crashed replica
    #: out of rotation quickly; None = the fabric default (FOA_SESSION_EXPIRY_S, 30 s)
    agent_session_expiry_s: float | None = 5.0
    job_timeout_s: float = 300.0
    orchestrators: int = 1  # 2+: one is SIGKILLed for good at orchestrator_restart_at, not restarted
    store: str = "sqlite"  # or "postgres" (a throwaway cluster)
    lease_s: float = 10.0
    #: with 2+ orchestrators: SIGSTOP one for this long (then SIGCONT) instead of killing it: its
    #: jobs are taken over meanwhile, and the fencing tokens must keep it from writing after
    orchestrator_pause_s: float | None = None
    llm_latency_s: float = 0.05
    seed: int = 0
    options: JobOptions = field(
        default_factory=lambda: JobOptions(max_proposers=2, agents_per_node=2, refine_rounds=2, subtasks_max=4)
    )
    # the workload keeps the shape it was measured with: two agents a node, refining on a channel
    # (the orchestrator's default floor, 0.8 of the best α, leaves most of these nodes one agent)
    assign_floor: float = 0.0


class Proc:
    """A child process in its own session (so a kill takes its whole group), logging to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.p: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as fh:
            fh.write(f"\n===== start {self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
            self.p = subprocess.Popen(
                self.cmd, env=self.env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def running(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill(self, sig: int = signal.SIGKILL, wait_s: float = 10.0) -> None:
        if self.p is None:
            return
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self.p = None

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ProcessFederation:
    """mosquitto + `foa router` + `foa orchestrator` + scripted agent workers, as processes."""

    def __init__(self, workdir: Path, config: ChaosConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(data_dir=workdir / "broker", persistence=True)
        self.postgres: PostgresCluster | None = PostgresCluster() if config.store == "postgres" else None
        self.settings = Settings(
            broker_url=self.broker.url, data_dir=workdir / "client", keepalive_s=5, request_timeout_s=10.0
        )
        base = {
            **os.environ,
            "FOA_BROKER_URL": self.broker.url,
            "FOA_KEEPALIVE_S": "5",
            "FOA_NODE_TIMEOUT_S": str(config.node_timeout_s),
            "FOA_LOG_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # 2 shared cores: one thread per process
            "PYTHONUNBUFFERED": "1",
        }
        specs_dir = workdir / "specs"
        specs_dir.mkdir(exist_ok=True)
        foa = str(VENV_BIN / "foa")
        self.router = Proc(
            "router",
            [foa, "router", "--no-snapshot"],
            {**base, "FOA_DATA_DIR": str(workdir / "router")},
            self.logs / "router.log",
        )
        orch_env = {**base, "FOA_DATA_DIR": str(workdir / "orchestrator"), "FOA_LEASE_S": str(config.lease_s),
                    "FOA_ASSIGN_FLOOR": str(config.assign_floor)}
        if self.postgres is not None:
            orch_env["FOA_STORE_URL"] = self.postgres.url
        self.orchestrators = [
            Proc(name, [foa, "orchestrator"], {**orch_env, "FOA_INSTANCE_ID": instance}, self.logs / f"{name}.log")
            for k in range(config.orchestrators)
            for name, instance in [
                ("orchestrator" if k == 0 else f"orchestrator-{k + 1}", "chaos" if k == 0 else f"chaos-{k + 1}")
            ]
        ]
        self.orchestrator = self.orchestrators[0]
        self.agents: dict[str, Proc] = {}
        for spec in SPECS:
            path = specs_dir / f"{spec.id}.yaml"
            path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
            for k in range(1, config.replicas.get(spec.id, 1) + 1):
                name = f"{spec.id}-r{k}"
                worker = str(ROOT / "benchmarks" / "_scripted_worker.py")
                latency = str(config.llm_latency_s)
                cmd = [sys.executable, worker, str(path), "--replica-id", f"r{k}", "--latency-s", latency]
                env = {**base, "FOA_DATA_DIR": str(workdir / "agents")}
                if config.agent_session_expiry_s is not None:
                    env["FOA_SESSION_EXPIRY_S"] = str(int(config.agent_session_expiry_s))
                self.agents[name] = Proc(name, cmd, env, self.logs / f"{name}.log")

    @property
    def procs(self) -> list[Proc]:
        return [self.router, *self.orchestrators, *self.agents.values()]

    def start(self) -> None:
        if self.postgres is not None:
            self.postgres.start()
        self.broker.start()
        for proc in self.procs:
            proc.start()

    def stop(self) -> None:
        """Always runs (finally): SIGTERM every process group, SIGKILL what lingers, stop mosquitto."""
        for proc in self.procs:
            try:
                proc.kill(signal.SIGTERM, wait_s=5)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up the rest
                progress(f"could not stop {proc.name}: {exc}")
        self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def store(self) -> Any:
        """The orchestrators' job store, read-only (no leases)."""
        from fabric.orchestrator.store import open_store

        settings = Settings(
            data_dir=self.workdir / "orchestrator", store_url=self.postgres.url if self.postgres else None
        )
        return open_store(settings, leases=False)

    def dead(self) -> list[str]:
        """Processes that exited on their own (not killed by the chaos)."""
        return [p.name for p in self.procs if p.p is not None and p.p.poll() is not None]

    def killed_for_good(self) -> list[str]:
        return [p.name for p in self.orchestrators if p.starts and p.p is None]


async def wait_ready(bus: Bus, fed: ProcessFederation, timeout: float) -> float:
    """Until every agent is online and the router answers with all of them; returns seconds."""
    started = time.monotonic()
    registry = Registry()
    await registry.attach(bus)
    want = {name.rsplit("-r", 1)[0] for name in fed.agents}
    while time.monotonic() - started < timeout:
        dead = fed.dead()
        if dead:
            tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in fed.procs if p.name in dead)
            raise RuntimeError(f"{dead} exited during start-up:\n{tails}")
        online = {e.vcv.agent_id for e in registry.live() if e.vcv is not None and e.status == "online"}
        if want <= online:
            try:
                env = await bus.request(
                    topics.ROUTER_QUERY,
                    RouteQuery(text="chest pain", top_k=10, abstain=False),
                    expect=RouteResponse,
                    timeout=2.0,
                )
                if want <= {m.agent_id for m in env.body.matches}:
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - router still starting
                pass
        await asyncio.sleep(0.5)
    raise RuntimeError(
        f"federation not ready after {timeout:.0f}s; online: {sorted(e.vcv.agent_id for e in registry.live() if e.vcv)}"
    )


class ResultWatch:
    """Every result published for every job: a job with two different results is a duplicate."""

    def __init__(self) -> None:
        self.results: dict[str, set[str]] = {}

    def on_result(self, msg: Incoming) -> None:
        assert msg.envelope is not None
        result: JobResult = msg.envelope.body
        canonical = json.dumps(result.model_dump(mode="json"), sort_keys=True)
        self.results.setdefault(result.job_id, set()).add(canonical)

    def duplicated(self, job_ids: list[str]) -> list[str]:
        return [j for j in job_ids if len(self.results.get(j, ())) > 1]


class Chaos:
    """Kills and restarts, triggered by time (agents) and by job progress (broker, orchestrator)."""

    def __init__(self, fed: ProcessFederation, config: ChaosConfig, finished: Callable[[], int]) -> None:
        self.fed = fed
        self.config = config
        self.finished = finished
        self.rng = random.Random(config.seed)
        self.log: list[dict[str, Any]] = []
        self.agent_kills = 0
        self.agent_restarts = 0
        self.broker_restarts = 0
        self.orchestrator_restarts = 0
        self.orchestrator_kills = 0
        self.orchestrator_pauses = 0
        self.killed_at: float | None = None  # wall clock of the for-good kill (takeover latency)
        self.started = time.monotonic()
        self._pending: set[asyncio.Task[None]] = set()

    def _note(self, what: str, **data: Any) -> None:
        entry = {"t_s": round(time.monotonic() - self.started, 2), "event": what, "finished": self.finished(), **data}
        self.log.append(entry)
        progress(f"chaos: {entry}")

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        next_kill = time.monotonic() + cfg.kill_every_s * self.rng.uniform(0.3, 1.0)
        try:
            while not stop.is_set():
                done = self.finished() / cfg.jobs
                if not self.broker_restarts and done >= cfg.broker_restart_at:
                    self._note("broker restart")
                    await asyncio.to_thread(self.fed.broker.restart)
                    self.broker_restarts += 1
                    self._note("broker back")
                if (
                    cfg.orchestrators > 1
                    and not (self.orchestrator_kills or self.orchestrator_pauses)
                    and done >= cfg.orchestrator_restart_at
                ):
                    victim = self.fed.orchestrator
                    self.killed_at = time.time()
                    if cfg.orchestrator_pause_s is None:
                        self._note("orchestrator SIGKILL for good", orchestrator=victim.name)
                        await asyncio.to_thread(victim.kill, signal.SIGKILL)
                        self.orchestrator_kills += 1
                    else:
                        assert victim.p is not None
                        self._note("orchestrator SIGSTOP", orchestrator=victim.name, for_s=cfg.orchestrator_pause_s)
                        os.killpg(victim.p.pid, signal.SIGSTOP)
                        self.orchestrator_pauses += 1
                        await asyncio.sleep(cfg.orchestrator_pause_s)
                        os.killpg(victim.p.pid, signal.SIGCONT)
                        self._note("orchestrator SIGCONT", orchestrator=victim.name)
                if cfg.orchestrators == 1 and not self.orchestrator_restarts and done >= cfg.orchestrator_restart_at:
                    self._note("orchestrator SIGKILL")
                    await asyncio.to_thread(self.fed.orchestrator.kill, signal.SIGKILL)
                    await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                    self.fed.orchestrator.start()
                    self.orchestrator_restarts += 1
                    self._note("orchestrator started again")
                if self.agent_kills < cfg.agent_kills and time.monotonic() >= next_kill and done < 0.9:
                    alive = [name for name, p in self.fed.agents.items() if p.running]
                    if alive:
                        name = self.rng.choice(alive)
                        await asyncio.to_thread(self.fed.agents[name].kill, signal.SIGKILL)
                        self.agent_kills += 1
                        delay = self.rng.uniform(*cfg.restart_after_s)
                        self._note("agent SIGKILL", agent=name, restart_in_s=round(delay, 2))
                        task = asyncio.create_task(self._restart_agent(name, delay))
                        self._pending.add(task)
                        task.add_done_callback(self._pending.discard)
                    next_kill = time.monotonic() + cfg.kill_every_s * self.rng.uniform(0.5, 1.5)
                await asyncio.sleep(0.2)
        finally:
            for task in list(self._pending):
                await task  # every killed agent is back before the run ends

    async def _restart_agent(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self.fed.agents[name].start()
        self.agent_restarts += 1
        self._note("agent restarted", agent=name)


async def drive(fed: ProcessFederation, config: ChaosConfig) -> dict[str, Any]:
    watch = ResultWatch()
    outcomes: dict[str, JobResult | str] = {}
    walls: list[float] = []
    async with Bus(fed.settings, f"chaos-client-{os.getpid()}", persistent=False) as bus:
        await bus.subscribe(f"{topics.ROOT}/jobs/+/result", watch.on_result, body_types=JobResult)
        ready_s = await wait_ready(bus, fed, timeout=240)
        progress(f"federation ready in {ready_s:.1f}s; warm-up job")
        warm = await submit_and_follow(
            bus, "warm-up: chest pain at home, what now?", job_id=f"chaos-warmup-{os.getpid()}", options=config.options,
            timeout=120,
        )
        if warm.status != "completed":
            raise RuntimeError(f"warm-up job failed: {warm.failure_reason}")

        run_id = f"{int(time.time())}-{os.getpid()}"
        job_ids = [f"chaos-{run_id}-{i:03d}" for i in range(config.jobs)]
        slots = asyncio.Semaphore(config.concurrency)
        stop = asyncio.Event()
        chaos = Chaos(fed, config, finished=lambda: len(outcomes))

        async def one(i: int, job_id: str) -> None:
            await asyncio.sleep(i * config.pace_s)
            async with slots:
                started = time.monotonic()
                try:
                    result = await submit_and_follow(
                        bus, f"My father (case {i}) has sudden chest pain. What should we do?", job_id=job_id,
                        options=config.options, timeout=config.job_timeout_s,
                    )  # fmt: skip
                    outcomes[job_id] = result
                    walls.append(time.monotonic() - started)
                except JobFailed as exc:
                    outcomes[job_id] = f"lost: {exc}"
                done = len(outcomes)
                if done % 10 == 0 or done == config.jobs:
                    progress(f"{done}/{config.jobs} jobs finished")

        started = time.monotonic()
        chaos_task = asyncio.create_task(chaos.run(stop))
        try:
            await asyncio.gather(*(one(i, j) for i, j in enumerate(job_ids)))
        finally:
            stop.set()
            await chaos_task
        elapsed = time.monotonic() - started
        await asyncio.sleep(3.0)  # late re-publications would show up as duplicates here

    results = {j: r for j, r in outcomes.items() if isinstance(r, JobResult)}
    completed = [j for j in job_ids if j in results and results[j].status == "completed"]
    failed = {j: results[j].failure_reason for j in job_ids if j in results and results[j].status != "completed"}
    lost = {j: str(outcomes.get(j, "no outcome")) for j in job_ids if j not in results}
    duplicated = watch.duplicated(job_ids)
    store = store_states(fed, job_ids)
    takeovers = takeover_latencies(fed, job_ids, chaos.killed_at)
    degraded = sum(1 for j in completed if results[j].usage.failures)
    return {
        "jobs": config.jobs,
        "completed": len(completed),
        "failed": len(failed),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "p50_job_s": statistics.median(walls) if walls else None,
        "p99_job_s": float(sorted(walls)[min(len(walls) - 1, int(0.99 * len(walls)))]) if walls else None,
        "wall_s": elapsed,
        "ready_s": ready_s,
        "agent_kills": chaos.agent_kills,
        "agent_restarts": chaos.agent_restarts,
        "broker_restarts": chaos.broker_restarts,
        "orchestrator_restarts": chaos.orchestrator_restarts,
        "orchestrator_kills": chaos.orchestrator_kills,
        "orchestrator_pauses": chaos.orchestrator_pauses,
        "takeovers": len(takeovers),
        "takeover_p50_s": round(statistics.median(takeovers), 3) if takeovers else None,
        "takeover_p99_s": round(sorted(takeovers)[min(len(takeovers) - 1, int(0.99 * len(takeovers)))], 3)
        if takeovers
        else None,
        "takeover_max_s": round(max(takeovers), 3) if takeovers else None,
        "completed_with_failed_calls": degraded,
        "store_states": store,
        "failure_reasons": dict(list(failed.items())[:10]),
        "lost_jobs": dict(list(lost.items())[:10]),
        "duplicated_jobs": duplicated[:10],
        "chaos_log": chaos.log,
        "processes": {
            "agents": len(fed.agents),
            "replicas": config.replicas,
            "router": 1,
            "orchestrators": config.orchestrators,
        },
        "store": config.store,
        "lease_s": config.lease_s,
        "options": config.options.model_dump(exclude_none=True),
        "node_timeout_s": config.node_timeout_s,
        "agent_session_expiry_s": config.agent_session_expiry_s,
    }


def store_states(fed: ProcessFederation, job_ids: list[str]) -> dict[str, int]:
    """What the orchestrators' own store says about the jobs (a cross-check of the client's view)."""
    if fed.postgres is None and not (fed.workdir / "orchestrator" / "jobs.sqlite3").exists():
        return {}
    store = fed.store()
    try:
        counts: dict[str, int] = {}
        for job_id in job_ids:
            row = store.get(job_id)
            state = row["state"] if row else "unknown"
            counts[state] = counts.get(state, 0) + 1
        return counts
    finally:
        store.close()


def takeover_latencies(fed: ProcessFederation, job_ids: list[str], killed_at: float | None) -> list[float]:
    """Seconds from the for-good kill to the moment the surviving replica acquired each job the
    dead one held (the store records who took a lease over, and when)."""
    if killed_at is None:
        return []
    store = fed.store()
    try:
        rows = [store.get(j) for j in job_ids]
        return [
            r["lease_acquired_at"] - killed_at
            for r in rows
            if r and r["takeovers"] and r["lease_acquired_at"] >= killed_at
        ]
    finally:
        store.close()


def run_chaos(config: ChaosConfig, workdir: Path) -> dict[str, Any]:
    fed = ProcessFederation(workdir, config)
    try:
        fed.start()
        return asyncio.run(drive(fed, config))
    finally:
        fed.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--agent-kills", type=int, default=8)
    ap.add_argument("--kill-every", type=float, default=6.0, help="seconds between agent kills (randomised ±50%%)")
    ap.add_argument("--node-timeout", type=float, default=20.0)
    ap.add_argument(
        "--agent-session-expiry", type=float, default=5.0, help="agents' FOA_SESSION_EXPIRY_S; <0 = fabric default"
    )
    ap.add_argument("--orchestrators", type=int, default=1, help="replicas; 2+: one is SIGKILLed for good mid-run")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite", help="the orchestrators' job store")
    ap.add_argument("--lease", type=float, default=10.0, help="FOA_LEASE_S of the orchestrators")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep logs, stores and specs in this folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    config = ChaosConfig(
        jobs=args.jobs, concurrency=args.concurrency, agent_kills=args.agent_kills, kill_every_s=args.kill_every,
        node_timeout_s=args.node_timeout, seed=args.seed, orchestrators=args.orchestrators, store=args.store,
        lease_s=args.lease, agent_session_expiry_s=None if args.agent_session_expiry < 0 else args.agent_session_expiry,
    )  # fmt: skip
    if args.keep:
        if args.keep.exists():
            shutil.rmtree(args.keep)
        args.keep.mkdir(parents=True)
        result = run_chaos(config, args.keep)
        result["workdir"] = str(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="foa-chaos-") as tmp:
            result = run_chaos(config, Path(tmp))
    emit(result, args.json)


if __name__ == "__main__":
    main()
