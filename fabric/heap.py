"""Keep the garbage collector off a long-running service's hot path.

1. The startup heap. torch, transformers, scipy, networkx and pydantic leave millions of tracked
   objects behind after import, and a service adds its model and registry. CPython's full
   collections walk all of them, with the event loop stopped each time. Nothing in that heap is
   garbage, so service entry points freeze it once they are up; later collections walk only what
   was allocated since.
2. The thresholds. Python's defaults (a young collection every 700 net allocations) suit
   scripts. A service under load holds many requests in flight; each young collection promotes
   whatever is in flight at that moment, and the older generations fill with objects that die
   soon after, which triggers collections of those generations too. Collecting the young
   generation every YOUNG_THRESHOLD allocations lets in-flight state die young; cycles are
   still collected, only later. Measured in the orchestrator with 1,000 jobs in flight
   (benchmarks/fabric_load.py --distinct-questions 10; GC pauses by generation): 0.1-0.23/0/0 s
   with these thresholds (no older collection); 0.16-0.23/0.20-0.30/0.25-0.51 s (four to six
   full collections) with Python's (--gc-python-thresholds); 1.9-2.4 s in all with
   --no-gc-freeze (neither change).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("foa.heap")

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 10)


def freeze_startup_heap() -> int:
    """Collect once, exempt every surviving object from future collections, and set service
    thresholds (module docstring).

    Returns how many objects are frozen. Call after startup (imports, model load, snapshot
    restore); objects frozen here are only freed by reference counting from now on.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    frozen = gc.get_freeze_count()
    log.debug("startup heap frozen", extra={"objects": frozen, "thresholds": gc.get_threshold()})
    return frozen
