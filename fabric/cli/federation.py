"""`foa run`, `foa up`, `foa submit`, `foa jobs`, `foa job show|cancel`, `foa orchestrator`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError

from fabric.cli.resolve import UsageError, at_least, require_text
from fabric.errors import readable
from fabric.messages import Budget, ClusterSummary, DagSummary, JobEvent, JobOptions, JobResult
from fabric.settings import Settings
from fabric.transports.base import BusError

#: `foa run` on the embedded CPU model: small enough to answer in well under 3 minutes on 2 cores
EMBEDDED_PROFILE = {"max_proposers": 2, "subtasks_max": 3, "agents_per_node": 2, "max_tokens_per_call": 128}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="answer a question with a whole federation in this process (the main job)")
    p.add_argument("question")
    _job_options(p)
    p.add_argument("--specs", default=None, help="folder of agent specs (default: the shipped agents)")
    p.set_defaults(func=cmd_run, validate=check_job_args)

    p = sub.add_parser("up", help="run a local federation (broker, router, orchestrator, agents) until interrupted")
    p.add_argument("--specs", default=None, help="folder of agent specs (default: the shipped agents)")
    p.add_argument("--port", type=int, default=1883, help="embedded broker port (default 1883; 0 = any free port)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("submit", help="send a job to a running federation and follow it")
    p.add_argument("question")
    _job_options(p)
    p.add_argument(
        "--conversation", default=None, metavar="ID",
        help="continue this conversation (the id printed after an earlier answer); default: start one",
    )
    p.set_defaults(func=cmd_submit, validate=check_submit_args, needs_broker=True)

    p = sub.add_parser("jobs", help="list jobs in the local job store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs, validate=lambda a: at_least(a.limit, 1, "--limit"))

    p = sub.add_parser("job", help="inspect one job")
    job_sub = p.add_subparsers(dest="job_command", metavar="ACTION")
    show = job_sub.add_parser("show", help="show a job: state, DAG, who did what, answer")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_job_show)
    cancel = job_sub.add_parser("cancel", help="cancel a running job: it ends `canceled` with its usage so far")
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default="canceled from the command line")
    cancel.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the job's result (0: do not wait)"
    )
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(func=cmd_job_cancel, needs_broker=True)

    p = sub.add_parser("orchestrator", help="run the orchestrator service")
    p.set_defaults(func=cmd_orchestrator, needs_broker=True)


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
    p.add_argument(
        "--plan", choices=["auto", "always", "never"], default=None,
        help="auto (FOA_PLAN's default): no plan when one agent clearly fits the whole question; "
        "always: plan every job; never: one node, the question verbatim",
    )
    p.add_argument("--no-clustering", action="store_true")
    p.add_argument("--random-routing", action="store_true", help="assign agents at random (baseline)")
    p.add_argument("--budget-tokens", type=int, default=None)
    p.add_argument("--budget-cost", type=float, default=None)
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole job")
    p.add_argument("--timeout", type=float, default=900.0, help="give up following after this many seconds")


def check_job_args(args: argparse.Namespace) -> None:
    """`foa run` / `foa submit` arguments, checked before a broker or an agent starts."""
    require_text(args.question, "the question", f'foa {args.command} "what are the health benefits of cycling?"')
    for flag, value, minimum in (
        ("--proposers", args.proposers, 1),
        ("--subtasks", args.subtasks, 1),
        ("--agents-per-node", args.agents_per_node, 1),
        ("--rounds", args.rounds, 0),
        ("--max-tokens", args.max_tokens, 8),
        ("--budget-tokens", args.budget_tokens, 1),
        ("--budget-cost", args.budget_cost, 0),
    ):
        at_least(value, minimum, flag)
    at_least(args.deadline, 0, "--deadline", strict=True)
    at_least(args.timeout, 0, "--timeout", strict=True)
    try:  # whatever the models add beyond the checks above
        _options(args, Settings(), profile=False)
    except ValidationError as exc:
        raise UsageError(readable(exc, _FLAGS)) from None


def check_submit_args(args: argparse.Namespace) -> None:
    """`foa submit`: the job's arguments and the conversation id."""
    from fabric.remote import check_conversation_id

    check_job_args(args)
    if args.conversation is not None:
        try:
            check_conversation_id(args.conversation)
        except ValueError as exc:
            raise UsageError(f"--conversation: {exc}") from None


#: JobOptions / Budget fields → the flags that set them (for error messages)
_FLAGS = {
    "max_proposers": "--proposers",
    "subtasks_max": "--subtasks",
    "agents_per_node": "--agents-per-node",
    "refine_rounds": "--rounds",
    "max_tokens_per_call": "--max-tokens",
    "synth_mode": "--synth",
    "plan": "--plan",
    "max_tokens": "--budget-tokens",
    "max_cost": "--budget-cost",
    "deadline_s": "--deadline",
}


