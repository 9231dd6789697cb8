"""`foa run`, `foa up`, `foa submit`, `foa jobs`, `foa job show`, `foa orchestrator`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from fabric.messages import Budget, JobEvent, JobOptions, JobResult
from fabric.settings import Settings

#: `foa run` on the embedded CPU model: small enough to answer in well under 3 minutes on 2 cores
EMBEDDED_PROFILE = {"max_proposers": 2, "subtasks_max": 3, "agents_per_node": 2, "max_tokens_per_call": 128}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="answer a question with a whole federation in this process (the main job)")
    p.add_argument("question")
    _job_options(p)
    p.add_argument("--specs", default=None, help="folder of agent specs (default: the shipped agents)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("up", help="run a local federation (broker, router, orchestrator, agents) until interrupted")
    p.add_argument("--specs", default=None, help="folder of agent specs (default: the shipped agents)")
    p.add_argument("--port", type=int, default=1883, help="embedded broker port (default 1883; 0 = any free port)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("submit", help="send a job to a running federation and follow it")
    p.add_argument("question")
    _job_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list jobs in the local job store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="inspect one job")
    job_sub = p.add_subparsers(dest="job_command", metavar="ACTION")
    show = job_sub.add_parser("show", help="show a job: state, DAG, who did what, answer")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_job_show)

    p = sub.add_parser("orchestrator", help="run the orchestrator service")
    p.set_defaults(func=cmd_orchestrator)


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--job-id", default=None)
    p.add_argument("--policy", action="append", default=[], help="required policy clearance (repeatable)")
    p.add_argument("--proposers", type=int, default=None, help="agents that propose a decomposition (paper: 4)")
    p.add_argument("--subtasks", type=int, default=None, help="at most this many subtasks (paper: 4)")
    p.add_argument("--agents-per-node", type=int, default=None, help="agents drafting each subtask (r_i)")
    p.add_argument("--rounds", type=int, default=None, help="refinement rounds k (paper: 3)")
    p.add_argument("--max-tokens", type=int, default=None, help="max tokens per LLM call")
    p.add_argument("--synth", choices=["concat", "rebase", "merge"], default=None)
    p.add_argument("--no-clustering", action="store_true")
    p.add_argument("--random-routing", action="store_true", help="assign agents at random (baseline)")
    p.add_argument("--budget-tokens", type=int, default=None)
    p.add_argument("--budget-cost", type=float, default=None)
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole job")
    p.add_argument("--timeout", type=float, default=900.0, help="give up following after this many seconds")


def _options(args: argparse.Namespace, settings: Settings, profile: bool) -> tuple[JobOptions, Budget]:
    base: dict[str, Any] = dict(EMBEDDED_PROFILE) if profile and not settings.llm_base_url else {}
    given = {
        "max_proposers": args.proposers,
        "subtasks_max": args.subtasks,
        "agents_per_node": args.agents_per_node,
        "refine_rounds": args.rounds,
        "max_tokens_per_call": args.max_tokens,
        "synth_mode": args.synth,
    }
    base.update({k: v for k, v in given.items() if v is not None})
    options = JobOptions(**base, clustering=not args.no_clustering, routing="random" if args.random_routing else "routed")
    budget = Budget(max_tokens=args.budget_tokens, max_cost=args.budget_cost, deadline_s=args.deadline)
    return options, budget


class Progress:
    """Live progress on stderr: one line per event, with elapsed time."""

    def __init__(self, quiet: bool = False) -> None:
        self.started = time.monotonic()
        self.quiet = quiet

    def __call__(self, event: JobEvent) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {event.phase:<10} {event.message}", file=sys.stderr, flush=True)
        if event.phase == "assign":
            for node, matches in event.data.get("assignments", {}).items():
                shown = ", ".join(f"{m['agent_id']} (α={m['score']:.2f})" for m in matches)
                print(f"{'':>20}{node}: {shown}", file=sys.stderr)


def result_json(result: JobResult) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "status": result.status,
        "answer": result.answer,
        "failure_reason": result.failure_reason,
        "dag": result.dag,
        "assignments": result.assignments,
        "clusters": result.clusters,
        "rounds": result.rounds,
        "usage": result.usage,
        "timings": result.timings,
    }


def print_result(result: JobResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result_json(result), indent=2))
    else:
        if result.dag:
            print(draw_dag(result.dag, result.rounds), file=sys.stderr)
        if result.status == "completed":
            print(result.answer)
        else:
            print(f"job {result.job_id} failed: {result.failure_reason}", file=sys.stderr)
        usage = result.usage or {}
        print(
            f"\n[{result.job_id}] {result.status} in {result.timings.get('total', 0):.1f}s, "
            f"{usage.get('tokens', 0)} tokens, cost {usage.get('cost', 0):.4f}",
            file=sys.stderr,
        )
    return 0 if result.status == "completed" else 1


def draw_dag(dag: dict[str, Any], rounds: dict[str, Any] | None = None) -> str:
    """The DAG in the terminal: nodes in topological order, their inputs and who answered."""
    lines = ["DAG:"]
    edges = dag.get("edges", [])
    for node in dag.get("nodes", []):
        deps = [src for src, dst in edges if dst == node["id"]]
        arrow = f"  ← {', '.join(deps)}" if deps else ""
        lines.append(f"  [{node['id']}] {node['text'][:80]}{arrow}")
        for cid, info in (rounds or {}).get(node["id"], {}).items():
            lines.append(
                f"        {cid}: {', '.join(info['members'])} · {info['rounds']} round(s), {info['stopped']} → {info['representative']}"
            )
    return "\n".join(lines)


# ---- commands ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.spec import load_specs
    from fabric.federation import LocalFederation

    options, budget = _options(args, settings, profile=True)
    specs = load_specs(args.specs) if args.specs else None
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> JobResult:
        progress = Progress(quiet=False)
        print("starting federation (broker, router, orchestrator, agents)...", file=sys.stderr, flush=True)
        # a one-shot run answers its own question; unfinished jobs wait for `foa up` / `foa orchestrator`
        async with LocalFederation(settings, specs, resume_jobs=False) as fed:
            print(f"federation up: {len(fed.agents)} agents on {fed.address.url if fed.address else '?'}", file=sys.stderr, flush=True)
            return await fed.run_job(
                args.question, options, budget=budget, policies=args.policy, job_id=args.job_id, on_event=progress, timeout=args.timeout
            )

    return print_result(asyncio.run(main()), args.json)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from agents.spec import load_specs
    from fabric.federation import LocalFederation
    from fabric.heap import freeze_startup_heap
    from fabric.runtime import RuntimeInfo, clear_runtime, write_runtime

    if not settings.broker_url:
        settings.embedded_broker_port = args.port  # busy (another program): LocalFederation takes a free one
    if not settings.llm_base_url:  # embedded model: the same small sizes as `foa run`
        settings.max_proposers = EMBEDDED_PROFILE["max_proposers"]
        settings.subtasks_max = EMBEDDED_PROFILE["subtasks_max"]
        settings.agents_per_node = EMBEDDED_PROFILE["agents_per_node"]
        settings.llm_max_tokens = EMBEDDED_PROFILE["max_tokens_per_call"]
    specs = load_specs(args.specs) if args.specs else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with LocalFederation(settings, specs, port_fallback=True) as fed:
            assert fed.address is not None
            freeze_startup_heap()  # a long-running service from here on
            write_runtime(settings, RuntimeInfo(broker_url=fed.address.url, pid=_pid(), started_at=time.time(), agents=[a.agent_id for a in fed.agents]))
            print(f"federation up on {fed.address.url}: {len(fed.agents)} agents, router, orchestrator", file=sys.stderr)
            print(f"  other shells: FOA_BROKER_URL={fed.address.url} foa agents | foa submit \"QUESTION\"", file=sys.stderr)
            print("  Ctrl+C to stop", file=sys.stderr, flush=True)
            try:
                await stop.wait()
            finally:
                clear_runtime(settings)
        print("federation stopped", file=sys.stderr)

    asyncio.run(main())
    return 0


def _pid() -> int:
    import os

    return os.getpid()


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.client import follow_federation
    from fabric.runtime import resolve_broker

    options, budget = _options(args, settings, profile=False)  # the federation's own sizes apply
    resolve_broker(settings)  # no federation at all: say so now rather than wait out --timeout

    async def main() -> JobResult:
        # follows the federation across restarts: re-reads .foa/federation.json, reconnects, re-sends by job id
        return await follow_federation(
            settings, lambda: resolve_broker(settings), args.question, job_id=args.job_id, options=options,
            budget=budget, policies=args.policy, on_event=Progress(), timeout=args.timeout,
        )

    return print_result(asyncio.run(main()), args.json)


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.orchestrator.store import open_store, shown_state

    if not settings.store_url and not settings.job_store_path.exists():
        print(f"no job store at {settings.job_store_path}", file=sys.stderr)
        return 1
    store = open_store(settings, leases=False)
    rows = store.list(limit=args.limit)
    for r in rows:  # `orphaned`: unfinished, and no orchestrator holds it (its lease expired)
        r["state"] = shown_state(r)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "result"} for r in rows], indent=2))
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        print(f"{r['job_id']:<32} {r['state']:<10} {when}  {r['question'][:60]}")
    return 0


def cmd_job_show(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.orchestrator.store import open_store, shown_state

    store = open_store(settings, leases=False)
    row = store.get(args.job_id)
    if row is None:
        print(f"no job {args.job_id!r} in {settings.job_store_path}", file=sys.stderr)
        return 1
    events = store.events(args.job_id)
    if args.json:
        print(json.dumps(row | {"events": [e.model_dump() for e in events]}, indent=2, default=str))
        return 0
    print(f"job {row['job_id']}: {shown_state(row)} ({row['phase']})\nquestion: {row['question']}")
    result = row["result"] or {}
    if result.get("dag"):
        print(draw_dag(result["dag"], result.get("rounds")))
    for node, matches in (result.get("assignments") or {}).items():
        print(f"  {node}: " + ", ".join(f"{m['agent_id']} (α={m['score']:.2f})" for m in matches))
    if result.get("answer"):
        print("\nanswer:\n" + result["answer"])
    if row["failure"]:
        print(f"\nfailure: {row['failure']}")
    print(f"\n{len(events)} events; `foa job show {args.job_id} --json` for all")
    return 0


def cmd_orchestrator(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.orchestrator.service import run_orchestrator
    from fabric.runtime import resolve_broker

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_orchestrator(settings, broker=resolve_broker(settings), stop=stop)

    asyncio.run(main())
    return 0
