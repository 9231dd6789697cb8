"""A worker PROCESS whose LLM is scripted: for the chaos benchmark and its test ONLY.

It is `foa agent run SPEC.yaml --replica-id R` with one difference: the LLM behind the worker is
a `ScriptedLLM` (tests/scripted_federation.py) that answers the decompose / draft / refine
schemas instantly from a canned script, so a chaos run measures the fabric, not a model. The
agent itself (SDK, bus, VCV, inbox, de-duplication, last-will) is the production one, and no
production code path knows this file exists.

    python benchmarks/_scripted_worker.py SPEC.yaml --replica-id r1 [--latency-s 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.spec import AgentSpec, load_spec
from agents.worker import make_worker
from fabric.llm.scripted import ScriptedLLM
from fabric.logs import setup_logging
from fabric.runtime import resolve_broker
from fabric.settings import Settings
from tests.scripted_federation import scripted_answer


async def serve(spec: AgentSpec, settings: Settings, replica_id: str, latency_s: float) -> None:
    backend = ScriptedLLM(scripted_answer(spec.id, done_from_round=2), latency_s=latency_s, name=f"scripted-{spec.id}")
    agent = make_worker(spec, settings, backend=backend, broker=resolve_broker(settings), replica_id=replica_id)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.stop()))
    await agent.start()
    try:
        await agent.wait_stopped()
    finally:
        await agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="path to the agent's YAML spec")
    ap.add_argument("--replica-id", required=True, help="stable replica id (a restart takes over its broker session)")
    ap.add_argument("--latency-s", type=float, default=0.05, help="seconds each scripted LLM call takes")
    args = ap.parse_args()
    settings = Settings()
    setup_logging(settings)
    asyncio.run(serve(load_spec(args.spec), settings, args.replica_id, args.latency_s))


if __name__ == "__main__":
    main()
