"""`foa route` (ask the running federation's router) and `foa router` (run a router replica)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from fabric.cli.resolve import at_least, require_text
from fabric.settings import Settings


def register(sub: Any) -> None:
    route = sub.add_parser(
        "route",
        help="rank the agents of the running federation for a task (or --calibrate abstention)",
        description="Talks to a running federation: FOA_BROKER_URL, else the `foa up` running in this directory.",
    )
    route.add_argument("text", nargs="?", help="the task to route")
    route.add_argument("--top-k", type=int, default=5)
    route.add_argument("--policy", action="append", default=[], metavar="FLAG", help="required clearance (repeatable)")
    route.add_argument("--skill", action="append", default=[], metavar="S", help="required skill (repeatable)")
    route.add_argument("--max-cost", type=float, default=None, help="remaining budget for this task")
    route.add_argument("--deadline-ms", type=float, default=None, help="latest acceptable expected latency")
    route.add_argument("--input-tokens", type=int, default=500)
    route.add_argument("--output-tokens", type=int, default=300)
    route.add_argument("--no-abstain", action="store_true", help="always return the best agents")
    route.add_argument("--calibrate", action="store_true",
                       help="fit the abstention model (router/abstention.py) on probes built from the live "
                            "agents' descriptions and off-topic texts")
    route.add_argument("--save", action="store_true",
                       help="with --calibrate: write it to <data_dir>/router/calibration.json (routers load it "
                            "at start and when it changes)")
    route.add_argument("--status", action="store_true",
                       help="print a router replica's status: agents, the abstention in force and where it came "
                            "from, what it learned from outcomes")
    route.add_argument("--timeout", type=float, default=None, help="seconds to wait for the router")
    route.add_argument("--json", action="store_true", help="print one JSON object")
    route.set_defaults(func=_route, validate=_check_route, needs_broker=True)

    router = sub.add_parser("router", help="run a router replica (index + scoring) until interrupted")
    router.add_argument("--no-snapshot", action="store_true", help="neither restore nor write <data_dir>/router/index")
    router.set_defaults(func=_router, needs_broker=True)


def _check_route(args: argparse.Namespace) -> None:
    if not (args.calibrate or args.status):
        require_text(args.text, "the task text", 'foa route "summarise this contract"')
    at_least(args.top_k, 1, "--top-k")
    at_least(args.timeout, 0, "--timeout", strict=True)


def _route(args: argparse.Namespace, settings: Settings) -> int:
    if args.calibrate:
        return asyncio.run(_calibrate(args, settings))
    if args.status:
        return asyncio.run(_status(args, settings))
    return asyncio.run(_route_once(args, settings))


async def _route_once(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.bus import RemoteError
    from fabric.errors import ConfigError
    from fabric.remote import Client

    async with Client(settings) as client:
        try:
            response = await client.route(
                args.text, top_k=args.top_k, policies=args.policy, timeout=args.timeout, skills=args.skill,
                max_cost=args.max_cost, deadline_ms=args.deadline_ms, input_tokens=args.input_tokens,
                output_tokens=args.output_tokens, abstain=not args.no_abstain,
            )  # fmt: skip
        except ConfigError as exc:
            print(f"foa route: {exc}", file=sys.stderr)
            return 2
        except RemoteError as exc:
            print(f"foa route: the router refused the query: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(response.model_dump(mode="json")))
        return 0
    if response.abstained:
        thr = "none" if response.threshold is None else f"{response.threshold:.3f}"
        print(f"no capable agent: best score below the calibrated threshold {thr}")
        return 0
    if not response.matches:
        print("no agent passes the gates" + (f" ({response.blocked} blocked)" if response.blocked else ""))
        return 0
    for rank, m in enumerate(response.matches, 1):
        f = m.factors
        print(f"{rank:>2}. {m.agent_id} v{m.version}  score {m.score:.4f}  "
              f"sim {f.get('sim', 0):.3f} lexical {f.get('lexical', 0):.3f} resources {f.get('resources', 0):.3f} "
              f"spec {f.get('spec', 0):.3f} reputation {f.get('reputation', 0):.2f}  "
              f"cost {m.expected_cost:.4g} latency {m.expected_latency_ms:.0f} ms"
              + learned_note(f))
    thr = "none" if response.threshold is None else f"{response.threshold:.3f}"
    print(f"({response.candidates_considered} candidates re-scored, {response.blocked} blocked by gates, "
          f"abstention threshold {thr})")
    return 0


def learned_note(factors: dict[str, float]) -> str:
    """What outcomes added to this match (router/learning.py), when they added anything."""
    lift, words = factors.get("learned_lift", 0.0), factors.get("learned_words", 0.0)
    return f"  learned: sim +{lift:.3f}, lexical +{words:.3f}" if lift > 0 or words > 0 else ""


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.remote import Client

    async with Client(settings) as client:
        status = await client.router_status(timeout=args.timeout)
    if args.json:
        print(json.dumps(status.model_dump(mode="json")))
        return 0
    ab, learning = status.abstention, status.learning
    where = ab.get("provenance", {}).get("source", "unknown")
    print(f"router: {status.agents} agents ({'synced' if status.synced else 'syncing'}), {status.embedding_model}")
    print(f"abstention: {ab.get('kind') or 'none'}, α threshold {ab.get('alpha_threshold')}, from {where}")
    refused = status.counters.get("rejected_outcomes", 0)
    print(f"learning: {learning.get('agents', 0)} agents with a learned view, {learning.get('applied', 0)} outcomes "
          f"applied, {learning.get('rate_limited', 0)} paced out, {refused} refused")
    return 0


async def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from fabric import topics
    from fabric.bus import Bus, Incoming
    from fabric.messages import RouteQuery
    from fabric.vcv import VCV
    from router.abstention import Top
    from router.calibration import OFF_TOPIC, relevant_probes
    from router.client import RouterClient
    from router.service import calibration_path, fit_probes

    descriptions: dict[str, str] = {}
    models: set[str] = set()
    last = [time.monotonic()]

    def on_vcv(msg: Incoming) -> None:
        last[0] = time.monotonic()
        if msg.envelope is not None:
            vcv: VCV = msg.envelope.body
            descriptions[vcv.agent_id] = vcv.description
            models.add(vcv.embedding_model)

    async with Bus(settings, f"cli-calibrate-{os.urandom(4).hex()}", persistent=False) as bus:
        await bus.subscribe(topics.AGENT_VCV_WILDCARD, on_vcv, body_types=VCV)
        while time.monotonic() - last[0] < 1.0:
            await asyncio.sleep(0.2)
        if not descriptions:
            print("foa route --calibrate: no agent VCVs on the broker; start agents first", file=sys.stderr)
            return 1
        relevant = relevant_probes(list(descriptions.values())[:256])
        client = RouterClient(bus, timeout=args.timeout)
        tops: list[Top] = []
        for text in relevant + list(OFF_TOPIC):
            res = await client.route(RouteQuery(text=text, top_k=2, abstain=False))
            tops.append(Top.of_matches(res.matches))
    fitted = fit_probes(tops[: len(relevant)], tops[len(relevant):], agents=len(descriptions))
    info = fitted.provenance
    out: dict[str, Any] = {"threshold": fitted.alpha_threshold, "agents": len(descriptions), "f1": info["fit_f1"],
                           "precision": info["fit_precision"], "recall": info["fit_recall"],
                           "model": fitted.to_dict()}
    if args.save:
        path = calibration_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": fitted.to_dict(), "threshold": fitted.alpha_threshold,
                                    "embedding_model": sorted(models)[0], "agents": len(descriptions),
                                    "info": info, "written_at": time.time()}))
        out["saved"] = str(path)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"abstention model on {', '.join(fitted.features)} (p(relevant) cut {fitted.threshold:.3f} for a "
              f"false-accept rate ≤ {info['target_false_accept']}; about α {fitted.alpha_threshold:.4f}); on the "
              f"probes: F1 {info['fit_f1']:.3f}, precision {info['fit_precision']:.3f}, recall "
              f"{info['fit_recall']:.3f}; {info['relevant']} relevant / {info['irrelevant']} off-topic, "
              f"{len(descriptions)} agents" + (f"; saved to {out['saved']}" if args.save else ""))
    return 0


def _router(args: argparse.Namespace, settings: Settings) -> int:
    from router.service import run_router

    asyncio.run(run_router(settings, snapshot=not args.no_snapshot))  # SIGINT/SIGTERM: drain, snapshot, exit 0
    return 0
