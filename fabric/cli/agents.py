"""`foa agents`, `foa agent run SPEC.yaml`, `foa agent host SPEC...`, `foa agent a2a|mcp`, `foa schema`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

from fabric.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agents", help="list the federation's live agents")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--all", action="store_true", help="include offline agents")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the retained snapshot")
    p.set_defaults(func=cmd_agents, needs_broker=True)

    p = sub.add_parser("agent", help="run one agent")
    agent_sub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    run = agent_sub.add_parser("run", help="run an LLM worker from a YAML spec until interrupted")
    run.add_argument("spec", help="path to the agent's YAML spec")
    run.add_argument("--replica-id", default=None, help="stable id of this replica (default: random)")
    run.set_defaults(func=cmd_agent_run, needs_broker=True)
    host = agent_sub.add_parser(
        "host", help="run many agents' LLM workers on one connection (specs or folders of specs)"
    )
    host.add_argument("specs", nargs="+", help="YAML specs, or folders of them")
    host.add_argument(
        "--host-id",
        default=None,
        help="stable id of this host: a restarted host takes over its session (default: random)",
    )
    host.set_defaults(func=cmd_agent_host, needs_broker=True)
    from fabric.cli.interop import register_agent_actions  # foa agent a2a URL, foa agent mcp

    register_agent_actions(agent_sub)

    p = sub.add_parser("schema", help="print the JSON Schema of every message")
    p.add_argument("--kind", default=None, help="only this message kind")
    p.set_defaults(func=cmd_schema)


async def fetch_agents(settings: Settings, wait: float, include_offline: bool = False) -> list[dict[str, Any]]:
    """The live registry's agents as `foa agents --json` prints them (`Client.agents`)."""
    from fabric.remote import Client

    async with Client(settings) as client:
        return [a.model_dump() for a in await client.agents(include_offline=include_offline, wait=wait)]


def cmd_agents(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(fetch_agents(settings, args.wait, include_offline=args.all))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no live agents")
        return 0
    print(f"{'AGENT':<22} {'VER':>4} {'STATUS':<8} {'$/1k in/out':<16} SKILLS")
    for r in rows:
        cost = f"{r['cost_per_1k_input']:.4f}/{r['cost_per_1k_output']:.4f}"
        skills = ", ".join(r["skills"])
        print(f"{r['agent_id']:<22} {r['version']:>4} {r['status']:<8} {cost:<16} {skills[:60]}")
    return 0


def cmd_agent_run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.spec import load_spec
    from agents.worker import run_worker

    spec = load_spec(args.spec)
    asyncio.run(run_worker(spec, settings, replica_id=args.replica_id))
    return 0


def cmd_agent_host(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from agents.spec import SpecError, load_spec, load_specs
    from agents.worker import run_host

    specs = []
    for item in args.specs:
        specs.extend(load_specs(item) if Path(item).is_dir() else [load_spec(item)])
    ids = [s.id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SpecError(f"agent ids given more than once: {dupes}")
    asyncio.run(run_host(specs, settings, host_id=args.host_id or f"host-{uuid.uuid4().hex[:8]}"))
    return 0


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.envelope import Envelope
    from fabric.messages import ALL_BODIES

    # the schema of an envelope around any JSON object (BodyT's bound, Body, is for typed use)
    envelope = Envelope[dict[str, Any]].model_json_schema(by_alias=True)  # type: ignore[type-var]
    schemas: dict[str, Any] = {"envelope": envelope}
    for body in ALL_BODIES:
        schemas[body.KIND] = body.model_json_schema()
    if args.kind:
        if args.kind not in schemas:
            print(f"unknown kind {args.kind!r}; known: {', '.join(schemas)}", file=sys.stderr)
            return 2
        schemas = {args.kind: schemas[args.kind]}
    print(json.dumps(schemas, indent=2))
    return 0