def _options(args: argparse.Namespace, settings: Settings, profile: bool) -> tuple[JobOptions, Budget]:
    base: dict[str, Any] = dict(EMBEDDED_PROFILE) if profile and not settings.llm_base_url else {}
    given = {
        "max_proposers": args.proposers,
        "subtasks_max": args.subtasks,
        "agents_per_node": args.agents_per_node,
        "refine_rounds": args.rounds,
        "max_tokens_per_call": args.max_tokens,
        "synth_mode": args.synth,
        "plan": args.plan,
    }
    base.update({k: v for k, v in given.items() if v is not None})
    options = JobOptions(
        **base, clustering=not args.no_clustering, routing="random" if args.random_routing else "routed"
    )
    budget = Budget(max_tokens=args.budget_tokens, max_cost=args.budget_cost, deadline_s=args.deadline)
    return options, budget


def _votes(e: JobEvent) -> str | None:
    votes = e.data.get("votes") or {}
    return ", ".join(f"{a}: {'done' if v else 'again'}" for a, v in votes.items()) or None


#: a detail line under the event of each task kind's phase (a test checks every registered kind has one)
KIND_PROGRESS: dict[str, Callable[[JobEvent], str | None]] = {
    "decompose": lambda e: ", ".join(p["agent_id"] for p in e.data.get("proposers", [])) or None,
    "draft": lambda e: ", ".join(e.data.get("drafts", {})) or None,
    "refine": _votes,
    "synthesise": lambda e: f"{e.data['mode']} synthesis, {e.data['chars']} characters" if "mode" in e.data else None,
}


class Progress:
    """Live progress on stderr: one line per event, with elapsed time, and a detail line for
    assignments and for each task kind's phase."""

    def __init__(self, quiet: bool = False) -> None:
        self.started = time.monotonic()
        self.quiet = quiet

    def __call__(self, event: JobEvent) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {event.phase:<10} {event.message}", file=sys.stderr, flush=True)
        if event.phase == "assign":
            left_out = event.data.get("left_out", {})
            for node, matches in event.data.get("assignments", {}).items():
                shown = ", ".join(f"{m['agent_id']} (α={m['score']:.2f})" for m in matches)
                out = "".join(f"; left out {o['agent_id']} (α={o['score']:.3g} < {o['floor']:.3g})"
                              for o in left_out.get(node, []))
                print(f"{'':>20}{node}: {shown}{out}", file=sys.stderr)
        for dropped in event.data.get("dropped", []) if event.phase == "plan_check" else []:
            print(f"{'':>20}dropped {dropped['text'][:60]!r}: {dropped['reason']}", file=sys.stderr)
        detail = KIND_PROGRESS.get(event.phase)
        line = detail(event) if detail is not None else None
        if line:
            print(f"{'':>20}{line}", file=sys.stderr)


RESULT_FIELDS = (
    "job_id",
    "status",
    "answer",
    "failure_reason",
    "dag",
    "assignments",
    "clusters",
    "rounds",
    "usage",
    "warnings",
    "timings",
)


def result_json(result: JobResult) -> dict[str, Any]:
    return result.model_dump(mode="json", include=set(RESULT_FIELDS))


def print_result(result: JobResult, as_json: bool, conversation: str | None = None) -> int:
    """The result on stdout (text or `--json`); `conversation`: the id a follow-up passes
    (`foa submit --conversation ID`), printed after the answer and in the JSON object."""
    if as_json:
        print(json.dumps(result_json(result) | ({"conversation_id": conversation} if conversation else {}), indent=2))
    else:
        if result.dag.nodes:
            print(draw_dag(result.dag, result.rounds), file=sys.stderr)
        if result.status == "completed":
            print(result.answer)
            for warning in result.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        else:
            print(f"job {result.job_id} {result.status}: {result.failure_reason}", file=sys.stderr)
        print(
            f"\n[{result.job_id}] {result.status} in {result.timings.get('total', 0):.1f}s, "
            f"{result.usage.tokens} tokens, cost {result.usage.cost:.4f}",
            file=sys.stderr,
        )
        if conversation:
            print(f"conversation: {conversation}  (follow up: foa submit --conversation {conversation} \"...\")",
                  file=sys.stderr)
    return 0 if result.status == "completed" else 1


