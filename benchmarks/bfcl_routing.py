"""Routing quality on BFCL (Berkeley Function Calling Leaderboard) data, which no one here wrote.

Every function doc becomes an agent's VCV (description -> capability c, parameter names ->
skills, "name: description + parameter descriptions" -> spec embedding e, the views the MCP
gateway gives a tool -> examples and their views), every question a route query through the real
router path (CapabilityIndex + RouterEngine: HNSW, α with the view, lexical and spec factors).
`earlier` routes the same questions over the same agents with earlier forms of α (`EARLIER`:
without views; with views but BM25 without the examples' words), so before and after come from
one run. A question is a hit at k when a gold function (possible_answer)
is among the first k agents. Irrelevance questions must abstain. The baseline is plain cosine
between question and description embeddings, in the same run, over the same agents.

Development splits (the only ones used to choose weights): simple_python, multiple,
parallel_multiple, irrelevance -> one federation of their functions. Held out: live_simple,
live_multiple, live_parallel, live_parallel_multiple, live_irrelevance (+ live_relevance,
which must not abstain) -> a second federation of the live functions, routed with the
threshold calibrated on the dev questions. NESTFUL's requests over their splits' APIs are a second
held-out suite (`held_out_nestful`: ranking only; a hit is any API the request's sequence calls).

Abstention threshold: calibrated (router/calibration.py, max F1) on dev questions with 2-fold
cross-fitting, so the dev abstention numbers are out-of-sample too; the live numbers use the
threshold fitted on all dev questions.

Calibrated abstention (router/abstention.py) beside it in the same run, on the same folds:
`abstention` (dev, cross-fitted) and `held_out_live.abstention` (models fitted on all dev
questions) give precision / recall / F1 of "no capable agent", the false-accept and
false-refusal rates and per-split abstention rates, for today's single α cut
(`baseline_single_threshold`) and the model at every target false-accept rate in
`--false-accept` (all reported; the router's default is the first). Top-1/top-5 do not depend
on abstention (ranking is with abstention off).

Note: in a pooled federation some irrelevance questions do have a fitting tool (e.g.
"area of a triangle" is irrelevant to its own BFCL function list but the pool holds triangle
tools), which caps abstention recall; `irrelevance_with_gold_like_match` is not computed.

Embedding backends (FOA_EMBEDDING_BACKEND): `--backend torch,onnx-int8` runs the whole
evaluation once per backend in the same process, over the same agents and questions; the first
backend's numbers stay at the top level, every backend's are under `backends`, and
`delta_vs_first` gives each one's top-1/top-5 minus the first's (dev and held-out live).

Usage: benchmarks/bfcl_routing.py --json [--backend torch,onnx-int8] [--false-accept 0.1,0.2,0.3,0.4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import emit, progress
from fabric.bloom import BloomFilter
from fabric.embeddings import BACKENDS, Embedder, shared_embedder
from fabric.messages import RouteQuery
from fabric.vcv import VCV
from fabric.views import tool_views
from router import lexical, scoring
from router.abstention import DEFAULT_FALSE_ACCEPT, DEFAULT_FEATURES, AbstentionModel, Top, fit
from router.calibration import abstain_metrics, calibrate
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig

DEV = ["simple_python", "multiple", "parallel_multiple", "irrelevance"]
LIVE = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance", "live_relevance"]
IRRELEVANT = {"irrelevance", "live_irrelevance"}
TARGETS = (DEFAULT_FALSE_ACCEPT, 0.2, 0.3, 0.4)  # target false-accept rates of the abstention model, all reported


def data_dir() -> Path:
    import bfcl_eval

    return Path(bfcl_eval.__file__).parent / "data"


def load_split(split: str) -> list[dict[str, Any]]:
    root = data_dir()
    gold: dict[str, list[str]] = {}
    answers = root / "possible_answer" / f"BFCL_v4_{split}.json"
    if answers.exists():
        for line in answers.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                gold[row["id"]] = [next(iter(g)) for g in row["ground_truth"]]
    out = []
    for line in (root / f"BFCL_v4_{split}.json").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        turns = [m["content"] for turn in row["question"] for m in turn if m.get("role") == "user"]
        out.append({"id": row["id"], "split": split, "text": " ".join(turns).strip(), "functions": row["function"],
                    "gold": gold.get(row["id"], [])})
    return out


def params_of(fn: dict[str, Any]) -> dict[str, Any]:
    props = (fn.get("parameters") or {}).get("properties") or {}
    return props if isinstance(props, dict) else {}


def spec_text(fn: dict[str, Any]) -> str:
    parts = [f"{k}: {v.get('description', '')}" if isinstance(v, dict) else k for k, v in params_of(fn).items()]
    return f"{fn['name']}: {fn.get('description', '')} " + "; ".join(parts)


def nestful_questions() -> list[dict[str, Any]]:
    """NESTFUL's requests as BFCL-shaped questions over their split's APIs (held out: gold = every
    API a request's sequence calls)."""
    from benchmarks.eval.nestful_data import DEFAULT_SPLITS
    from benchmarks.eval.nestful_data import load_split as load_nestful

    out = []
    for split in DEFAULT_SPLITS:
        dags, catalog = load_nestful(split)
        funcs = [{"name": a.name, "description": a.agent_description(),
                  "parameters": {"properties": {i: {} for i in a.inputs}}} for a in catalog.values()]
        for d in dags:
            out.append({"id": d.sample_id, "split": f"nestful/{split}", "text": d.request, "functions": funcs,
                        "gold": d.api_names, "steps": len(d.calls)})
    return out


class Federation:
    """The functions of some splits as agents in a real CapabilityIndex."""

    def __init__(self, questions: list[dict[str, Any]], embedder: Embedder, *, views: bool = False,
                 config: dict[str, Any] | None = None) -> None:
        """`views`: each function also gets the views an MCP gateway gives a tool (fabric/views.py);
        `config`: IndexConfig fields (the view pooling, for benchmarks/routing_views.py)."""
        funcs: dict[tuple[str, str], dict[str, Any]] = {}
        for q in questions:
            for fn in q["functions"]:
                funcs.setdefault((fn["name"], fn.get("description", "")), fn)
        self.functions = list(funcs.values())
        self.names = [fn["name"] for fn in self.functions]
        descs = [fn.get("description") or fn["name"] for fn in self.functions]
        self.desc_vecs = embedder.embed(descs)
        spec_vecs = embedder.embed([spec_text(fn) for fn in self.functions])
        self.dim, self.model = embedder.dim, embedder.model_name
        self.vcvs: list[VCV] = []
        view_texts = [tool_views(fn["name"], fn.get("description", ""), params_of(fn)) if views else []
                      for fn in self.functions]
        flat = embedder.embed([t for texts in view_texts for t in texts]) if views else np.zeros((0, 1))
        starts = np.cumsum([0, *map(len, view_texts)])
        used: dict[str, int] = defaultdict(int)
        self.name_of: dict[str, str] = {}
        for i, (fn, desc, c, e) in enumerate(zip(self.functions, descs, self.desc_vecs, spec_vecs, strict=False)):
            base = re.sub(r"[/+#$\x00\s]", "_", fn["name"])[:100] or "fn"
            used[base] += 1
            agent_id = base if used[base] == 1 else f"{base}~{used[base]}"
            skills = [k for k in params_of(fn)][:40]
            vcv = VCV(agent_id=agent_id, version=1, name=fn["name"], description=desc, capability=c.tolist(),
                      skills=skills, skills_bloom=BloomFilter.of(skills).to_b64(), spec_embedding=e.tolist(),
                      embedding_model=embedder.model_name, examples=view_texts[i],
                      views=[v.tolist() for v in flat[starts[i]:starts[i + 1]]])
            self.vcvs.append(vcv)
            self.name_of[agent_id] = fn["name"]
        self.config = config or {}
        self.engine = self.engine_with()
        self.index = self.engine.index

    def engine_with(self, *, views: bool = True, **config: Any) -> RouterEngine:
        """A router over the same agents with other IndexConfig fields (`views=False`: without
        their views): earlier forms of α in the same run, on the same embeddings."""
        index = CapabilityIndex(IndexConfig(dim=self.dim, embedding_model=self.model, **(self.config | config)))
        for vcv in self.vcvs:
            result = index.upsert(vcv if views else vcv.model_copy(update={"examples": [], "views": []}))
            if not result.accepted:
                raise RuntimeError(f"{vcv.agent_id}: {result.reason}")
        index.flush()
        return RouterEngine(index)


def evaluate(fed: Federation, questions: list[dict[str, Any]], qvecs: np.ndarray, top: int = 10,
             tops_out: list[Top] | None = None, others: dict[str, RouterEngine] | None = None,
             first_out: list[str | None] | None = None) -> dict[str, Any]:
    """Ranks of the first gold function and the best score, for FoA α, for each router in
    `others` (earlier forms of α) and for the plain-cosine baseline (`tops_out` collects each
    question's best candidates under FoA α: the abstention model's input; `first_out` the name
    of the function FoA α ranks first)."""
    engines = {"foa": fed.engine, **(others or {})}
    ranks: dict[str, list[int | None]] = {name: [] for name in [*engines, "baseline"]}
    best: dict[str, list[float]] = {name: [] for name in ranks}
    base_scores = qvecs @ fed.desc_vecs.T
    for q, vec, bs in zip(questions, qvecs, base_scores, strict=False):
        for name, engine in engines.items():
            res = engine.route(RouteQuery(text=q["text"][:4000] or "?", top_k=top, abstain=False), vec).response
            names = [fed.name_of[m.agent_id] for m in res.matches]
            ranks[name].append(next((i for i, n in enumerate(names) if n in q["gold"]), None))
            best[name].append(res.matches[0].score if res.matches else 0.0)
            if tops_out is not None and name == "foa":
                tops_out.append(Top.of_matches(res.matches))
            if first_out is not None and name == "foa":
                first_out.append(names[0] if names else None)
        order = np.argsort(-bs)[:top]
        bnames = [fed.names[j] for j in order]
        ranks["baseline"].append(next((i for i, n in enumerate(bnames) if n in q["gold"]), None))
        best["baseline"].append(float(bs[order[0]]))
    return {name: (ranks[name], np.array(best[name])) for name in ranks}


def top1_misses(fed: Federation, questions: list[dict[str, Any]], ranks: list[int | None],
                firsts: list[str | None]) -> dict[str, Any]:
    """Where the answerable questions that miss at top-1 go first.

    In a pooled federation a question's gold function often has twins from other questions
    ("triangle.area" beside "calculate_triangle_area"): the question names no reason to prefer
    one, and the label rewards only its own. `to_own_functions`: the first agent is another of the
    question's own functions (a real confusion); `to_twin_at_{0.8,0.9}`: the first agent's
    description has cosine ≥ that with a gold function's (most likely a twin); `rest`: neither;
    `not_in_top10`: misses with no gold function among the first 10 (of any of the above)."""
    row = {name: i for i, name in enumerate(fed.names)}
    own = to_twin_8 = to_twin_9 = misses = outside = 0
    for q, r, first in zip(questions, ranks, firsts, strict=True):
        if not q["gold"] or r == 0 or first is None:
            continue
        misses += 1
        outside += r is None
        if first in {fn["name"] for fn in q["functions"]}:
            own += 1
            continue
        cos = max((float(fed.desc_vecs[row[first]] @ fed.desc_vecs[row[g]]) for g in q["gold"] if g in row),
                  default=0.0)
        to_twin_8 += cos >= 0.8
        to_twin_9 += cos >= 0.9
    answerable = sum(1 for q in questions if q["gold"])
    return {"misses": misses, "share_of_answerable": round(misses / max(answerable, 1), 4),
            "to_own_functions": own, "to_twin_at_0.8": to_twin_8, "to_twin_at_0.9": to_twin_9,
            "rest": misses - own - to_twin_8, "not_in_top10": outside}


def ranking_metrics(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    if n == 0:
        return {}
    return {
        "top1": sum(r == 0 for r in ranks) / n,
        "top5": sum(r is not None and r < 5 for r in ranks) / n,
        "mrr": sum(1.0 / (r + 1) for r in ranks if r is not None) / n,
        "questions": n,
    }


def abstain_block(tops: np.ndarray, irrelevant: np.ndarray, threshold: float) -> dict[str, float]:
    p, r, f = abstain_metrics(tops[~irrelevant], tops[irrelevant], threshold)
    return {"abstain_precision": p, "abstain_recall": r, "abstain_f1": f, "threshold": threshold}


def cross_fitted(tops: np.ndarray, irrelevant: np.ndarray, seed: int = 0) -> dict[str, float]:
    """2-fold: fit the threshold on one half, measure on the other, pool the decisions."""
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, 2, len(tops))
    abstain = np.zeros(len(tops), dtype=bool)
    for k in (0, 1):
        fit, test = fold != k, fold == k
        cut = calibrate(tops[fit & ~irrelevant], tops[fit & irrelevant]).threshold
        abstain[test] = tops[test] < cut
    tp = float((abstain & irrelevant).sum())
    p = tp / abstain.sum() if abstain.sum() else 0.0
    r = tp / irrelevant.sum() if irrelevant.sum() else 0.0
    return {"abstain_precision": p, "abstain_recall": r, "abstain_f1": 2 * p * r / (p + r) if p + r else 0.0}


def abstain_scores(abstain: np.ndarray, irrelevant: np.ndarray) -> dict[str, float]:
    """Precision / recall / F1 of "no capable agent" (positives: the irrelevance questions)."""
    tp = float((abstain & irrelevant).sum())
    p = tp / abstain.sum() if abstain.sum() else 0.0
    r = tp / irrelevant.sum() if irrelevant.sum() else 0.0
    refused = float((abstain & ~irrelevant).sum() / max((~irrelevant).sum(), 1))
    return {"abstain_precision": p, "abstain_recall": r, "abstain_f1": 2 * p * r / (p + r) if p + r else 0.0,
            "false_accept_rate": 1.0 - r, "false_refusal_rate": refused}


def model_decisions(model: AbstentionModel, tops: list[Top]) -> np.ndarray:
    return np.array([model.abstains(t) for t in tops], dtype=bool)


def abstain_rates(questions: list[dict[str, Any]], abstain: np.ndarray) -> dict[str, float]:
    splits = np.array([q["split"] for q in questions])
    return {s: float(abstain[splits == s].mean()) for s in sorted(set(splits.tolist()))}


def calibrated_abstention(
    questions: list[dict[str, Any]], tops: list[Top], targets: tuple[float, ...], features: tuple[str, ...],
    seed: int = 0,
) -> tuple[dict[str, Any], dict[float, AbstentionModel]]:
    """The calibrated model (router/abstention.py) at each target false-accept rate beside today's
    single α cut, all 2-fold cross-fitted on the same folds as `cross_fitted`; then the models
    fitted on every dev question (for the held-out splits)."""
    irrelevant = np.array([q["split"] in IRRELEVANT for q in questions])
    alpha = np.array([t.alphas[0] if t.alphas else 0.0 for t in tops])
    fold = np.random.default_rng(seed).integers(0, 2, len(tops))
    single = np.zeros(len(tops), dtype=bool)
    by_target = {t: np.zeros(len(tops), dtype=bool) for t in targets}
    for k in (0, 1):
        fit_rows, test_rows = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        rel = [tops[i] for i in fit_rows if not irrelevant[i]]
        irr = [tops[i] for i in fit_rows if irrelevant[i]]
        for target in targets:
            m = fit(rel, irr, features=features, target_false_accept=target)
            by_target[target][test_rows] = model_decisions(m, [tops[i] for i in test_rows])
        cut = calibrate(alpha[fit_rows][~irrelevant[fit_rows]], alpha[fit_rows][irrelevant[fit_rows]]).threshold
        single[test_rows] = alpha[test_rows] < cut
    rel_all = [t for t, i in zip(tops, irrelevant, strict=True) if not i]
    irr_all = [t for t, i in zip(tops, irrelevant, strict=True) if i]
    models = {
        target: fit(rel_all, irr_all, features=features, target_false_accept=target,
                    provenance={"source": "BFCL dev: " + ",".join(DEV), "date": time.strftime("%Y-%m-%d")})
        for target in targets
    }
    out = {
        "features": list(features),
        "baseline_single_threshold": {**abstain_scores(single, irrelevant),
                                      "per_split_abstain_rate": abstain_rates(questions, single)},
        "calibrated": {
            str(t): {**abstain_scores(a, irrelevant), "per_split_abstain_rate": abstain_rates(questions, a),
                     "model": models[t].to_dict()}
            for t, a in by_target.items()
        },
    }
    return out, models


def held_out_abstention(questions: list[dict[str, Any]], tops: list[Top], models: dict[float, AbstentionModel],
                        threshold: float) -> dict[str, Any]:
    """The dev-fitted models and the dev-fitted single α cut on held-out questions."""
    irrelevant = np.array([q["split"] in IRRELEVANT for q in questions])
    alpha = np.array([t.alphas[0] if t.alphas else 0.0 for t in tops])
    single = alpha < threshold
    out: dict[str, Any] = {"baseline_single_threshold": {**abstain_scores(single, irrelevant),
                                                         "per_split_abstain_rate": abstain_rates(questions, single)}}
    out["calibrated"] = {}
    for target, model in models.items():
        a = model_decisions(model, tops)
        out["calibrated"][str(target)] = {**abstain_scores(a, irrelevant),
                                          "per_split_abstain_rate": abstain_rates(questions, a)}
    return out


def report(questions: list[dict[str, Any]], results: dict[str, Any], thresholds: dict[str, float] | None,
           cross_fit: bool) -> dict[str, Any]:
    irrelevant = np.array([q["split"] in IRRELEVANT for q in questions])
    out: dict[str, Any] = {}
    fitted: dict[str, float] = {}
    for system, (ranks, tops) in results.items():
        ranked = [r for r, q in zip(ranks, questions, strict=False) if q["gold"]]
        block: dict[str, Any] = ranking_metrics(ranked)
        if thresholds is None:
            cal = calibrate(tops[~irrelevant], tops[irrelevant])
            fitted[system] = cal.threshold
            block |= cross_fitted(tops, irrelevant) if cross_fit else {}
            block["threshold"] = cal.threshold
            block["in_sample"] = abstain_block(tops, irrelevant, cal.threshold)
        else:
            block |= abstain_block(tops, irrelevant, thresholds[system])
        per_split = {}
        for split in sorted({q["split"] for q in questions}):
            sel = [i for i, q in enumerate(questions) if q["split"] == split]
            entry: dict[str, Any] = ranking_metrics([ranks[i] for i in sel if questions[i]["gold"]])
            thr = thresholds[system] if thresholds else fitted[system]
            entry["abstain_rate"] = float(np.mean([tops[i] < thr for i in sel]))
            per_split[split] = entry
        block["per_split"] = per_split
        out[system] = block
    out["thresholds"] = fitted or thresholds
    return out


#: earlier forms of FoA α, routed in the same run over the same agents and embeddings
EARLIER = {
    "without_views": {"views": False},  # one description vector per agent (the router before issue 20)
    "without_lexical_examples": {"lexical_examples": False},  # views, but BM25 over name, description, skills
}


def earlier_forms(fed: Federation) -> dict[str, RouterEngine]:
    return {name: fed.engine_with(**config) for name, config in EARLIER.items()}


def run(embedder: Embedder, dev_only: bool, targets: tuple[float, ...] = TARGETS,
        features: tuple[str, ...] = DEFAULT_FEATURES) -> dict[str, Any]:
    """The whole evaluation with one embedder: dev (top level) and, unless dev_only, held-out live."""
    t0 = time.perf_counter()
    dev_q = [q for s in DEV for q in load_split(s)]
    dev = Federation(dev_q, embedder, views=True)
    progress(f"[{embedder.backend}] dev federation: {len(dev.functions)} agents, {len(dev_q)} questions")
    dev_vecs = embedder.embed([q["text"] or "?" for q in dev_q])
    dev_tops: list[Top] = []
    dev_firsts: list[str | None] = []
    dev_res = evaluate(dev, dev_q, dev_vecs, tops_out=dev_tops, others=earlier_forms(dev), first_out=dev_firsts)
    dev_report = report(dev_q, dev_res, None, cross_fit=True)
    abstention, models = calibrated_abstention(dev_q, dev_tops, targets, features)
    result: dict[str, Any] = {
        **{
            k: dev_report["foa"][k]
            for k in ("top1", "top5", "mrr", "abstain_precision", "abstain_recall", "abstain_f1")
        },
        "agents": len(dev.functions),
        "questions": len(dev_q),
        "foa": dev_report["foa"],
        "baseline": dev_report["baseline"],
        "earlier": {name: dev_report[name] for name in EARLIER},
        "scoring": {"lexical_weight": scoring.LEXICAL_WEIGHT, "kappa": lexical.KAPPA, "model": embedder.model_name},
        "backend": embedder.backend,
        "abstention": abstention,
        "top1_misses": top1_misses(dev, dev_q, dev_res["foa"][0], dev_firsts),
    }
    if not dev_only:
        live_q = [q for s in LIVE for q in load_split(s)]
        live = Federation(live_q, embedder, views=True)
        progress(
            f"[{embedder.backend}] live federation (held out): {len(live.functions)} agents, {len(live_q)} questions"
        )
        live_vecs = embedder.embed([q["text"][:2000] or "?" for q in live_q])
        live_tops: list[Top] = []
        live_firsts: list[str | None] = []
        live_res = evaluate(live, live_q, live_vecs, tops_out=live_tops, others=earlier_forms(live),
                            first_out=live_firsts)
        live_report = report(live_q, live_res, dev_report["thresholds"], cross_fit=False)
        result["held_out_live"] = {
            "agents": len(live.functions),
            "questions": len(live_q),
            "foa": live_report["foa"],
            "baseline": live_report["baseline"],
            "earlier": {name: live_report[name] for name in EARLIER},
            "abstention": held_out_abstention(live_q, live_tops, models, dev_report["thresholds"]["foa"]),
            "top1_misses": top1_misses(live, live_q, live_res["foa"][0], live_firsts),
        }
        result["held_out_nestful"] = nestful_block(embedder)
    result["seconds"] = time.perf_counter() - t0
    return result


def nestful_block(embedder: Embedder) -> dict[str, Any]:
    """Top-1/top-5 on NESTFUL's requests (another tool catalogue, never tuned on): does a gain
    on BFCL carry over?"""
    questions = nestful_questions()
    fed = Federation(questions, embedder, views=True)
    progress(f"[{embedder.backend}] NESTFUL (held out): {len(fed.functions)} agents, {len(questions)} questions")
    vecs = embedder.embed([q["text"][:2000] or "?" for q in questions])
    res = evaluate(fed, questions, vecs, others=earlier_forms(fed))
    return {"agents": len(fed.functions), "questions": len(questions),
            "foa": ranking_metrics(res["foa"][0]), "baseline": ranking_metrics(res["baseline"][0]),
            "earlier": {name: ranking_metrics(res[name][0]) for name in EARLIER}}


def deltas(first: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """other minus first, top-1 and top-5, for FoA α and the plain-cosine baseline, dev and live."""
    out: dict[str, float] = {}
    for scope, a, b in (("dev", first, other), ("live", first.get("held_out_live"), other.get("held_out_live"))):
        if a is None or b is None:
            continue
        for system in ("foa", "baseline"):
            for k in ("top1", "top5"):
                out[f"{scope}_{system}_{k}"] = b[system][k] - a[system][k]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--lexical-weight", type=float, default=None, help="override scoring.LEXICAL_WEIGHT (tuning on dev)"
    )
    ap.add_argument("--kappa", type=float, default=None, help="override lexical.KAPPA (tuning on dev)")
    ap.add_argument("--dev-only", action="store_true", help="skip the held-out live splits")
    ap.add_argument("--false-accept", default=",".join(map(str, TARGETS)),
                    help="target false-accept rates of the calibrated abstention model, comma-separated; every "
                         "one is reported")
    ap.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                    help="the abstention model's features, comma-separated (router/abstention.py FEATURES)")
    ap.add_argument(
        "--backend", default="torch", help=f"embedding backend(s), comma-separated, compared in one run: {BACKENDS}"
    )
    args = ap.parse_args()
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        ap.error(f"--backend: one or more of {BACKENDS}, comma-separated (got {args.backend!r})")
    if args.lexical_weight is not None:
        scoring.LEXICAL_WEIGHT = args.lexical_weight
    if args.kappa is not None:
        lexical.KAPPA = args.kappa
    features = tuple(f.strip() for f in args.features.split(",") if f.strip())
    targets = tuple(float(t) for t in args.false_accept.split(",") if t.strip())
    runs = {b: run(shared_embedder(backend=b), args.dev_only, targets, features) for b in backends}
    result = dict(runs[backends[0]])
    if len(backends) > 1:
        result["backends"] = runs
        result["delta_vs_first"] = {b: deltas(runs[backends[0]], runs[b]) for b in backends[1:]}
    emit(result, args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
