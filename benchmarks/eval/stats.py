"""Means and bootstrap standard deviations, as simple-evals reports HealthBench.

simple-evals repeats the example list once per repeat and reports, over all per-example
scores, the mean clipped to [0, 1] and the s.d. of that clipped mean over 1,000 bootstrap
resamples. Seeds play the role of repeats here: the pooled per-(seed, example) scores of a
system give its mean ± s.d.; the per-seed clipped means are reported beside them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from benchmarks.eval.grading import ExampleGrade

N_BOOTSTRAP = 1000


class Stat(BaseModel):
    mean: float
    sd: float
    n: int


class SystemScores(BaseModel):
    overall: Stat
    per_seed: dict[int, float] = Field(default_factory=dict)
    themes: dict[str, Stat] = Field(default_factory=dict)
    axes: dict[str, Stat] = Field(default_factory=dict)
    grader_failures: int = 0
    criteria_graded: int = 0
    answer_failures: int = 0


def clipped_mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("clipped_mean of no values")
    return float(np.clip(np.mean(values), 0.0, 1.0))


def bootstrap_sd(values: Sequence[float], rng: np.random.Generator, n_boot: int = N_BOOTSTRAP) -> float:
    """S.d. of the clipped mean over `n_boot` resamples with replacement (vectorised)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("bootstrap_sd of no values")
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    means = np.clip(arr[idx].mean(axis=1), 0.0, 1.0)
    return float(means.std())


def stat(values: Sequence[float], rng: np.random.Generator) -> Stat:
    return Stat(mean=round(clipped_mean(values), 6), sd=round(bootstrap_sd(values, rng), 6), n=len(values))


def aggregate(grades: Sequence[ExampleGrade], rng: np.random.Generator) -> SystemScores:
    """One system's grades (all seeds) → overall, per-seed, per-theme and per-axis stats.

    Theme scores are the overall example scores grouped by `theme:*` example tag; axis scores
    are the per-example scores over only the criteria tagged `axis:*`. Examples whose score is
    undefined (no positive points) are left out, as simple-evals does."""
    scored = [g for g in grades if g.score is not None]
    if not scored:
        raise ValueError("no gradable examples (every rubric lacks positive points)")
    by_seed: dict[int, list[float]] = defaultdict(list)
    by_theme: dict[str, list[float]] = defaultdict(list)
    by_axis: dict[str, list[float]] = defaultdict(list)
    for g in scored:
        assert g.score is not None
        by_seed[g.seed].append(g.score)
        for theme in g.themes:
            by_theme[theme].append(g.score)
        for axis, s in g.axis_scores.items():
            by_axis[axis].append(s)
    return SystemScores(
        overall=stat([g.score for g in scored if g.score is not None], rng),
        per_seed={seed: clipped_mean(v) for seed, v in sorted(by_seed.items())},
        themes={t: stat(v, rng) for t, v in sorted(by_theme.items())},
        axes={a: stat(v, rng) for a, v in sorted(by_axis.items())},
        grader_failures=sum(g.grader_failures for g in grades),
        criteria_graded=sum(len(g.criteria) for g in grades),
        answer_failures=sum(g.answer_failed for g in grades),
    )
