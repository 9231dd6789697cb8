"""The `foa` command. Each subcommand group lives in its own module with a `register(sub)`.

A module adds its parsers and sets `func=` on them (and `validate=`, `needs_broker=`: see
fabric/cli/resolve.py); `main` checks the arguments, resolves the broker, then dispatches.
Modules import their heavy dependencies inside the handler, so `foa --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

from pydantic import ValidationError

from fabric.cli.resolve import UsageError, prepare
from fabric.errors import readable
from fabric.logs import setup_logging
from fabric.settings import Settings
from fabric.transports.paho import install_paho_speedups

#: how long a SIGTERM waits for the graceful stop before it interrupts where the program is
SIGTERM_GRACE_S = 30.0

#: subcommand modules, in help order
MODULES = [
    "fabric.cli.federation",  # up, run, submit, jobs, job, orchestrator
    "fabric.cli.agents",  # agents, agent run, schema
    "fabric.cli.routing",  # route, router
    "fabric.cli.security",  # creds, acl, keys
    "fabric.cli.status",  # status
    "fabric.cli.ui",  # ui
    "fabric.cli.interop",  # a2a serve, mcp serve (agent a2a / agent mcp live under `agent`)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foa", description="Federation of Agents: a semantic fabric over MQTT v5")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = Settings()
    except ValidationError as exc:  # a bad FOA_* variable: name it, not pydantic's dump
        names = {field: f"FOA_{field.upper()}" for field in Settings.model_fields}
        print(f"foa: error: bad setting {readable(exc, names)}", file=sys.stderr)
        return 2
    if args.log_format:
        settings.log_format = args.log_format
    setup_logging(settings, level=logging.DEBUG if args.verbose else None)
    install_paho_speedups()  # every service a subcommand starts talks MQTT through paho
    terminated: list[bool] = []
    try:
        with sigterm_as_sigint(terminated):
            prepare(args, settings)  # arguments, then the broker: before anything starts
            return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        if terminated:
            print("foa: stopped (SIGTERM)", file=sys.stderr)
            return 143
        return 130
    except UsageError as exc:
        print(f"foa: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a CLI prints a clear error, not a traceback (-v shows it)
        if args.verbose:
            raise
        print(f"foa: error: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def sigterm_as_sigint(came: list[bool], grace_s: float = SIGTERM_GRACE_S) -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a supervisor) does what Ctrl-C does: asyncio cancels the main
    task, so `async with` blocks close what they started (a `foa run`'s embedded broker, agents
    and job store) and the command exits 143. Without it a terminated `foa run` died at once and
    left its mosquitto for init to reap. Services that handle SIGTERM themselves (`foa up`,
    `foa router`, ...) replace this handler while their loop runs. `came` records that it came.

    A program started with SIGINT ignored (a shell script's background job: `foa run ... &`) never
    sees the SIGINT this raises, so there SIGTERM raises KeyboardInterrupt at once, where the
    program is (asyncio then cancels every task, so the same blocks still close). Two full test
    runs started as background jobs failed that way: the SIGTERM'd `foa run` went on with its job.
    A second SIGTERM, or the first one still unanswered after `grace_s` (a cancellation lost on the
    way), does the same."""

    def on_sigterm(signum: int, frame: object) -> None:
        if came or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            came.append(True)
            raise KeyboardInterrupt
        came.append(True)
        again = threading.Timer(grace_s, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()
        signal.raise_signal(signal.SIGINT)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
