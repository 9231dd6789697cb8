"""How often the MCP gateway's value check (fabric/interop/tool_arguments.py `values_not_carried`)
would refuse a correct call, and how often it catches a call that drops a value the task names.

For every single-call question of BFCL's non-live and live categories (bfcl-eval's gold call,
the first acceptable value of each argument, empty optional ones left out):

- `false_alarm_rate`: the gold call leaves one of the question's values (a date, time, URL,
  e-mail or number) uncarried, so the gateway would refuse it. BFCL's gold calls do drop
  details now and then ("the next 10 days" for a tool that takes coordinates only), so part of
  this is the check being right about a call BFCL accepts; the examples show which.
- `other_call_refused`: for the questions that name a value, the gold call of another question
  of the same category (a fixed random pick) in its place: the share the check refuses. Below
  1.0 is the price of leniency (a value found in an unrelated call by the loose number match).

- `tool_choice`: on BFCL's questions with several functions (`multiple`, `live_multiple`), the
  tool the gateway picks among the question's own functions (`MCPGateway.pick_tool`, MiniLM, no
  LLM tie-break): by similarity alone (the baseline, same run) and with the value rules (only
  tools that can hold every value compete; a tool the task's values fill goes before one that
  takes the whole text). Correct = the gold function.

Over the installed bfcl-eval data, no network; the tool choice embeds with the shipped MiniLM
(about a minute on 2 cores).

Usage: benchmarks/value_coverage.py --json [--examples 3] [--no-tool-choice]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks._common import emit, progress
from benchmarks.tool_args import load, tool_of
from fabric.embeddings import shared_embedder
from fabric.interop.mcp_gateway import MCPGateway, tool_text
from fabric.interop.specs import MCPConfig
from fabric.interop.tool_arguments import task_values, values_not_carried
from fabric.settings import Settings

CATEGORIES = [
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "live_simple",
    "live_multiple",
]


def gold_call(item: dict[str, Any]) -> dict[str, Any]:
    gold = item["answer"][0]
    args = next(iter(gold.values()))
    first = {k: (v[0] if isinstance(v, list) and v else v) for k, v in args.items()}
    return {k: v for k, v in first.items() if v not in ("", None)}


def measure(category: str, examples: int, seed: int) -> dict[str, Any]:
    items = load(category)
    calls = [gold_call(item) for item in items]
    alarms: list[dict[str, Any]] = []
    kinds: collections.Counter[str] = collections.Counter()
    for item, args in zip(items, calls, strict=True):
        missing = values_not_carried(item["text"], args)
        if missing:
            kinds.update({v.kind for v in missing})
            alarms.append({"id": item["id"], "values": [v.raw for v in missing], "call": args})
    # another question's gold call, for the questions that name values: refused unless it
    # happens to carry them (too loose a match would let it through)
    rng = random.Random(seed)
    named = [i for i, item in enumerate(items) if task_values(item["text"])]
    caught = 0
    for i in named:
        j = rng.choice([k for k in range(len(items)) if k != i]) if len(items) > 1 else i
        caught += bool(values_not_carried(items[i]["text"], calls[j]))
    return {
        "n": len(items),
        "false_alarms": len(alarms),
        "false_alarm_rate": len(alarms) / len(items) if items else 0.0,
        "false_alarm_kinds": dict(kinds),
        "questions_with_values": len(named),
        "other_call_refused": caught / len(named) if named else None,
        "examples": alarms[:examples],
    }


def tool_choice(category: str, embedder: Any) -> dict[str, Any]:
    """Similarity alone vs the gateway's pick, on the questions with more than one function."""
    items = [item for item in load(category) if len(item["functions"]) > 1]
    queries = embedder.embed([item["text"] for item in items])
    gateway = MCPGateway(MCPConfig(stdio="unused"), Settings(), embedder=embedder)
    plain = picked = 0
    for item, query in zip(items, queries, strict=True):
        tools = [tool_of(f) for f in item["functions"]]
        vecs = embedder.embed([tool_text(t) for t in tools])
        gold = next(iter(item["answer"][0]))
        plain += tools[int(np.argmax(vecs @ query))].name == gold
        gateway.tools = {t.name: t for t in tools}
        gateway._tool_vecs = {t.name: np.asarray(v) for t, v in zip(tools, vecs, strict=True)}
        chosen, _ = asyncio.run(gateway.pick_tool(item["text"], None))
        picked += chosen.name == gold
    n = len(items)
    return {"n": n, "similarity": plain / n if n else None, "with_value_rules": picked / n if n else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tool-choice", action="store_true", help="skip the part that needs the embedder")
    ns = parser.parse_args()
    per: dict[str, Any] = {}
    for category in CATEGORIES:
        progress(f"{category}")
        per[category] = measure(category, ns.examples, ns.seed)
    n = sum(c["n"] for c in per.values())
    alarms = sum(c["false_alarms"] for c in per.values())
    named = sum(c["questions_with_values"] for c in per.values())
    caught = sum((c["other_call_refused"] or 0.0) * c["questions_with_values"] for c in per.values())
    choice: dict[str, Any] = {}
    if not ns.no_tool_choice:
        embedder = shared_embedder()
        for category in ("multiple", "live_multiple"):
            progress(f"tool choice: {category}")
            choice[category] = tool_choice(category, embedder)
    emit(
        {
            "tool_choice": choice,
            "false_alarm_rate": alarms / n,
            "other_call_refused": caught / named if named else None,
            "n": n,
            "per_category": per,
        },
        ns.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
