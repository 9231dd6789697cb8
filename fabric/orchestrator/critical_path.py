"""Where a job's wall time goes, without a profiler: an always-on breakdown by kind of work.

A job's time is cut wherever what it does changes (a round trip starts or ends, an embedding
starts or ends); each slice goes to exactly one kind, so the kinds sum to the job's wall time from
`run()` to its result, never more. When things overlap (one node's drafts in flight while another
node clusters), on-loop work wins over waiting (the loop is busy with it; the wait hides behind
it), and among waits, agent calls win over router queries over publishes over embeddings. The store's commits run
as loop callbacks between the job's steps, so the store reports its own commit time and each slice
gives that part to `store`. Cost: a `perf_counter()` and a dict update per cut, about 100 cuts a
job (a 4-node, 3-agent, k = 3 job): well under 0.1 ms.

The kinds, reported in `JobResult.timings` as `path.<kind>` (seconds):

- `embed`: the orchestrator embedding texts (merging proposals, clustering drafts, choosing a
  cluster's representative, scoring reputations): mostly a wait (the model runs in a worker
  thread, batched with other nodes' and jobs' texts; a wait like the others, lowest in rank),
  then on-loop reads of the embedder's cache;
- `cluster`: similarity scoring and clustering of a node's agents (numpy/scipy), merging plans;
- `store`: job store commits (with several jobs at once the commits are shared, and so is this);
- `publish`: events, channel messages and reputations handed to the broker (serialisation, socket);
- `router`: route and assign round trips: the router's own embedding and scoring, two broker hops;
- `agents`: the agents' own handling of tasks (their reported `latency_ms`), as a share of the
  time with task calls in flight;
- `broker`: the rest of that time: envelope encoding, decoding and validation at both ends, MQTT
  hops (exact for one call at a time; with calls in parallel the split is proportional);
- `engine`: everything else: the orchestrator's own Python between hops (payloads, events, budget)
  and event-loop scheduling (other jobs on the same loop included).

`hops.<wait>` (counts, as floats: the timings are one dict) is how many times a kind of wait
started with none of its kind in flight: sequential round trips on the critical path, so
`path.router / hops.router` is the time per router hop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, Literal, TypeVar

T = TypeVar("T")

Work = Literal["embed", "cluster"]
Wait = Literal["calls", "router", "publish", "embed"]
#: the waits in the order they win a slice when several are in flight
WAITS: Final[tuple[Wait, ...]] = ("calls", "router", "publish", "embed")
#: every kind reported, in the order of the module docstring
KINDS: Final[tuple[str, ...]] = ("embed", "cluster", "store", "publish", "router", "agents", "broker", "engine")
PATH_PREFIX: Final = "path."
HOPS_PREFIX: Final = "hops."


class CriticalPath:
    """One job's accumulator (not thread safe: a job runs on one event loop)."""

    def __init__(self, store_busy: Callable[[], float] | None = None) -> None:
        """`store_busy`: the store's cumulative commit time in seconds (read at every cut)."""
        self._store_busy = store_busy
        self._store_seen = store_busy() if store_busy is not None else 0.0
        self._last = time.perf_counter()
        self._work: Work | None = None
        self._open: dict[Wait, int] = dict.fromkeys(WAITS, 0)
        self._spent: dict[str, float] = {}
        self._hops: dict[Wait, int] = dict.fromkeys(WAITS, 0)
        self._agent_s = 0.0  # agents' reported handling time, summed over calls
        self._call_s = 0.0  # the calls' round trips, summed

    def _cut(self) -> None:
        now = time.perf_counter()
        elapsed = now - self._last
        self._last = now
        if self._store_busy is not None:
            busy = self._store_busy()
            store = min(busy - self._store_seen, elapsed)
            self._store_seen = busy
            if store > 0:
                self._spent["store"] = self._spent.get("store", 0.0) + store
                elapsed -= store
        kind: str = self._work or next((w for w in WAITS if self._open[w]), "engine")
        self._spent[kind] = self._spent.get(kind, 0.0) + elapsed

    @contextmanager
    def doing(self, work: Work) -> Iterator[None]:
        """Time synchronous on-loop work (no awaits inside). Nested work counts as the inner kind."""
        self._cut()
        outer, self._work = self._work, work
        try:
            yield
        finally:
            self._cut()
            self._work = outer

    async def waiting(self, wait: Wait, aw: Awaitable[T]) -> T:
        """Await `aw`, its time counted as `wait` (unless on-loop work or a higher wait overlaps)."""
        self._cut()
        if not self._open[wait]:
            self._hops[wait] += 1
        self._open[wait] += 1
        try:
            return await aw
        finally:
            self._cut()
            self._open[wait] -= 1

    def call_done(self, round_trip_s: float, agent_s: float) -> None:
        """A task call came back after `round_trip_s`, of which the agent says it spent `agent_s`."""
        self._call_s += round_trip_s
        self._agent_s += min(max(agent_s, 0.0), round_trip_s)

    def breakdown(self) -> dict[str, float]:
        """The kinds so far (`path.*`, seconds, rounded down to the microsecond so that they never
        sum to more than the wall time) and the sequential hops (`hops.*`)."""
        self._cut()
        spent = dict(self._spent)
        calls = spent.pop("calls", 0.0)
        share = self._agent_s / self._call_s if self._call_s > 0 else 0.0
        spent["agents"] = calls * share
        spent["broker"] = calls - spent["agents"]
        out = {PATH_PREFIX + k: math.floor(spent.get(k, 0.0) * 1e6) / 1e6 for k in KINDS}
        out |= {HOPS_PREFIX + w: float(n) for w, n in self._hops.items()}
        return out
