"""The plan check's similarity floor (`fabric/orchestrator/plan_check.py`), measured.

- **Gold plans**, each step against its own question (these must be kept: `gold_dropped` is
  the drop rate) and against another question of the same suite (off-question: these should be
  dropped, `other_question_dropped`):
  - NESTFUL: every gold step as a planner would name it ("api: description (literal arguments)");
  - HealthBench: the positive rubric criteria of each prompt ("Advises the user to seek
    emergency care ..."), which say what a good answer's parts are: clinical plans, in words
    much further from the question than an API call is from its request.
- **Proposed plans**: the plans a real planner writes (the embedded model by default, or any
  OpenAI-compatible server via FOA_LLM_*), for `--proposed` NESTFUL requests and as many
  HealthBench prompts, through the worker's own decompose prompt; the drop rate and every
  dropped subtask with its reason, so a reader can see that the cut removes garbage.

The floor is the largest on the grid that drops at most 2% of the gold steps of each suite.

Usage: benchmarks/plan_check.py --json [--proposed 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from benchmarks.eval.dag_metrics import gold_call_text
from benchmarks.eval.nestful_data import DEFAULT_SPLITS
from benchmarks.eval.nestful_data import load_split as load_nestful
from fabric.embeddings import shared_embedder
from fabric.orchestrator.plan_check import altered_copy_reason, check_plans, degenerate_reason

FLOORS = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2)


def suite_sims(plans: list[tuple[str, list[str]]], embed: Any, rng: random.Random) -> dict[str, Any]:
    """Each plan's steps against its own question and against another plan's question."""
    own, other, degenerate, altered = [], [], 0, 0
    for i, (question, steps) in enumerate(plans):
        degenerate += sum(degenerate_reason(s) is not None for s in steps)
        altered += sum(altered_copy_reason(s, question) is not None for s in steps)
        j = rng.randrange(len(plans) - 1)
        stranger = plans[j if j < i else j + 1][0]
        vecs = embed([question, stranger, *steps])
        own.extend((vecs[2:] @ vecs[0]).tolist())
        other.extend((vecs[2:] @ vecs[1]).tolist())
    a, b = np.array(own), np.array(other)
    return {
        "steps": len(a),
        "degenerate": degenerate,
        "altered_copy": altered,  # gold steps the altered-copy check would drop
        "gold_similarity": {"p1": float(np.percentile(a, 1)), "p2": float(np.percentile(a, 2)),
                            "p5": float(np.percentile(a, 5)), "median": float(np.median(a))},
        "other_question_similarity": {"median": float(np.median(b)), "p95": float(np.percentile(b, 95))},
        "floors": {str(f): {"gold_dropped": float((a < f).mean()), "other_question_dropped": float((b < f).mean())}
                   for f in FLOORS},
    }


def gold_plans(healthbench: int) -> dict[str, list[tuple[str, list[str]]]]:
    from benchmarks.eval.healthbench_data import load_examples

    nestful = []
    for split in DEFAULT_SPLITS:
        dags, catalog = load_nestful(split)
        nestful += [(d.request, [gold_call_text(c, catalog) for c in d.calls]) for d in dags]
    examples, _ = load_examples(limit=healthbench)
    health = [(e.prompt[-1].content, [r.criterion for r in e.rubrics if r.points > 0]) for e in examples]
    return {"nestful": nestful, "healthbench": [(q, s) for q, s in health if s]}


async def proposed_plans(n: int, rng: random.Random) -> list[tuple[str, str, Any]]:
    from agents.worker import decompose_prompt
    from benchmarks.eval.healthbench_data import load_examples
    from fabric.llm import BackendPool
    from fabric.llm.base import ChatMessage
    from fabric.llm.structured import complete_json
    from fabric.settings import Settings
    from fabric.tasks import Plan

    settings = Settings()
    backend = BackendPool(settings).get()
    questions: list[tuple[str, str]] = []
    for split in DEFAULT_SPLITS:
        dags, _ = load_nestful(split)
        questions += [("nestful", d.request) for d in rng.sample(dags, max(1, n // len(DEFAULT_SPLITS)))]
    examples, _ = load_examples(limit=200)
    questions += [("healthbench", e.prompt[-1].content) for e in rng.sample(examples, n)]
    out = []
    for k, (suite, q) in enumerate(questions):
        plan, _, _ = await complete_json(
            backend, [ChatMessage.user(decompose_prompt(q, 2, 4))], Plan, max_tokens=200, temperature=0.2,
            retries=1, fallback=lambda: None,  # type: ignore[arg-type,return-value]
        )
        progress(f"proposed {k + 1}/{len(questions)} ({suite})")
        if plan is not None:
            out.append((suite, q, plan))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--proposed", type=int, default=6, help="NESTFUL requests and HealthBench prompts to plan (each)")
    ap.add_argument("--healthbench", type=int, default=1000, help="HealthBench prompts whose rubrics are gold plans")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    embedder = shared_embedder(model="all-MiniLM-L6-v2")
    suites = {name: suite_sims(plans, embedder.embed, rng) for name, plans in gold_plans(args.healthbench).items()}
    chosen = max(f for f in FLOORS if all(s["floors"][str(f)]["gold_dropped"] <= 0.02 for s in suites.values()))
    result: dict[str, Any] = {"chosen_floor": chosen, "gold": suites}
    if args.proposed:
        plans = asyncio.run(proposed_plans(args.proposed, rng))
        per_suite: dict[str, dict[str, Any]] = {}
        for suite, q, plan in plans:
            _, dropped = check_plans(q, [("planner", plan)], embedder.embed, similarity_floor=chosen)
            fresh = {"plans": 0, "subtasks": 0, "dropped": 0, "emptied": 0, "examples": [], "kept": []}
            entry = per_suite.setdefault(suite, fresh)
            entry["plans"] += 1
            entry["subtasks"] += len(plan.subtasks)
            entry["dropped"] += len(dropped)
            entry["emptied"] += len(dropped) == len(plan.subtasks)
            entry["examples"] += [{"text": d.text, "reason": d.reason} for d in dropped]
            gone = {d.subtask_id for d in dropped}
            entry["kept"] += [x.text for x in plan.subtasks if x.id not in gone]
        for entry in per_suite.values():
            entry["drop_rate"] = entry["dropped"] / entry["subtasks"] if entry["subtasks"] else 0.0
        result["proposed"] = per_suite
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
