"""Calibrated abstention: a tiny logistic model over what the router knows about its best
candidates, in place of one raw cut on the best α.

Features (`FEATURES`, each a function of `Top`: the best α values, best first, and the best
match's factors):

- `top`: the best α; `gap`: best α minus the second's (0 with one candidate); `rel_gap`: the
  gap over the best α (how clearly one agent stands out, whatever the federation's α scale);
- `sim`: the best match's raw cosine (factors["sim"]); `lexical`: its lexical factor;
- `log_top`: log of the best α (α is skewed: most queries sit in 0.01..0.1).

The hook: `register_feature(name, fn)` adds a feature (e.g. a view's similarity or a learned
view's support, read from the top match's factors), and a model names the features it was fitted
on, so a saved model keeps working while new features are added; a model that names a feature
this process does not know is refused at load (`UnknownFeature`).

The model: standardised features, L2-regularised logistic regression fitted by Newton steps with
balanced class weights (numpy only; a handful of weights, serialisable to JSON). Its cut on
p(relevant) is chosen for a target false-accept rate: the lowest cut that accepts at most that
share of the fitting negatives. `alpha_threshold` is the α cut that best reproduces the model's
decisions on the fitting data, and `alpha_flip(top)` the α at which the decision flips for one
query (the rest held), so "the abstention threshold on α" stays meaningful to readers of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODEL_KEY = "abstention_model"
DEFAULT_FEATURES: tuple[str, ...] = ("log_top", "rel_gap", "sim", "lexical")
DEFAULT_FALSE_ACCEPT = 0.1
ALPHA_MAX = 1.5


@dataclass(frozen=True)
class Top:
    """The best candidates of one query: α values best first (the top two suffice) and the best
    match's factors (sim, lexical, spec, ...; views add theirs)."""

    alphas: tuple[float, ...]
    factors: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of_matches(cls, matches: Sequence[Any]) -> Top:
        """From `Match` objects (a route response with abstention off), best first."""
        if not matches:
            return cls(())
        return cls(tuple(float(m.score) for m in matches[:2]), dict(matches[0].factors))

    def with_top(self, alpha: float) -> Top:
        return Top((alpha, *self.alphas[1:]), self.factors)


def _top(t: Top) -> float:
    return t.alphas[0] if t.alphas else 0.0


def _gap(t: Top) -> float:
    if not t.alphas:
        return 0.0
    return t.alphas[0] - (t.alphas[1] if len(t.alphas) > 1 else 0.0)


def _rel_gap(t: Top) -> float:
    top = _top(t)
    return _gap(t) / top if top > 0 else 0.0


FeatureFn = Callable[[Top], float]
AlphaFn = Callable[[float, float], float]  # (best α, second α) -> feature
FEATURES: dict[str, FeatureFn] = {
    "top": _top,
    "log_top": lambda t: math.log(max(_top(t), 1e-4)),
    "gap": _gap,
    "rel_gap": _rel_gap,
    "sim": lambda t: float(t.factors.get("sim", 0.0)),
    "lexical": lambda t: float(t.factors.get("lexical", 1.0)),
    "spec": lambda t: float(t.factors.get("spec", 1.0)),
    # available to a model, not in the default one (not measured yet; the probes a router
    # calibrates on carry no outcomes, so a learned feature fitted on them would get weight 0)
    "view": lambda t: float(t.factors.get("view", 0.0)),
    "learned_support": lambda t: float(t.factors.get("learned_support", 0.0)),
}
# the features that move with the best α, as functions of (best, second): `alpha_flip` varies
# only these (every other feature is computed once per query)
OF_ALPHA: dict[str, AlphaFn] = {
    "top": lambda a, s: a,
    "log_top": lambda a, s: math.log(max(a, 1e-4)),
    "gap": lambda a, s: a - s,
    "rel_gap": lambda a, s: (a - s) / a if a > 0 else 0.0,
}


class UnknownFeature(ValueError):
    pass


