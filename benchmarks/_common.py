"""Helpers shared by the benchmarks: progress to stderr, exactly one JSON object on stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def emit(result: dict[str, Any], as_json: bool = True) -> None:
    """Print the result: one JSON object (or indented JSON for people without --json)."""
    print(json.dumps(_plain(result), indent=None if as_json else 2))


def percentile_ms(samples_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s) * 1000.0, q)) if samples_s else float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; NaN when /proc can't tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
