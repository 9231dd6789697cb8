"""`foa agent a2a URL`, `foa agent mcp (--stdio CMD | --url URL)`, `foa a2a serve`, `foa mcp serve`.

The gateways and servers need the `interop` extra (`pip install -e ".[interop]"`, done by
scripts/bootstrap.sh); they are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from fabric.settings import Settings


def register_agent_actions(agent_sub: Any) -> None:
    """Add `a2a` and `mcp` under the existing `foa agent` group (fabric/cli/agents.py)."""
    p = agent_sub.add_parser("a2a", help="join an A2A agent (its agent card) to the federation until interrupted")
    p.add_argument("url", help="base URL of the A2A agent; the card is read from /.well-known/agent-card.json")
    p.add_argument("--id", default=None, help="agent id in the federation (default: from the card's name)")
    p.add_argument(
        "--spec", default=None, help="overrides YAML: policies, resources/costs, auth (see fabric/interop/specs.py)"
    )
    p.set_defaults(func=cmd_agent_a2a)

    p = agent_sub.add_parser("mcp", help="join an MCP server's tools to the federation until interrupted")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--stdio", default=None, metavar="CMD", help='command line of a stdio server, e.g. "python server.py"'
    )
    where.add_argument("--url", default=None, help="streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp")
    p.add_argument("--per-tool", action="store_true", help="one agent per tool (default: one agent per server)")
    p.add_argument("--id", default=None, help="agent id (default: from the server's name); per tool: the id prefix")
    p.add_argument("--spec", default=None, help="overrides YAML: policies, resources/costs, auth, timeouts")
    p.set_defaults(func=cmd_agent_mcp)


def register(sub: Any) -> None:
    p = sub.add_parser("a2a", help="the federation as an A2A agent")
    a2a_sub = p.add_subparsers(dest="a2a_command", metavar="ACTION")
    serve = a2a_sub.add_parser(
        "serve", help="serve the agent card and A2A JSON-RPC (message/send, message/stream, tasks/*)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9100)
    serve.add_argument("--public-url", default=None, help="URL clients reach this server at (default http://HOST:PORT)")
    serve.set_defaults(func=cmd_a2a_serve)

    p = sub.add_parser("mcp", help="the federation as an MCP server")
    mcp_sub = p.add_subparsers(dest="mcp_command", metavar="ACTION")
    serve = mcp_sub.add_parser("serve", help="serve tools ask, route, agents over stdio (or --http PORT)")
    serve.add_argument(
        "--http", type=int, default=None, metavar="PORT", help="streamable HTTP on PORT at /mcp instead of stdio"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.set_defaults(func=cmd_mcp_serve)


def _broker(settings: Settings) -> Any:
    from fabric.runtime import resolve_broker

    return resolve_broker(settings)


def cmd_agent_a2a(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.interop.a2a_gateway import A2AGateway
    from fabric.interop.runner import run_until_signal
    from fabric.interop.specs import load_gateway_spec

    spec = load_gateway_spec(args.spec)
    gateway = A2AGateway(args.url, settings, spec=spec, agent_id=args.id, broker=_broker(settings))
    asyncio.run(run_until_signal(gateway))
    return 0


def cmd_agent_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.interop.mcp_gateway import MCPGateway
    from fabric.interop.runner import run_until_signal
    from fabric.interop.specs import MCPConfig, load_gateway_spec
    from fabric.llm import backend_for

    spec = load_gateway_spec(args.spec)
    base = spec.mcp.model_dump(exclude={"stdio", "url"}) if spec.mcp else {}
    config = MCPConfig(**base, stdio=args.stdio, url=args.url)
    if args.per_tool:
        config = config.model_copy(update={"per_tool": True})
    if args.id:
        spec = spec.model_copy(update={"id": args.id})
    gateway = MCPGateway(config, settings, spec=spec, backend=backend_for(settings), broker=_broker(settings))
    asyncio.run(run_until_signal(gateway))
    return 0


def cmd_a2a_serve(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.interop.a2a_server import serve

    asyncio.run(serve(settings, host=args.host, port=args.port, public_url=args.public_url))
    return 0


def cmd_mcp_serve(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.interop.mcp_server import serve

    asyncio.run(serve(settings, http_port=args.http, host=args.host))
    return 0