def register_feature(name: str, fn: FeatureFn, of_alpha: AlphaFn | None = None) -> None:
    """The extension hook: a new feature, computed from a query's `Top` (e.g. a view's similarity
    from the top match's factors). `of_alpha` only for a feature that moves with the best α: the
    same feature as a function of (best α, second α). Models fitted after this may name it;
    models fitted before are unaffected."""
    FEATURES[name] = fn
    if of_alpha is not None:
        OF_ALPHA[name] = of_alpha
    else:
        OF_ALPHA.pop(name, None)


def feature_matrix(tops: Sequence[Top], names: Sequence[str]) -> np.ndarray:
    missing = [n for n in names if n not in FEATURES]
    if missing:
        raise UnknownFeature(f"unknown abstention feature(s) {missing}; known: {sorted(FEATURES)}")
    fns = [FEATURES[n] for n in names]
    return np.array([[fn(t) for fn in fns] for t in tops], dtype=np.float64).reshape(len(tops), len(names))


@dataclass
class AbstentionModel:
    features: tuple[str, ...]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    threshold: float  # abstain when p(relevant) < threshold
    alpha_threshold: float  # the plain α cut that agrees best with the model on its fitting data
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fns = [FEATURES[n] for n in self.features] if all(n in FEATURES for n in self.features) else None
        if self._fns is None:
            raise UnknownFeature(f"model uses unknown feature(s) {[n for n in self.features if n not in FEATURES]}")
        self._w = np.asarray(self.weights, dtype=np.float64) / np.asarray(self.scale, dtype=np.float64)
        self._b = float(self.bias - float(self._w @ np.asarray(self.mean, dtype=np.float64)))

    def logit(self, top: Top) -> float:
        assert self._fns is not None
        return self._b + float(sum(w * fn(top) for w, fn in zip(self._w.tolist(), self._fns, strict=True)))

    def p_relevant(self, top: Top) -> float:
        z = self.logit(top)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def abstains(self, top: Top) -> bool:
        return not top.alphas or self.p_relevant(top) < self.threshold

    def alpha_flip(self, top: Top) -> float:
        """The best α at which this query's decision flips, the second α and the factors held
        (bracketed regula falsi between 0 and ALPHA_MAX). `alpha_threshold` when no α there makes
        it accept. Only the features in OF_ALPHA are recomputed per step."""
        if not top.alphas:
            return self.alpha_threshold
        assert self._fns is not None
        if not 0 < self.threshold < 1:
            return 0.0 if self.threshold <= 0 else self.alpha_threshold
        const = self._b - math.log(self.threshold / (1.0 - self.threshold))
        moving: list[tuple[float, AlphaFn]] = []
        for w, name, fn in zip(self._w.tolist(), self.features, self._fns, strict=True):
            if name in OF_ALPHA:
                moving.append((w, OF_ALPHA[name]))
            else:
                const += w * fn(top)
        second = top.alphas[1] if len(top.alphas) > 1 else 0.0

        def margin(a: float) -> float:
            return const + sum(w * g(a, second) for w, g in moving)

        lo, hi = 0.0, ALPHA_MAX
        f_lo, f_hi = margin(lo), margin(hi)
        if f_lo >= 0:
            return 0.0
        if f_hi < 0:
            return self.alpha_threshold
        side = 0
        for _ in range(40):  # Illinois (regula falsi): the bracket [lo, hi] always holds the flip
            if hi - lo < 1e-7:
                break
            mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
            if not lo < mid < hi:
                mid = 0.5 * (lo + hi)
            f_mid = margin(mid)
            if f_mid >= 0:
                hi, f_hi = mid, f_mid
                f_lo = f_lo / 2 if side == -1 else f_lo
                side = -1
            else:
                lo, f_lo = mid, f_mid
                f_hi = f_hi / 2 if side == 1 else f_hi
                side = 1
            if f_hi == 0.0:
                break
        return hi

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "logistic",
            "features": list(self.features),
            "mean": self.mean,
            "scale": self.scale,
            "weights": self.weights,
            "bias": self.bias,
            "threshold": self.threshold,
            "alpha_threshold": self.alpha_threshold,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AbstentionModel:
        if data.get("kind", "logistic") != "logistic":
            raise ValueError(f"unknown abstention model kind {data.get('kind')!r}")
        return cls(
            features=tuple(str(f) for f in data["features"]),
            mean=[float(v) for v in data["mean"]],
            scale=[float(v) for v in data["scale"]],
            weights=[float(v) for v in data["weights"]],
            bias=float(data["bias"]),
            threshold=float(data["threshold"]),
            alpha_threshold=float(data["alpha_threshold"]),
            provenance=dict(data.get("provenance", {})),
        )


