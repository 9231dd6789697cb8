"""How far below the node's best α may an assigned agent be? The floor of `fabric/orchestrator/floor.py`.

A node gets up to `agents_per_node` (3) agents. The router's top 3 for a BFCL question holds the
gold function and, usually, two functions that do something else: fillers. A floor at a
fraction f of the best α leaves out agents below f · best. For each f this reports, over the
questions whose gold agent ranks 2nd or 3rd (where a second agent helps), the share where the
gold agent is kept (`gold_kept`), and over all top-3 agents that are not gold, the share left
out (`fillers_left_out`). Both with the calibrated abstention threshold (fitted on dev as the
router does) as a second floor, and with the fraction alone. The mode and f are chosen on
BFCL's dev splits (max of gold_kept + fillers_left_out); the held-out live splits show whether
they carry over.

Usage: benchmarks/assign_floor.py --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, progress
from benchmarks.bfcl_routing import DEV, IRRELEVANT, LIVE, Federation, load_split
from fabric.embeddings import shared_embedder
from fabric.messages import RouteQuery
from fabric.orchestrator.floor import floor_of
from router.calibration import calibrate

FRACTIONS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TEAM = 3


Routes = list[list[tuple[str, float]]]  # per question: (agent, α), best first


def routed(fed: Federation, questions: list[dict[str, Any]], vecs: np.ndarray) -> list[list[tuple[str, float]]]:
    out = []
    for q, v in zip(questions, vecs, strict=True):
        res = fed.engine.route(RouteQuery(text=q["text"][:4000] or "?", top_k=8, abstain=False), v).response
        out.append([(fed.name_of[m.agent_id], m.score) for m in res.matches])
    return out


def threshold_of(questions: list[dict[str, Any]], ranked: list[list[tuple[str, float]]]) -> float:
    tops = np.array([r[0][1] if r else 0.0 for r in ranked])
    irr = np.array([q["split"] in IRRELEVANT for q in questions])
    return calibrate(tops[~irr], tops[irr]).threshold


def federation_routes(name: str, questions: list[dict[str, Any]], embedder: Any) -> tuple[Federation, Routes]:
    """The federation of a suite's functions, and every question routed over it."""
    fed = Federation(questions, embedder)
    progress(f"{name}: {len(fed.functions)} agents, {len(questions)} questions")
    return fed, routed(fed, questions, embedder.embed([q["text"][:2000] or "?" for q in questions]))


def route_suite(name: str, questions: list[dict[str, Any]], embedder: Any) -> Routes:
    """Every question routed over the federation of its suite's functions."""
    return federation_routes(name, questions, embedder)[1]


def dev_routes(embedder: Any) -> tuple[list[dict[str, Any]], list[list[tuple[str, float]]], float]:
    """BFCL's dev questions routed over the dev federation, and the threshold fitted on them."""
    dev_q = [q for s in DEV for q in load_split(s)]
    dev_r = route_suite("dev", dev_q, embedder)
    return dev_q, dev_r, threshold_of(dev_q, dev_r)


def floor_table(questions: list[dict[str, Any]], ranked: list[list[tuple[str, float]]],
                threshold: float | None) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for f in FRACTIONS:
        gold_seen = gold_kept = fillers = left = 0
        team_sizes = []
        for q, r in zip(questions, ranked, strict=True):
            if not q["gold"] or not r:
                continue
            team = r[:TEAM]
            floor = max(floor_of(team[0][1], f), threshold or 0.0)
            kept = [team[0]] + [a for a in team[1:] if a[1] >= floor]
            team_sizes.append(len(kept))
            for i, (name, score) in enumerate(team):
                if name in q["gold"]:
                    if i > 0:
                        gold_seen += 1
                        gold_kept += score >= floor
                elif i > 0:
                    fillers += 1
                    left += score < floor
        table[str(f)] = {
            "gold_kept": gold_kept / gold_seen if gold_seen else 1.0,
            "fillers_left_out": left / fillers if fillers else 0.0,
            "mean_team": float(np.mean(team_sizes)) if team_sizes else 0.0,
            "gold_ranked_2_or_3": gold_seen,
        }
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    embedder = shared_embedder(model="all-MiniLM-L6-v2")
    dev_q, dev_r, threshold = dev_routes(embedder)
    tables = {"with_threshold": floor_table(dev_q, dev_r, threshold), "fraction_only": floor_table(dev_q, dev_r, None)}

    def merit(mode_fraction: tuple[str, float]) -> float:
        row = tables[mode_fraction[0]][str(mode_fraction[1])]
        return row["gold_kept"] + row["fillers_left_out"]

    mode, chosen = max(((m, f) for m in tables for f in FRACTIONS), key=merit)
    live_q = [q for s in LIVE for q in load_split(s)]
    live_r = route_suite("live (held out)", live_q, embedder)
    live_tables = {"with_threshold": floor_table(live_q, live_r, threshold),
                   "fraction_only": floor_table(live_q, live_r, None)}
    emit({"team": TEAM, "threshold": threshold, "chosen_mode": mode, "chosen_fraction": chosen,
          "dev": tables, "held_out_live": live_tables,
          "at_chosen": {"dev": tables[mode][str(chosen)], "live": live_tables[mode][str(chosen)]}}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
