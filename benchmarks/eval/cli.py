"""The shared entry point of the evaluation benchmarks: one JSON object out, a clear error on bad input."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from benchmarks.eval.healthbench_data import DataError


def run_main(
    name: str,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    evaluate: Callable[[argparse.Namespace, Any], Coroutine[Any, Any, dict[str, Any]]],
    argv: Sequence[str] | None = None,
) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    from fabric.settings import Settings

    try:
        result = asyncio.run(evaluate(args, Settings()))
    except (DataError, ValueError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0