def _logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """Balanced-class L2 logistic regression (bias not penalised), Newton steps."""
    n, d = x.shape
    pos = max(float(y.sum()), 1.0)
    neg = max(float(n - y.sum()), 1.0)
    sw = np.where(y > 0, n / (2 * pos), n / (2 * neg))
    xb = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ theta, -30, 30)))
        grad = xb.T @ (sw * (p - y)) + reg * theta
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def cut_for_false_accept(p_rel: np.ndarray, p_irr: np.ndarray, target: float) -> float:
    """The lowest cut on p(relevant) that accepts (p ≥ cut) at most `target` of the negatives,
    halfway between the last negative refused and the next score above it."""
    values = np.unique(np.concatenate([p_rel, p_irr]))
    allowed = math.floor(target * len(p_irr) + 1e-9)
    neg = np.sort(p_irr)[::-1]
    if allowed >= len(neg):
        return float(values[0])
    refuse_at = float(neg[allowed])  # this negative (and all below) must be refused
    above = values[values > refuse_at]
    return float(0.5 * (refuse_at + above[0])) if len(above) else float(np.nextafter(refuse_at, 2.0))


def best_alpha_cut(alpha: np.ndarray, accept: np.ndarray) -> float:
    """The α cut that agrees with `accept` on the most queries (accept iff α ≥ cut)."""
    order = np.argsort(alpha)
    a, acc = alpha[order], accept[order].astype(np.int64)
    # cut below position i: refuse a[:i], accept a[i:]; errors = accepted among refused + refused among accepted
    refused_ok = np.concatenate([[0], np.cumsum(acc)])  # accepts wrongly refused
    wrong_acc = (len(a) - np.arange(len(a) + 1)) - (acc.sum() - refused_ok)
    errors = refused_ok + wrong_acc
    i = int(np.argmin(errors))
    if i == 0:
        return float(a[0]) if len(a) else 0.0
    if i == len(a):
        return float(np.nextafter(a[-1], 2.0))
    return float(0.5 * (a[i - 1] + a[i]))


def fit(
    relevant: Sequence[Top],
    irrelevant: Sequence[Top],
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    target_false_accept: float = DEFAULT_FALSE_ACCEPT,
    l2: float = 1.0,
    provenance: Mapping[str, Any] | None = None,
) -> AbstentionModel:
    if not relevant or not irrelevant:
        raise ValueError("the abstention model needs at least one relevant and one irrelevant query")
    names = tuple(features)
    x = feature_matrix([*relevant, *irrelevant], names)
    y = np.concatenate([np.ones(len(relevant)), np.zeros(len(irrelevant))])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    w, b = _logistic((x - mean) / scale, y, l2)
    model = AbstentionModel(names, mean.tolist(), scale.tolist(), w.tolist(), b, 0.5, 0.0)
    p = np.array([model.p_relevant(t) for t in [*relevant, *irrelevant]])
    model.threshold = cut_for_false_accept(p[: len(relevant)], p[len(relevant) :], target_false_accept)
    alphas = np.array([_top(t) for t in [*relevant, *irrelevant]])
    model.alpha_threshold = best_alpha_cut(alphas, p >= model.threshold)
    accept = p >= model.threshold
    tp = int((~accept[len(relevant) :]).sum())
    fp = int((~accept[: len(relevant)]).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / len(irrelevant)
    model.provenance = {
        **(provenance or {}),
        "relevant": len(relevant),
        "irrelevant": len(irrelevant),
        "target_false_accept": target_false_accept,
        "l2": l2,
        "fit_precision": precision,
        "fit_recall": recall,
        "fit_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
    return model
