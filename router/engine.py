"""A full routed query: index search with over-fetch, gates, α re-score, merge, abstention.

Over-fetch: the index is asked for max(over_fetch · k, min_fetch) nearest agents by cosine,
every candidate is re-scored with the full α, and the top k that pass the gates are returned.
If gates or offline agents leave fewer than k, the fetch grows 4x up to `max_fetch`; past
that (a gate only a few agents pass), the rows that pass every gate are searched again: exactly
when there are few of them, else with an hnswlib filter. So a gate never loses a good agent that
the index ranked low.

Why min_fetch = 256: α multiplies sim by the lexical, resource, spec and reputation factors,
so the α top 10 is not the cosine top 10. Measured on 100k synthetic agents
(benchmarks/router_scale.py --no-bound): recall@10 against exact α is 0.857 when fetching 64,
0.999 when fetching 256. An exact stopping rule exists (every factor but sim is ≤ 1 and
reputation ≤ REPUTATION_MAX, so an unfetched agent has α ≤ REPUTATION_MAX · lowest fetched sim;
`bound_check=True`), but it almost never fires before max_fetch and costs 5x the latency.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fabric.bloom import normalise_skill
from fabric.messages import AssignQuery, AssignResponse, AuditEvent, Match, RouteQuery, RouteResponse
from router.abstention import MODEL_KEY, AbstentionModel, Top
from router.assignment import AssignmentProblem, solve
from router.index import CapabilityIndex
from router.scoring import REPUTATION_MAX, QueryContext, Scored, gate_mask, score

THRESHOLD_KEY = "abstain_threshold"
log = logging.getLogger("foa.router")


@dataclass
class RouteOutcome:
    response: RouteResponse
    audits: list[AuditEvent] = field(default_factory=list)
    fetched: int = 0


@dataclass
class RouterEngine:
    index: CapabilityIndex
    over_fetch: int = 4
    min_fetch: int = 256
    max_fetch: int = 2048
    # a gate passed by at most this many agents is searched exactly among them (see `_filtered`)
    exact_gated_max: int = 8192
    bound_check: bool = False
    _model_source: Any = field(default=None, init=False, repr=False)
    _model: AbstentionModel | None = field(default=None, init=False, repr=False)

    @property
    def threshold(self) -> float | None:
        """The abstention cut on the best α: the raw threshold, or with a calibrated model its
        α equivalent (router/abstention.py `alpha_threshold`)."""
        value = self.index.meta.get(THRESHOLD_KEY)
        return None if value is None else float(value)

    def set_threshold(self, value: float | None, **info: object) -> None:
        """A raw threshold on the best α (replaces a calibrated model)."""
        self.index.meta[THRESHOLD_KEY] = value
        self.index.meta[MODEL_KEY] = None
        self.index.meta["calibration"] = info

    def set_model(self, model: AbstentionModel, **info: object) -> None:
        """A calibrated abstention model (kept in the index meta, so snapshots carry it)."""
        self.index.meta[MODEL_KEY] = model.to_dict()
        self.index.meta[THRESHOLD_KEY] = model.alpha_threshold
        self.index.meta["calibration"] = {**model.provenance, **info}

    @property
    def model(self) -> AbstentionModel | None:
        data = self.index.meta.get(MODEL_KEY)
        if data is not self._model_source:
            self._model_source = data
            self._model = None
            if data is not None:
                try:
                    self._model = AbstentionModel.from_dict(data)
                except (ValueError, KeyError, TypeError) as exc:  # a model from a newer release: raw threshold
                    log.warning("ignoring unusable abstention model", extra={"error": str(exc)})
        return self._model

    def context(self, query: RouteQuery, qvec: np.ndarray) -> QueryContext:
        mask, unknown = self.index.query_policy_mask([p.strip().lower() for p in query.policies])
        rows = [self.index.rows[a] for a in query.exclude if a in self.index.rows]
        return QueryContext(
            qvec=np.asarray(qvec, dtype=np.float32),
            top_k=query.top_k,
            policy_mask=mask,
            unknown_policies=unknown,
            skills=[normalise_skill(s) for s in query.skills if s.strip()],
            max_cost=query.max_cost,
            deadline_ms=query.deadline_ms,
            input_tokens=query.input_tokens,
            output_tokens=query.output_tokens,
            lexical=self.index.lexical.query(query.text),
            exclude_rows=np.asarray(rows, dtype=np.int64),
        )

    def candidates(self, ctx: QueryContext) -> tuple[Scored, int]:
        """Scored candidates after adaptive over-fetch; also returns how many were fetched."""
        k = ctx.top_k
        total = len(self.index)
        fetch = min(max(self.over_fetch * k, self.min_fetch), max(total, 1))
        while True:
            rows, sims = self.index.search(ctx.qvec, fetch)
            scored = score(self.index, ctx, rows, sims)
            passed = scored.passed()
            n_ok = int(passed.sum())
            if ctx.unknown_policies:  # nobody can pass; score the first fetch for audit events only
                return scored, fetch
            # a gate so selective that even max_fetch nearest would not hold k passing agents
            # (by the share among these): search among the passing ones now, not after 4x, 16x
            # fetches (each deeper graph walk cost more than the search it led to: 24 of 30 ms)
            hopeless = n_ok * self.max_fetch < k * max(len(rows), 1)
            if n_ok < k and fetch < total and (fetch >= self.max_fetch or hopeless):
                return self._filtered(ctx, rows, sims), fetch
            if fetch >= total or fetch >= self.max_fetch:
                return scored, fetch
            if n_ok >= k:
                if not self.bound_check or len(sims) == 0:
                    return scored, fetch
                kth = np.partition(scored.alpha[passed], n_ok - k)[n_ok - k]
                if kth >= REPUTATION_MAX * float(np.clip(sims.min(), 0, 1)):
                    return scored, fetch
            fetch = min(fetch * 4, self.max_fetch, total)

    def _filtered(self, ctx: QueryContext, rows: np.ndarray, sims: np.ndarray) -> Scored:
        """Selective gates: search only among agents that pass them, merge.

        Few passing agents (≤ `exact_gated_max`): exact cosines over their vectors. Why: hnswlib's
        filter is a Python call per visited node, and the walk visits ~ef/share of the graph
        before it finds ef passing ones; a skill 0.1% of 100k agents have took 500-800 ms a
        query (56M filter calls in 2,000 queries), exactly among them ~1 ms. More: the
        filtered graph walk, whose cost falls as the share passing grows."""
        allowed = gate_mask(self.index, ctx)
        want = max(self.over_fetch * ctx.top_k, 64)
        passing = np.flatnonzero(allowed)
        if len(passing) <= self.exact_gated_max:
            more_sims = (self.index.vectors(passing) @ ctx.qvec).astype(np.float32)
            more_rows = passing
            if len(passing) > want:
                top = np.argpartition(-more_sims, want - 1)[:want]
                more_rows, more_sims = passing[top], more_sims[top]
        else:
            more_rows, more_sims = self.index.search(ctx.qvec, want, allowed)
        all_rows = np.concatenate([rows, more_rows])
        all_sims = np.concatenate([sims, more_sims])
        all_rows, first = np.unique(all_rows, return_index=True)
        return score(self.index, ctx, all_rows, all_sims[first])

    def route(self, query: RouteQuery, qvec: np.ndarray, *, query_id: str = "") -> RouteOutcome:
        ctx = self.context(query, qvec)
        scored, fetched = self.candidates(ctx)
        return self.finish(query, ctx, scored, fetched, query_id)

    def finish(self, query: RouteQuery, ctx: QueryContext, scored: Scored, fetched: int, query_id: str) -> RouteOutcome:
        k = ctx.top_k
        passed = scored.passed()
        idx = np.flatnonzero(passed)
        order = idx[np.argsort(-scored.alpha[idx], kind="stable")][:k]
        kth = float(scored.alpha[order[-1]]) if len(order) == k else 0.0
        audits = self._audits(query, ctx, scored, kth, query_id)
        model = self.model
        if model is None:
            threshold = self.threshold
            top = float(scored.alpha[order[0]]) if len(order) else 0.0
            abstained = bool(query.abstain and threshold is not None and (len(order) == 0 or top < threshold))
        else:  # the calibrated model decides; `threshold` is the α at which its decision flips here
            best = self._top(scored, idx, order)
            threshold = model.alpha_flip(best)
            abstained = bool(query.abstain and (len(order) == 0 or model.abstains(best)))
        matches = [] if abstained else self._matches(scored, order)
        response = RouteResponse(
            matches=matches,
            abstained=abstained,
            threshold=threshold,
            candidates_considered=len(scored.rows),
            blocked=int((scored.eligible & ~passed).sum()),
        )
        return RouteOutcome(response, audits, fetched)

    @staticmethod
    def _top(scored: Scored, idx: np.ndarray, order: np.ndarray) -> Top:
        """The abstention model's input: the best two α among agents passing the gates (whatever
        top_k is) and the best one's factors."""
        if len(order) == 0:
            return Top(())
        first = int(order[0])
        alphas = [float(scored.alpha[first])]
        if len(order) > 1:
            alphas.append(float(scored.alpha[order[1]]))
        elif len(idx) > 1:
            alphas.append(float(np.partition(scored.alpha[idx], -2)[-2]))
        return Top(tuple(alphas), {name: float(arr[first]) for name, arr in scored.factors.items()})

    def _matches(self, scored: Scored, order: np.ndarray) -> list[Match]:
        """`_match` for the top k at once: one gather per column instead of ~20 numpy scalar
        reads per match (about 0.1 ms of a 1.2 ms query at 100k agents); the same values."""
        names = [*scored.factors, *scored.gates]
        cols = [arr[order].tolist() for arr in scored.factors.values()]
        cols += [ok[order].astype(np.float64).tolist() for ok in scored.gates.values()]
        nf = len(scored.factors)
        rows = scored.rows[order].tolist()
        versions = self.index.table.version[scored.rows[order]].tolist()
        alpha, cost, latency = (a[order].tolist() for a in (scored.alpha, scored.cost, scored.latency))
        out = []
        for j, row in enumerate(rows):
            pairs = enumerate(zip(names, cols, strict=True))
            factors = {n: (round(c[j], 6) if f < nf else c[j]) for f, (n, c) in pairs}
            out.append(
                Match(
                    agent_id=self.index.ids[row] or "",
                    version=versions[j],
                    score=round(alpha[j], 6),
                    factors=factors,
                    expected_cost=cost[j],
                    expected_latency_ms=latency[j],
                )
            )
        return out

    def _match(self, scored: Scored, i: int) -> Match:
        row = int(scored.rows[i])
        factors = {name: round(float(arr[i]), 6) for name, arr in scored.factors.items()}
        factors |= {name: float(ok[i]) for name, ok in scored.gates.items()}
        return Match(
            agent_id=self.index.ids[row] or "",
            version=int(self.index.table.version[row]),
            score=round(float(scored.alpha[i]), 6),
            factors=factors,
            expected_cost=float(scored.cost[i]),
            expected_latency_ms=float(scored.latency[i]),
        )

    def _audits(
        self, query: RouteQuery, ctx: QueryContext, scored: Scored, kth: float, query_id: str
    ) -> list[AuditEvent]:
        """A gate that removed an eligible agent whose ungated α would have made the top k."""
        blocked = scored.eligible & ~scored.passed() & (scored.ungated > kth)
        idx = np.flatnonzero(blocked)
        idx = idx[np.argsort(-scored.ungated[idx])][: ctx.top_k]
        events = []
        for i in idx.tolist():
            row = int(scored.rows[i])
            failed = [g for g, ok in scored.gates.items() if not ok[i]]
            events.append(
                AuditEvent(
                    query_id=query_id,
                    agent_id=self.index.ids[row] or "",
                    gate=failed[0],  # type: ignore[arg-type]  # a key of scored.gates: one of GATES
                    detail=self._detail(failed, query, ctx, scored, i),
                    score_without_gate=round(float(scored.ungated[i]), 6),
                    factors={name: round(float(arr[i]), 6) for name, arr in scored.factors.items()},
                )
            )
        return events

    def _detail(self, failed: list[str], query: RouteQuery, ctx: QueryContext, scored: Scored, i: int) -> str:
        parts = []
        for gate in failed:
            if gate == "policy":
                parts.append(f"policy: requires {sorted(query.policies)}")
            elif gate == "skills":
                parts.append(f"skills: requires {ctx.skills}")
            elif gate == "budget":
                parts.append(f"budget: expected cost {float(scored.cost[i]):.6g} > max_cost {query.max_cost}")
            elif gate == "deadline":
                parts.append(f"deadline: expected latency {float(scored.latency[i]):.0f} ms > {query.deadline_ms} ms")
        return "; ".join(parts)


