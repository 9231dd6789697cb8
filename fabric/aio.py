"""asyncio helpers the fabric needs on Python 3.11."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_within(aw: Awaitable[T], timeout: float | None) -> T:
    """`asyncio.wait_for`, without losing a cancellation.

    On 3.11, `wait_for` returns the result of a future that completes in the same loop turn as a
    cancellation of the task waiting on it, and the cancellation is lost (CPython gh-86296, fixed
    in 3.12's rewrite on `asyncio.timeout`). Shown in `tests/test_bus.py`: a future resolved and
    its waiter cancelled in one turn, `wait_for` returned the result, this raises CancelledError.
    The fabric waits like this on CONNACKs, SUBACKs, acks and results, so a stop (Ctrl-C, SIGTERM,
    a cancelled job) that lands as one arrives would be lost. Raises TimeoutError on time."""
    async with asyncio.timeout(timeout):
        return await aw
