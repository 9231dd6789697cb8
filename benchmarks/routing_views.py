"""Several views per agent (router/scoring.py, fabric/views.py): does routing get better, and
which pooling fuses the views into α's similarity best?

BFCL's functions as agents, as `bfcl_routing.py` builds them; with `--views` on, every function
also carries the views the MCP gateway gives a tool (its name as words, with its description,
with its parameter names, with each described parameter). The same questions are routed by:
the router without views (the baseline, same run), and with views under each pooling: `max`,
`weighted_max` (w 0.5, 0.7) and `softmax` (T 0.02, 0.05, 0.1). Chosen on dev (top-1, then
top-5); the held-out live splits report every variant, so a pooling fitted to dev would show.

Usage: benchmarks/routing_views.py --json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from benchmarks.bfcl_routing import DEV, LIVE, Federation, evaluate, load_split, ranking_metrics
from fabric.embeddings import shared_embedder

VARIANTS: dict[str, dict[str, Any]] = {
    "no_views": {},
    "max": {"view_pooling": "max"},
    "weighted_max_0.5": {"view_pooling": "weighted_max", "view_weight": 0.5},
    "weighted_max_0.7": {"view_pooling": "weighted_max", "view_weight": 0.7},
    "softmax_0.02": {"view_pooling": "softmax", "view_temperature": 0.02},
    "softmax_0.05": {"view_pooling": "softmax", "view_temperature": 0.05},
    "softmax_0.1": {"view_pooling": "softmax", "view_temperature": 0.1},
}


def suite(questions: list[dict[str, Any]], embedder: Any) -> dict[str, dict[str, float]]:
    qvecs = embedder.embed([q["text"][:2000] or "?" for q in questions])
    ranked = [q for q in questions if q["gold"]]
    keep = [i for i, q in enumerate(questions) if q["gold"]]
    out = {}
    for name, config in VARIANTS.items():
        started = time.perf_counter()
        fed = Federation(ranked, embedder, views=name != "no_views", config=config)
        ranks, _ = evaluate(fed, ranked, qvecs[keep])["foa"]
        out[name] = {k: round(v, 4) for k, v in ranking_metrics(ranks).items()}
        progress(f"{name}: top1 {out[name]['top1']:.3f} top5 {out[name]['top5']:.3f} "
                 f"({time.perf_counter() - started:.0f} s)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    embedder = shared_embedder(model="all-MiniLM-L6-v2")
    dev = suite([q for s in DEV for q in load_split(s)], embedder)
    chosen = max((n for n in VARIANTS if n != "no_views"), key=lambda n: (dev[n]["top1"], dev[n]["top5"]))
    live = suite([q for s in LIVE for q in load_split(s)], embedder)
    emit({"chosen": chosen, "dev": dev, "held_out_live": live,
          "gain": {"dev_top1": dev[chosen]["top1"] - dev["no_views"]["top1"],
                   "dev_top5": dev[chosen]["top5"] - dev["no_views"]["top5"],
                   "live_top1": live[chosen]["top1"] - live["no_views"]["top1"],
                   "live_top5": live[chosen]["top5"] - live["no_views"]["top5"]}}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
