"""Keep the garbage collector off a long-running service's startup heap.

torch, transformers, scipy, networkx and pydantic leave millions of tracked objects behind
after import, and a service adds its model and registry. CPython's full collections walk all of
them, with the event loop stopped each time: benchmarks/fabric_load.py --distinct-questions 10
measures 2.4 s of GC pauses in the orchestrator during the jobs with --no-gc-freeze, 0.9-1.2 s
without it.
Nothing in that heap is garbage, so service entry points freeze it once they are up; later
collections walk only what was allocated since.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("foa.heap")


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from future collections.

    Returns how many objects are frozen. Call after startup (imports, model load, snapshot
    restore); objects frozen here are only freed by reference counting from now on.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("startup heap frozen", extra={"objects": frozen})
    return frozen
