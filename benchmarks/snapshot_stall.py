"""Where a background snapshot's event-loop stall comes from: the huge-page collapse or the fork.

router_scale.py reports one `max_loop_stall_ms` for the whole service snapshot
(router/service.py `snapshot_in_background`: `collapse_huge_pages` in a worker thread, then fork,
then the child writes). This splits it: a 1 ms asyncio ticker runs while each step runs alone on an
index of router_scale's synthetic agents, and every `madvise(MADV_COLLAPSE)` call is timed, so a
stall can be matched to the call it overlapped and to the size of the mapping being collapsed.

Reported:
  idle_stall_ms                the ticker's worst lateness with nothing else running (the floor)
  collapse.stall_ms            worst lateness while collapsing (`--step` huge pages per call,
                               mappings of at least `--min-mb`)
  collapse.call_ms             per-call p50 / p99 / max, and how many calls
  collapse.stalls_over_10ms    each stall over 10 ms: its length, and the overlapping call's length
                               and mapping size (MB)
  collapse.mapping_mb          the mappings collapsed (MB), largest first
  collapse_again               `--passes` > 1: the same for each later pass over memory already
                               collapsed (what a service's later snapshots pay)
  fork_ms / fork_stall_ms      the fork after the collapse, and the worst lateness of fork + the
                               child's whole write

By default every tick also routes one query (the loop touches the graphs and columns as a serving
router's does; `--no-queries`: the bare ticker, as in router_scale.py).

Usage: benchmarks/snapshot_stall.py --agents 100000 --views 8 --json [--step 16] [--min-mb 4] [--passes 2]
       [--no-queries]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from benchmarks.router_scale import DIM, MODEL, Population, Ticker
from fabric.heap import freeze_startup_heap
from router.engine import RouterEngine
from router.index import _HUGE, COLLAPSE_MIN_BYTES, CapabilityIndex, IndexConfig, collapse_huge_pages
from router.service import _off_loop


class StallLog(Ticker):
    """router_scale's ticker, keeping every stall over 10 ms with its start time; with `work`, each
    tick first runs it (a routed query: the loop then touches the graphs and columns, as a
    serving router does), and only the sleep's lateness counts."""

    def __init__(self, work: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.stalls: list[tuple[float, float]] = []
        self.work = work
        self.worked = 0

    async def run(self) -> None:
        while self.running:
            if self.work is not None:
                self.work()
                self.worked += 1
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            late = time.perf_counter() - t0 - 0.001
            if late > 0.010:
                self.stalls.append((t0, late))
            self.worst = max(self.worst, late)


async def watched(step: Any, work: Callable[[], object] | None = None) -> tuple[StallLog, Any]:
    ticker = StallLog(work)
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.05)
    ticker.reset()
    ticker.stalls.clear()
    try:
        out = await step()
    finally:
        ticker.running = False
        await task
    return ticker, out


async def measure(index: CapabilityIndex, step_pages: int, min_mb: int,
                  work: Callable[[], object] | None, passes: int = 1) -> dict[str, Any]:
    idle, _ = await watched(lambda: asyncio.sleep(2.0), work)
    calls: list[tuple[float, float, int]] = []

    def collapse() -> int:
        return collapse_huge_pages(min_bytes=min_mb << 20, step=step_pages * _HUGE,
                                   on_call=lambda a, b, size: calls.append((a, b, size)))

    blocks = []
    for n in range(passes):
        calls.clear()
        progress(f"collapse pass {n + 1}/{passes} ({step_pages} x 2 MB per call, mappings >= {min_mb} MB)")
        ticker, scanned = await watched(lambda: _off_loop(collapse), work)
        durations = np.array([b - a for a, b, _ in calls]) * 1000 if calls else np.zeros(1)
        stalls = []
        for t0, late in ticker.stalls:
            over = [(round((b - a) * 1000, 1), size >> 20) for a, b, size in calls
                    if b > t0 and a < t0 + late + 0.001]
            stalls.append({"stall_ms": round(late * 1000, 1), "calls_ms_and_mapping_mb": over[:3]})
        sizes = sorted({size for _, _, size in calls}, reverse=True)
        blocks.append({
            "stall_ms": round(ticker.worst * 1000, 2),
            "scanned_mb": scanned,
            "calls": len(calls),
            "call_ms": {"p50": round(float(np.median(durations)), 2),
                        "p99": round(float(np.percentile(durations, 99)), 2),
                        "max": round(float(durations.max()), 2)},
            "stalls_over_10ms": stalls,
            "mapping_mb": [s >> 20 for s in sizes],
        })
    collapse_block = blocks[0]
    progress(f"collapse: worst stall {collapse_block['stall_ms']} ms over {len(calls)} calls; forking")
    with tempfile.TemporaryDirectory() as tmp:

        async def fork_and_wait() -> float:
            pid = index.snapshot_in_child(Path(tmp) / "snap")
            fork_s = index.last_fork_s
            await _off_loop(CapabilityIndex.wait_snapshot, pid)
            return fork_s

        fork_ticker, fork_s = await watched(fork_and_wait, work)
    return {"idle_stall_ms": round(idle.worst * 1000, 2), "collapse": collapse_block,
            "collapse_again": blocks[1:],
            "fork_ms": round(fork_s * 1000, 2), "fork_stall_ms": round(fork_ticker.worst * 1000, 2),
            "queries_routed": idle.worked + ticker.worked + fork_ticker.worked}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100_000)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--step", type=int, default=16, help="huge pages (2 MB) per madvise call; the service uses 16")
    ap.add_argument("--min-mb", type=int, default=COLLAPSE_MIN_BYTES >> 20,
                    help="collapse only mappings at least this large (default: the service's)")
    ap.add_argument("--no-queries", action="store_true", help="the ticker alone (as router_scale.py's), no routed "
                    "query per tick")
    ap.add_argument("--passes", type=int, default=1, help="collapse passes before the fork: the later ones "
                    "(`collapse_again`) find the memory already in huge pages, as a service's next snapshots do")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pop = Population(args.agents, views=args.views)
    index = CapabilityIndex(IndexConfig(dim=DIM, embedding_model=MODEL, shards=4))
    for start in range(0, args.agents, 20_000):
        for vcv in pop.vcvs(start, min(args.agents, start + 20_000))[0]:
            index.upsert(vcv)
        progress(f"upserted {min(args.agents, start + 20_000)}/{args.agents}")
    index.flush()
    freeze_startup_heap()  # as the router does once it is up
    work = None
    if not args.no_queries:
        engine = RouterEngine(index)
        queries = itertools.cycle(pop.queries(200))

        def work() -> object:
            return engine.route(*next(queries))

    result = {"agents": args.agents, "views": args.views, "step_pages": args.step, "min_mb": args.min_mb,
              "queries_per_tick": 0 if args.no_queries else 1,
              **asyncio.run(measure(index, args.step, args.min_mb, work, args.passes))}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