def assign(engine: RouterEngine, query: AssignQuery, qvecs: np.ndarray, *, method: str = "auto") -> AssignResponse:
    """Route every subtask (no abstention: a subtask needs someone), then solve Σα under
    team sizes and agent capacity (router/assignment.py)."""
    per_subtask: list[tuple[Scored, np.ndarray]] = []
    for sub, vec in zip(query.subtasks, qvecs, strict=False):
        rq = RouteQuery(
            text=sub.text,
            top_k=query.candidates_per_subtask,
            policies=sub.policies,
            skills=sub.skills,
            max_cost=sub.max_cost,
            deadline_ms=sub.deadline_ms,
            exclude=query.exclude,
            abstain=False,
        )
        ctx = engine.context(rq, vec)
        scored, _ = engine.candidates(ctx)
        idx = np.flatnonzero(scored.passed())
        idx = idx[np.argsort(-scored.alpha[idx], kind="stable")][: rq.top_k]
        per_subtask.append((scored, idx))
    agent_rows = sorted({int(s.rows[i]) for s, idx in per_subtask for i in idx})
    col = {row: j for j, row in enumerate(agent_rows)}
    alpha = np.zeros((len(query.subtasks), len(agent_rows)))
    where: dict[tuple[int, int], tuple[Scored, int]] = {}
    for i, (scored, idx) in enumerate(per_subtask):
        for k in idx.tolist():
            j = col[int(scored.rows[k])]
            alpha[i, j] = max(float(scored.alpha[k]), 1e-9)
            where[(i, j)] = (scored, k)
    problem = AssignmentProblem(
        alpha=alpha,
        min_agents=np.array([s.min_agents for s in query.subtasks], dtype=np.int64),
        max_agents=np.array([max(s.max_agents, s.min_agents) for s in query.subtasks], dtype=np.int64),
        capacity=engine.index.table.concurrency[np.asarray(agent_rows, dtype=np.int64)].astype(np.int64)
        if agent_rows
        else np.zeros(0, dtype=np.int64),
    )
    result = solve(problem, method)
    assignments: dict[str, list[Match]] = {}
    for i, sub in enumerate(query.subtasks):
        chosen = [j for j in np.flatnonzero(result.x[i]).tolist()]
        matches = [engine._match(*where[(i, j)]) for j in chosen]
        assignments[sub.subtask_id] = sorted(matches, key=lambda m: -m.score)
    return AssignResponse(
        assignments=assignments,
        objective=round(result.objective, 6),
        solver=result.solver,
        unassigned=[query.subtasks[i].subtask_id for i in result.unassigned],
        threshold=engine.threshold,
    )
