"""`foa ui`: serve the live web console of the running federation."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from fabric.settings import Settings

DEFAULT_PORT = 8780


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="serve a live web console: agents, capability map, route playground, jobs",
        description="Finds the federation like the other commands (`foa up` in this directory, or FOA_BROKER_URL).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--allow-submit", action="store_true",
                   help="let the console submit and cancel jobs (read-only by default)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from fabric.ui.app import create_app, make_server
    except ModuleNotFoundError as exc:
        print(f"foa ui: {exc.name} is not installed: pip install -e '.[ui]' (or run scripts/bootstrap.sh)",
              file=sys.stderr)
        return 2
    from fabric.runtime import resolve_broker

    if args.allow_submit and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"foa ui: warning: --allow-submit on {args.host}: anyone who reaches this port can submit and cancel "
              "jobs (the console has no login; put it behind an authenticating proxy)", file=sys.stderr)
    broker = resolve_broker(settings)
    server = make_server(create_app(settings, broker, allow_submit=args.allow_submit), args.host, args.port)
    mode = "submit and cancel enabled" if args.allow_submit else "read-only; --allow-submit to submit jobs"
    print(f"FoA console on http://{args.host}:{args.port}/ (broker {broker.host}:{broker.port}; {mode}); "
          "Ctrl+C to stop", file=sys.stderr, flush=True)
    asyncio.run(server.serve())
    return 0 if server.started else 1
