"""Decomposition quality on NESTFUL: does the planner recover the gold call DAG?

    .venv/bin/python -m benchmarks.nestful_dag --limit 6

Each NESTFUL sample (request + API calls chained by `$varN.field$` references) is a gold DAG.
The planner plans the request with the sample's APIs (plus `--distractors` other APIs of the
same split) presented as agents; subtasks are matched to gold calls by API name, else by
embedding similarity (Hungarian; rule in benchmarks/eval/dag_metrics.py). Reports node F1,
edge F1 and the share of valid DAGs, overall and per split. Prints one JSON object on stdout
and writes a Markdown report, a PNG plot and per-sample scores (JSONL) to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.eval` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.eval.backends import BackendPool
from benchmarks.eval.cli import run_main
from benchmarks.eval.dag_metrics import DagScore, score_plan
from benchmarks.eval.nestful_data import DEFAULT_SPLITS, SPLITS, ApiSpec, GoldDAG, load_split
from benchmarks.eval.planners import Planner, foa_planner, llm_planner
from benchmarks.eval.report import fmt, fmt_model, markdown_table, write_report
from benchmarks.eval.stats import bootstrap_sd

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
METRICS = ("node_f1", "edge_f1", "valid")


def log(msg: str) -> None:
    print(f"[nestful] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, help="first N samples, taken round-robin across the splits")
    p.add_argument("--splits", default=",".join(DEFAULT_SPLITS), help=f"comma list of {', '.join(SPLITS)}")
    p.add_argument("--planner", choices=["foa", "llm"], default="foa",
                   help="foa = FoA's decomposition (compatible agents propose via the worker, the orchestrator "
                        "merges); llm = one structured LLM call that sees all agents (baseline)")
    p.add_argument("--base-url", help="planner's OpenAI-compatible endpoint (default FOA_LLM_BASE_URL or embedded)")
    p.add_argument("--model", help="planner's model name on that endpoint")
    p.add_argument("--api-key-env", help="env var holding the planner endpoint's API key")
    p.add_argument("--subtasks-min", type=int, help="default FOA_SUBTASKS_MIN (paper: 2)")
    p.add_argument("--subtasks-max", type=int, help="default FOA_SUBTASKS_MAX (paper: 4)")
    p.add_argument("--distractors", type=int, default=2, help="extra APIs of the same split offered as agents")
    p.add_argument("--min-similarity", type=float, default=0.5, help="cosine needed for an unnamed match")
    p.add_argument("--seed", type=int, default=0, help="distractor choice and agent order")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = sorted(set(args.splits) - set(SPLITS))
    if bad or not args.splits:
        p.error(f"unknown splits {bad}; choose from {', '.join(SPLITS)}")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


def select_samples(per_split: dict[str, list[GoldDAG]], limit: int | None) -> list[tuple[str, GoldDAG]]:
    """Round-robin over splits, so a small --limit still covers every split."""
    rows = [(split, dag) for group in zip_longest(*([(s, d) for d in dags] for s, dags in per_split.items()))
            for item in group if item is not None for split, dag in [item]]
    return rows[:limit] if limit else rows


def agents_for(dag: GoldDAG, catalog: dict[str, ApiSpec], distractors: int, rng: random.Random) -> list[str]:
    """The sample's APIs plus distractors, shuffled, each as an agent description."""
    names = list(dag.api_names)
    others = sorted(set(catalog) - set(names))
    names += rng.sample(others, min(distractors, len(others)))
    rng.shuffle(names)
    return [(catalog.get(n) or ApiSpec(name=n)).agent_description() for n in names]


def summarise(scores: Sequence[DagScore], rng: np.random.Generator) -> dict[str, Any]:
    if not scores:
        return {}
    cols = {"node_f1": [s.node_f1 for s in scores], "edge_f1": [s.edge_f1 for s in scores],
            "valid": [float(s.valid) for s in scores]}
    out: dict[str, Any] = {k: {"mean": round(float(np.mean(v)), 6), "sd": round(bootstrap_sd(v, rng), 6)}
                           for k, v in cols.items()}
    matched, n_pred, n_gold = (sum(getattr(s, a) for s in scores) for a in ("matched", "n_pred", "n_gold"))
    tp, pe, ge = (sum(getattr(s, a) for s in scores) for a in ("edge_tp", "pred_edges", "gold_edges"))
    out["node_f1_micro"] = 2 * matched / (n_pred + n_gold) if n_pred + n_gold else 1.0
    out["edge_f1_micro"] = 2 * tp / (pe + ge) if pe + ge else 1.0
    out["named_match_share"] = sum(s.named_matches for s in scores) / matched if matched else 0.0
    out["mean_subtasks"] = n_pred / len(scores)
    out["mean_gold_calls"] = n_gold / len(scores)
    raw = [s.proposals_valid for s in scores if s.proposals_valid is not None]
    out["raw_proposals_valid"] = round(float(np.mean(raw)), 6) if raw else None
    out["n"] = len(scores)
    return out


