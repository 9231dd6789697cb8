"""When does a question go straight to one agent, and when is it planned? (`fabric/orchestrator/direct.py`)

A question routes directly when its best agent's α reaches the calibrated abstention threshold
and the second agent's α is at most `margin` times the best's. For each margin this reports the
share of direct routes on:

- BFCL `simple_python` and `multiple` (dev): one intent, one gold function: direct is right, and
  `direct_hit` is the share of direct routes whose agent is the gold one;
- BFCL `parallel_multiple` (dev): several calls of several functions: a plan is right;
- held out: BFCL `live_simple` (one intent) and NESTFUL (multi-step sequences of API calls, the
  sample's APIs plus every other API of its split as agents): a plan is right for NESTFUL.

`with_parts` (at the chosen margin): the same, when a direct route also needs every part of a
question that asks several things (`question_parts`: sentences, or "..., and calculate ...") to
have no other capable best agent; otherwise the orchestrator plans the question by its parts.

The margin is chosen on dev only: the largest margin that routes no multi-intent question
directly (a direct route drops the parts of the question its agent does not serve, while a
needless plan only costs a planning call). The first rule tried, the largest share of direct
routes on single-intent questions minus the share on multi-intent ones, picked 0.8 on dev; on
the held-out suites it sent 30% of NESTFUL's multi-step questions directly, more than
live_simple's single-intent ones (21%): it did not carry over. The threshold is fitted on dev
as the router fits it.

Usage: benchmarks/plan_route.py --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from benchmarks.assign_floor import federation_routes, routed, threshold_of
from benchmarks.bfcl_routing import DEV, Federation, load_split, nestful_questions
from fabric.embeddings import shared_embedder
from fabric.messages import Match
from fabric.orchestrator.direct import clear_winner, question_parts

MARGINS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SINGLE = ("simple_python", "multiple")
MULTI = ("parallel_multiple",)


def shares(questions: list[dict[str, Any]], ranked: list[list[tuple[str, float]]], threshold: float,
           margin: float) -> dict[str, float]:
    direct = [clear_winner([Match(agent_id=n, version=1, score=s) for n, s in r], threshold=threshold, margin=margin)
              for r in ranked]
    hits = [bool(r) and r[0][0] in q["gold"] for q, r, d in zip(questions, ranked, direct, strict=True) if d]
    return {"direct": float(np.mean(direct)) if direct else 0.0,
            "direct_hit": float(np.mean(hits)) if hits else 0.0, "questions": len(questions)}


def with_parts(fed: Federation, questions: list[dict[str, Any]], ranked: list[list[tuple[str, float]]],
               threshold: float, margin: float, embedder: Any) -> dict[str, float]:
    """Direct routes when every part of a multi-part question has no other capable best agent."""
    parts = [question_parts(q["text"][:2000]) for q in questions]
    flat = [{"text": p} for ps in parts for p in ps]
    part_routes = iter(routed(fed, flat, embedder.embed([f["text"] for f in flat])))
    direct, hits = [], []
    for q, r, ps in zip(questions, ranked, parts, strict=True):
        best = [next(part_routes) for _ in ps]
        elsewhere = len(ps) > 1 and any(b and b[0][0] != r[0][0] and b[0][1] >= threshold for b in best)
        ok = not elsewhere and clear_winner(
            [Match(agent_id=n, version=1, score=s) for n, s in r], threshold=threshold, margin=margin)
        direct.append(ok)
        if ok:
            hits.append(bool(r) and r[0][0] in q["gold"])
    return {"direct": float(np.mean(direct)) if direct else 0.0,
            "direct_hit": float(np.mean(hits)) if hits else 0.0,
            "multi_part": float(np.mean([len(ps) > 1 for ps in parts])) if parts else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    embedder = shared_embedder(model="all-MiniLM-L6-v2")
    dev_q = [q for s in DEV for q in load_split(s)]
    dev_fed, dev_r = federation_routes("dev", dev_q, embedder)
    threshold = threshold_of(dev_q, dev_r)

    def subset(splits: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[list[tuple[str, float]]]]:
        sel = [i for i, q in enumerate(dev_q) if q["split"] in splits]
        return [dev_q[i] for i in sel], [dev_r[i] for i in sel]

    (sq, sr), (mq, mr) = subset(SINGLE), subset(MULTI)
    table = {str(mg): {"single_intent": shares(sq, sr, threshold, mg), "multi_intent": shares(mq, mr, threshold, mg)}
             for mg in MARGINS}
    chosen = max(mg for mg in MARGINS if table[str(mg)]["multi_intent"]["direct"] == 0.0)

    live_q = load_split("live_simple")
    live_fed, live_r = federation_routes("live_simple (held out)", live_q, embedder)
    nq = nestful_questions()
    n_fed, n_r = federation_routes("nestful (held out)", nq, embedder)
    multi_step = [i for i, q in enumerate(nq) if q["steps"] > 1]
    held = {str(mg): {"live_simple": shares(live_q, live_r, threshold, mg),
                      "nestful_multi_step": shares([nq[i] for i in multi_step], [n_r[i] for i in multi_step],
                                                   threshold, mg)}
            for mg in MARGINS}
    progress("the parts rule at the chosen margin")
    sel = {k: [i for i, q in enumerate(dev_q) if q["split"] in splits] for k, splits in
           (("single_intent", SINGLE), ("multi_intent", MULTI))}
    parts = {k: with_parts(dev_fed, [dev_q[i] for i in idx], [dev_r[i] for i in idx], threshold, chosen, embedder)
             for k, idx in sel.items()}
    parts["live_simple"] = with_parts(live_fed, live_q, live_r, threshold, chosen, embedder)
    parts["nestful_multi_step"] = with_parts(n_fed, [nq[i] for i in multi_step], [n_r[i] for i in multi_step],
                                             threshold, chosen, embedder)
    emit({"threshold": threshold, "chosen_margin": chosen, "dev": table, "held_out": held,
          "at_chosen": {**table[str(chosen)], **held[str(chosen)]}, "with_parts": parts}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