def draw_dag(dag: DagSummary, rounds: dict[str, dict[str, ClusterSummary]] | None = None) -> str:
    """The DAG in the terminal: nodes in topological order, their inputs and who answered."""
    lines = ["DAG:"]
    for node in dag.nodes:
        deps = dag.depends_on(node.id)
        arrow = f"  ← {', '.join(deps)}" if deps else ""
        lines.append(f"  [{node.id}] {node.text[:80]}{arrow}")
        for cid, info in (rounds or {}).get(node.id, {}).items():
            outcome = f"{info.rounds} round(s), {info.stopped} → {info.representative}"
            lines.append(f"        {cid}: {', '.join(info.members)} · {outcome}")
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
            print(
                f"federation up: {len(fed.agents)} agents on {fed.address.url if fed.address else '?'}",
                file=sys.stderr,
                flush=True,
            )
            return await fed.run_job(
                args.question,
                options,
                budget=budget,
                policies=args.policy,
                job_id=args.job_id,
                on_event=progress,
                timeout=args.timeout,
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
        async with _joining(settings), LocalFederation(settings, specs, port_fallback=True) as fed:
            assert fed.address is not None
            freeze_startup_heap()  # a long-running service from here on
            write_runtime(
                settings,
                RuntimeInfo(
                    broker_url=fed.address.url,
                    pid=_pid(),
                    started_at=time.time(),
                    agents=[a.agent_id for a in fed.agents],
                ),
            )
            print(
                f"federation up on {fed.address.url}: {len(fed.agents)} agents, router, orchestrator", file=sys.stderr
            )
            print(
                f"  other shells: FOA_BROKER_URL={fed.address.url} foa agents | foa submit \"QUESTION\"",
                file=sys.stderr,
            )
            print("  web console: foa ui (then open http://127.0.0.1:8780/)", file=sys.stderr)
            print("  Ctrl+C to stop", file=sys.stderr, flush=True)
            try:
                await stop.wait()
            finally:
                clear_runtime(settings)
        print("federation stopped", file=sys.stderr)

    asyncio.run(main())
    return 0


@contextlib.asynccontextmanager
async def _joining(settings: Settings) -> AsyncIterator[None]:
    """`foa up` with FOA_BROKER_URL set joins that broker instead of starting one: a broker that is
    not there must say so, or the user chases a port they never gave (seen in use: `--port 1885`
    and a URL left exported from another shell)."""
    try:
        yield
    except BusError as exc:
        if not settings.broker_url:
            raise
        raise UsageError(
            f"{exc} (FOA_BROKER_URL={settings.broker_url} is set, so `foa up` joins that broker instead of "
            "starting its own: start that broker, or unset FOA_BROKER_URL)"
        ) from exc


def _pid() -> int:
    import os

    return os.getpid()


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.remote import Client

    options, budget = _options(args, settings, profile=False)  # the federation's own sizes apply
    # `main` resolved the broker once (settings.broker_url); to follow a `foa up` that restarts on
    # another port, every reconnect looks again: FOA_BROKER_URL if set, else .foa/federation.json
    unresolved = settings.model_copy(update={"broker_url": Settings().broker_url})

    async def main() -> tuple[JobResult, str]:
        # the Python client's path: follows the federation across restarts (re-reads
        # .foa/federation.json, reconnects, re-sends by job id); every answer is a conversation's turn
        async with Client(unresolved, timeout=args.timeout) as client:
            conversation = client.conversation(args.conversation)
            result = await conversation.ask(
                args.question, job_id=args.job_id, options=options, budget=budget, policies=args.policy,
                on_event=Progress(),
            )  # fmt: skip
            return result, conversation.id

    result, conversation = asyncio.run(main())
    return print_result(result, args.json, conversation)


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
    for conversation, jobs in group_by_conversation(rows):
        if len(jobs) > 1:  # a conversation's turns together, oldest first, under its id
            print(f"conversation {conversation} ({len(jobs)} turns):")
        for r in jobs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
            indent = "  " if len(jobs) > 1 else ""
            print(f"{indent}{r['job_id']:<{32 - len(indent)}} {r['state']:<10} {when}  {r['question'][:60]}")
    return 0


def group_by_conversation(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Jobs (newest first) grouped by conversation: the conversation with the newest job first,
    each conversation's jobs oldest first (the order its turns were asked in)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("conversation_id") or r["job_id"]), []).append(r)
    return [(c, sorted(jobs, key=lambda r: r["created_at"])) for c, jobs in groups.items()]


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
    print(f"conversation: {row['conversation_id']}")
    result = JobResult.model_validate(row["result"]) if row["result"] else None
    if result is not None and result.dag.nodes:
        print(draw_dag(result.dag, result.rounds))
    for node, matches in (result.assignments if result else {}).items():
        print(f"  {node}: " + ", ".join(f"{m.agent_id} (α={m.score:.2f})" for m in matches))
    if result is not None and result.answer:
        print("\nanswer:\n" + result.answer)
    if row["failure"]:
        print(f"\nfailure: {row['failure']}")
    print(f"\n{len(events)} events; `foa job show {args.job_id} --json` for all")
    return 0


def cmd_job_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Publish the cancel, then wait (up to --wait s) for the job's retained result (`Client.cancel`)."""
    from fabric import topics
    from fabric.remote import Client

    topics.validate_id(args.job_id, "job id")

    async def main() -> JobResult | None:
        async with Client(settings) as client:
            return await client.cancel(args.job_id, args.reason, wait=args.wait)

    result = asyncio.run(main())
    status = result.status if result else None
    if args.json:
        print(
            json.dumps(
                {"job_id": args.job_id, "status": status, "failure_reason": result.failure_reason if result else None}
            )
        )
    elif result is None and args.wait > 0:
        print(
            f"cancel sent for {args.job_id}; no result within {args.wait:.0f}s (is the job's orchestrator running?)",
            file=sys.stderr,
        )
    elif result is None:
        print(f"cancel sent for {args.job_id}")
    else:  # canceled, or it had already ended (then the cancel changed nothing)
        print(f"job {args.job_id}: {status}" + (f" ({result.failure_reason})" if result.failure_reason else ""))
    return 1 if result is None and args.wait > 0 else 0


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