async def evaluate(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from fabric.embeddings import Embedder
    from fabric.llm import LLMConfig

    started = time.monotonic()
    per_split: dict[str, list[GoldDAG]] = {}
    catalogs: dict[str, dict[str, ApiSpec]] = {}
    for split in args.splits:
        per_split[split], catalogs[split] = load_split(split)
    samples = select_samples(per_split, args.limit)
    smin = args.subtasks_min or settings.subtasks_min
    smax = args.subtasks_max or settings.subtasks_max
    embedder = Embedder.from_settings(settings)
    cfg = LLMConfig(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env)
    results: list[tuple[str, DagScore, Any]] = []

    async with BackendPool(settings) as backends:
        backend = backends.get(cfg)
        planner_name = args.planner
        planner: Planner = (foa_planner(backend, settings, embedder.embed, smin, smax) if planner_name == "foa"
                            else llm_planner(backend, smin, smax))
        sem = asyncio.Semaphore(args.concurrency)
        log(f"{len(samples)} samples from {args.splits}; planner {planner_name}; subtasks {smin}-{smax}")

        async def one(i: int, split: str, dag: GoldDAG) -> tuple[str, DagScore, Any]:
            agents = agents_for(dag, catalogs[split], args.distractors, random.Random(args.seed * 100_003 + i))
            async with sem:
                try:
                    plan: Any = await planner(dag.request, agents)
                except Exception as exc:  # noqa: BLE001 - a failed plan scores as an invalid empty DAG
                    log(f"{dag.sample_id}: planner failed: {type(exc).__name__}: {exc}")
                    plan = {"subtasks": [], "error": f"{type(exc).__name__}: {exc}"[:300]}
            score = await asyncio.to_thread(score_plan, plan, dag, catalogs[split], embedder.embed,
                                            args.min_similarity)
            log(f"{dag.sample_id}: node F1 {score.node_f1:.2f} edge F1 {score.edge_f1:.2f} valid {score.valid}")
            return split, score, plan

        results = list(await asyncio.gather(*(one(i, s, d) for i, (s, d) in enumerate(samples))))
        model = backends.describe(cfg)

    rng = np.random.default_rng(0)
    scores = {"all": summarise([r[1] for r in results], rng)}
    for split in args.splits:
        part = [r[1] for r in results if r[0] == split]
        if part:
            scores[split] = summarise(part, rng)
    result: dict[str, Any] = {
        "benchmark": "nestful_dag",
        "n_samples": len(results),
        "scores": scores,
        "planner": planner_name,
        "models": {"planner": model, "embedder": settings.embedding_model},
        "config": {"splits": args.splits, "limit": args.limit, "subtasks_min": smin, "subtasks_max": smax,
                   "distractors": args.distractors, "min_similarity": args.min_similarity, "seed": args.seed,
                   "matching": "API name in subtask text (weight 2) + cosine, Hungarian; unnamed pairs need "
                               "cosine >= min_similarity"},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    result.update(write_outputs(args.out, result, results))
    return result


def plan_dump(plan: Any) -> Any:
    return plan.model_dump() if hasattr(plan, "model_dump") else plan


def write_outputs(out: Path, result: dict[str, Any], rows: Sequence[tuple[str, DagScore, Any]]) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    per_sample = out / "nestful_scores.jsonl"
    with per_sample.open("w", encoding="utf-8") as fh:
        for split, score, plan in rows:
            fh.write(json.dumps({"split": split, **score.model_dump(), "plan": plan_dump(plan)}, default=str) + "\n")
    groups = ["node F1", "edge F1", "valid DAG"]
    series = {name: dict(zip(groups, [(s[m]["mean"], s[m]["sd"]) for m in METRICS], strict=False))
              for name, s in result["scores"].items()}
    table = markdown_table(
        [
            "split",
            "n",
            "node F1",
            "edge F1",
            "valid DAG",
            "node F1 (micro)",
            "edge F1 (micro)",
            "named matches",
            "subtasks / gold calls",
            "raw proposals valid",
        ],
        [
            [
                name,
                s["n"],
                *(fmt(s[m]["mean"], s[m]["sd"]) for m in METRICS),
                fmt(s["node_f1_micro"]),
                fmt(s["edge_f1_micro"]),
                fmt(s["named_match_share"]),
                f"{s['mean_subtasks']:.2f} / {s['mean_gold_calls']:.2f}",
                fmt(s["raw_proposals_valid"]),
            ]
            for name, s in result["scores"].items()
        ],
    )
    c = result["config"]
    md_text = "\n".join(
        [
            "# NESTFUL decomposition quality",
            "",
            f"{result['n_samples']} samples, planner `{result['planner']}` on "
            f"{fmt_model(result['models']['planner'])}, "
            f"{c['subtasks_min']}–{c['subtasks_max']} subtasks, {c['distractors']} distractor APIs per sample.",
            "Means over samples ± bootstrap s.d. (1,000 resamples); micro F1 pools the counts.",
            "",
            table,
            "",
            f"Matching: {c['matching']} (min_similarity {c['min_similarity']}). "
            "Gold DAG: node = API call, edge = `$varN…$` reference; the `var_result` pseudo-call is excluded.",
            "",
            f"Elapsed: {result['elapsed_s']} s.",
        ]
    )
    md, png = write_report(
        out,
        "nestful",
        md_text,
        groups=groups,
        series=series,
        title=f"NESTFUL decomposition ({result['n_samples']} samples)",
        ylabel="score",
    )
    return {"report": str(md), "plot": str(png), "per_sample": str(per_sample)}


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("nestful_dag", parse_args, evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
