"""Is "no capable agent" measured right? Two checks on bfcl_routing.py's abstention protocol.

bfcl_routing.py pools every function of the dev splits into one federation and asks the router to
refuse BFCL's `irrelevance` questions. But BFCL labels a question irrelevant to *its own*
function list, not to the pool: "Find the volume of a cone with radius 3 and height 5" is in
`irrelevance`, and the pool holds `geometry.calculate_cone_volume`. A router that refuses it is
wrong for a user. This script measures how much of the negative set that affects, and scores the
calibrated abstention model (router/abstention.py) under a protocol whose labels hold in a pool:

1. `pooled_irrelevance`: for each `irrelevance` question, the cosine to the nearest answerable dev
   question (same embedder); one at ≥ 0.8 has a near-copy that the pool answers. This counts only
   near-copies, so it is a floor on the pool-answerable share, not an estimate of it.
2. `leave_gold_out`: answerable questions only. Half of them (a fixed seed) become negatives: their
   gold functions leave the federation, with every function whose description has cosine ≥ 0.8 to
   one of them (near-twins under another name), unless an accepted question needs it; the other
   half must still be accepted. The model is fitted 2-fold on dev (cross-fitted: every dev number
   is out of sample) and, fitted on all dev questions, scored on the live splits built the same
   way (held out).

Usage: benchmarks/abstention_protocols.py --json [--twin 0.8] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import emit, progress
from benchmarks.bfcl_routing import DEV, IRRELEVANT, LIVE, Federation, abstain_scores, load_split
from fabric.embeddings import Embedder, shared_embedder
from fabric.messages import RouteQuery
from router.abstention import DEFAULT_FEATURES, Top, fit
from router.engine import RouterEngine

TARGETS = (0.1, 0.2, 0.3)


def pooled_irrelevance(embedder: Embedder, twin: float) -> dict[str, Any]:
    questions = [q for s in DEV for q in load_split(s)]
    irrelevant = [q["text"] for q in questions if q["split"] in IRRELEVANT]
    answerable = [q["text"] for q in questions if q["split"] not in IRRELEVANT and q["gold"]]
    nearest = (embedder.embed(irrelevant) @ embedder.embed(answerable).T).max(axis=1)
    return {
        "irrelevance_questions": len(irrelevant),
        f"with_an_answerable_near_copy_at_{twin}": int((nearest >= twin).sum()),
        "nearest_cosine_quantiles": dict(
            zip(("p50", "p90", "p99"), np.quantile(nearest, [0.5, 0.9, 0.99]).round(3).tolist(), strict=True)
        ),
    }


def leave_gold_out(splits: list[str], embedder: Embedder, twin: float, seed: int
                   ) -> tuple[list[Top], np.ndarray, dict[str, Any]]:
    """The questions' best candidates (abstention off) after the negatives' tools left, and which
    questions are negatives."""
    questions = [q for s in splits if s not in IRRELEVANT for q in load_split(s) if q["gold"]]
    fed = Federation(questions, embedder, views=True)
    negative = np.random.default_rng(seed).random(len(questions)) < 0.5
    needed = {g for q, n in zip(questions, negative, strict=True) if not n for g in q["gold"]}
    keep = [i for i, q in enumerate(questions) if not negative[i] or not set(q["gold"]) & needed]
    questions, negative = [questions[i] for i in keep], negative[keep]
    gone = {g for q, n in zip(questions, negative, strict=True) if n for g in q["gold"]}
    gone_rows = [i for i, name in enumerate(fed.names) if name in gone]
    near = (fed.desc_vecs @ fed.desc_vecs[gone_rows].T >= twin).any(axis=1)
    leave = [fed.vcvs[i].agent_id for i, name in enumerate(fed.names)
             if (name in gone or near[i]) and name not in needed]
    engine: RouterEngine = fed.engine_with()
    for agent_id in leave:
        engine.index.delete(agent_id)
    engine.index.flush()
    vecs = embedder.embed([q["text"][:2000] or "?" for q in questions])
    tops = [Top.of_matches(engine.route(RouteQuery(text=q["text"][:4000] or "?", top_k=3, abstain=False), v)
                           .response.matches) for q, v in zip(questions, vecs, strict=True)]
    shape = {"questions": len(questions), "negatives": int(negative.sum()), "agents": len(fed.names),
             "agents_left": len(leave)}
    return tops, negative, shape


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--twin", type=float, default=0.8, help="cosine at which a function or question is a near-twin")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    embedder = shared_embedder(backend="torch")
    result: dict[str, Any] = {"pooled_irrelevance": pooled_irrelevance(embedder, args.twin)}
    progress("leave-gold-out: dev")
    dev_tops, dev_neg, dev_shape = leave_gold_out(DEV, embedder, args.twin, args.seed)
    progress("leave-gold-out: live (held out)")
    live_tops, live_neg, live_shape = leave_gold_out(LIVE, embedder, args.twin, args.seed)
    fold = np.random.default_rng(args.seed + 1).integers(0, 2, len(dev_tops))
    block: dict[str, Any] = {"dev": dev_shape, "live": live_shape, "features": list(DEFAULT_FEATURES), "by_target": {}}
    for target in TARGETS:
        cross = np.zeros(len(dev_tops), dtype=bool)
        for k in (0, 1):
            rows = np.flatnonzero(fold != k)
            model = fit([dev_tops[i] for i in rows if not dev_neg[i]], [dev_tops[i] for i in rows if dev_neg[i]],
                        target_false_accept=target)
            cross[fold == k] = [model.abstains(dev_tops[i]) for i in np.flatnonzero(fold == k)]
        model = fit([t for t, n in zip(dev_tops, dev_neg, strict=True) if not n],
                    [t for t, n in zip(dev_tops, dev_neg, strict=True) if n], target_false_accept=target)
        live = np.array([model.abstains(t) for t in live_tops], dtype=bool)
        block["by_target"][str(target)] = {"dev_cross_fitted": abstain_scores(cross, dev_neg),
                                          "live": abstain_scores(live, live_neg)}
    result["leave_gold_out"] = block
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
