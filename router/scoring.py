"""α (docs/architecture.md §5), vectorised over candidate rows, with its factor breakdown.

    α = sim · lexical · 1[p_s ⊆ p_a] · 1[skills] · f(r_s, r_a) · g(e_s, e_a) · reputation

- sim: cosine of task and capability embeddings, fused with the agent's example views (skill
  examples, tool docs, its skills as short queries; `view_similarity`), then lifted toward its
  learned view (the subtasks it was kept for, router/learning.py) by at most
  `weight · n/(n + prior)` of the gap, clipped to [0, 1].
- lexical: (1 - W) + W · bm25, bm25 saturated into [0, 1] (router/lexical.py). A multiplier
  ≤ 1, so α never exceeds sim · REPUTATION_MAX: the index can stop over-fetching once the
  best α found beats that bound for every unfetched agent.
- policy gate: every required flag is in the agent's clearances (bitmask test).
- skills gate: Bloom filter first (no false negatives), then the exact list where the VCV has one.
- f: hard cuts (expected cost > max_cost → 0; expected latency > deadline → 0), then a
  monotone penalty 1/(1 + gap) on cost (relative to the budget, or to COST_SCALE), latency
  (relative to the deadline, or to LATENCY_SCALE_MS) and context shortfall.
- g: (1 + cos(e_s, e_a)) / 2 with e_s the task embedding and e_a the int8 spec embedding.
- reputation: 0.75 + 0.5 · score (score 0.5 = unknown → 1.0; 0 → 0.75; 1 → 1.25). A
  multiplier, so a track record re-orders near ties but cannot lift an unfit agent.

W, the lexical weight, was chosen on BFCL dev splits (0.3/0.5/0.7 measured, 0.7 best).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fabric.bloom import bit_positions, normalise_skill
from router.index import SPEC_SCALE, AgentTable, CapabilityIndex
from router.lexical import LexicalQuery, saturate

LEXICAL_WEIGHT = 0.7
REPUTATION_BASE = 0.75
REPUTATION_SPAN = 0.5
REPUTATION_MAX = REPUTATION_BASE + REPUTATION_SPAN
COST_SCALE = 1.0  # currency units: without a budget, a task costing this halves the cost factor
LATENCY_SCALE_MS = 60_000.0  # without a deadline, a task taking a minute halves the latency factor
GATES = ("policy", "skills", "budget", "deadline")
#: a cost or latency "at the limit" passes: the columns are float32 (~7 significant digits), so a
#: cost equal to max_cost in the VCV's own float64 arithmetic can come out a hair above it here
#: (0.002 per 1k -> 0.0020000001), and a cost of 1e-17 is no cost at all. Found by hypothesis
#: (tests/test_router_scoring.py): an agent costing 1.2e-17 per 1k refused under max_cost 0
LIMIT_RTOL = 1e-6
LIMIT_ATOL = 1e-9


def within(values: np.ndarray, limit: float) -> np.ndarray:
    """values ≤ limit, up to float32's precision (LIMIT_RTOL, LIMIT_ATOL)."""
    return np.asarray(values <= limit + LIMIT_RTOL * abs(limit) + LIMIT_ATOL, dtype=bool)


def expected_cost(t: AgentTable, rows: np.ndarray, ctx: QueryContext) -> np.ndarray:
    """The task's cost at each row's prices (one formula for α's factor and the gates)."""
    return np.asarray((ctx.input_tokens * t.cost_in[rows] + ctx.output_tokens * t.cost_out[rows]) / 1000.0)


def expected_latency(t: AgentTable, rows: np.ndarray, ctx: QueryContext) -> np.ndarray:
    """The task's latency at each row's speed (a free row's 0 tokens/s reads as very slow, not
    as a division by zero: `gate_mask` reads rows before it knows they are live)."""
    return np.asarray(t.latency_ms[rows] + 1000.0 * ctx.output_tokens / np.maximum(t.tokens_per_s[rows], 1e-9))


@dataclass
class QueryContext:
    """One routed (sub)task, resolved against the index's vocabularies."""

    qvec: np.ndarray
    top_k: int
    policy_mask: int
    unknown_policies: list[str]
    skills: list[str]
    max_cost: float | None
    deadline_ms: float | None
    input_tokens: int
    output_tokens: int
    lexical: LexicalQuery
    exclude_rows: np.ndarray


@dataclass
class Scored:
    """α and every factor for a set of candidate rows (parallel arrays)."""

    rows: np.ndarray
    alpha: np.ndarray
    ungated: np.ndarray  # α with the hard gates set to 1 (for audit events)
    factors: dict[str, np.ndarray]
    gates: dict[str, np.ndarray]  # True = passes
    cost: np.ndarray
    latency: np.ndarray
    eligible: np.ndarray  # live, online, not excluded

    def passed(self) -> np.ndarray:
        ok = self.eligible.copy()
        for gate in self.gates.values():
            ok &= gate
        return ok


def pool_positions(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Every position of several (start, length) slices of a flat pool, slice after slice: the
    skill and view pools are read for all candidates in one gather."""
    lens = lens.astype(np.int64)
    offsets = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.asarray(np.repeat(starts, lens) + offsets, dtype=np.int64)


def skills_gate(index: CapabilityIndex, rows: np.ndarray, skills: list[str]) -> np.ndarray:
    """Bloom filter for every row, then the exact skill list where the VCV carried one."""
    ok = np.ones(len(rows), dtype=bool)
    if not skills or len(rows) == 0:
        return ok
    wanted = [normalise_skill(s) for s in skills]
    bloom = index.table.bloom[rows]
    for skill in wanted:
        for pos in bit_positions(skill):
            ok &= (bloom[:, pos >> 3] & (1 << (pos & 7))) != 0
    ids = [index.skill_vocab.get(s, -1) for s in wanted]
    table = index.table
    sel = np.flatnonzero(ok & (table.skill_len[rows] > 0))
    if len(sel) == 0:
        return ok
    if any(sid < 0 for sid in ids):  # a skill no agent lists: every row with a list fails
        ok[sel] = False
        return ok
    # the exact lists of the rows that passed the Bloom filter, gathered from the flat pool in
    # one go: a Python loop over them was the router's p99 (a skill query near its own topic
    # has ~300 Bloom hits among 576 candidates: 1.3 ms of the 2.4 ms p99 at 100k agents)
    lens = table.skill_len[rows[sel]].astype(np.int64)
    owner = np.repeat(np.arange(len(sel)), lens)
    flat = pool_positions(table.skill_start[rows[sel]], lens)
    have = table.skill_pool[flat]
    for sid in set(ids):
        ok[sel[np.bincount(owner[have == sid], minlength=len(sel)) == 0]] = False
    return ok


def view_similarity(index: CapabilityIndex, rows: np.ndarray, qvec: np.ndarray,
                    desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the fused similarity, the best view's cosine; 0 without views) of candidate rows.

    Only the `view_candidates` (64) candidates nearest by their description are re-scored with
    their views (int8, one gather for all of them): at 100k agents with 8 views each
    (`benchmarks/router_scale.py --views 8`) re-scoring all ~576 fetched candidates made p99
    6.2 ms, 64 of them 4.3 ms (2.9 ms without views, back to back), for the same BFCL top-1 on
    dev and 0.001 less on live. Pooling over the description and the views
    (IndexConfig.view_pooling): `softmax` = T · log(mean(exp(s / T))) (T = view_temperature),
    `max`, `weighted_max` = (1 - w) · description + w · max(description, best view), `none`.
    An agent without views keeps its description's cosine under every pooling.

    Measured with `benchmarks/routing_views.py --json` (BFCL's functions with the views the MCP
    gateway gives a tool; the router without views in the same run): top-1 / top-5

    | pooling | dev | held-out live |
    |---|---|---|
    | no views | 0.791 / 0.960 | 0.714 / 0.856 |
    | max | 0.793 / 0.966 | 0.700 / 0.849 |
    | **weighted max, w 0.5** | 0.801 / 0.966 | 0.723 / 0.858 |
    | weighted max, w 0.7 | 0.801 / 0.964 | 0.717 / 0.856 |
    | softmax, T 0.02 / 0.05 / 0.1 | 0.796 / 0.799 / 0.793 top-1 | 0.707 / 0.713 / 0.719 top-1 |

    A bare max lets a short view ("get weather") outrank a better description on live; the
    weighted max keeps half of the description's cosine. The gain is one point: views templated
    from a tool's doc repeat what the description and the lexical factor already hold; real
    skill examples (A2A cards, `examples:` in a spec) are where views add words."""
    t = index.table
    cfg = index.config
    fused = desc.astype(np.float32).copy()
    best = np.zeros(len(rows), dtype=np.float32)
    lens = t.view_len[rows].astype(np.int64)
    sel = np.flatnonzero(lens > 0)
    if len(sel) == 0 or cfg.view_pooling == "none":
        return fused, best
    if len(sel) > cfg.view_candidates:  # the best candidates by description only
        sel = np.sort(sel[np.argpartition(-desc[sel], cfg.view_candidates - 1)[: cfg.view_candidates]])
    n = lens[sel]
    flat = pool_positions(t.view_start[rows[sel]], n)
    vs = (t.view_pool[flat].astype(np.float32) @ np.asarray(qvec, dtype=np.float32)) / SPEC_SCALE
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]])
    best[sel] = np.maximum.reduceat(vs, offsets)
    d = desc[sel].astype(np.float32)
    if cfg.view_pooling == "max":
        fused[sel] = np.maximum(d, best[sel])
    elif cfg.view_pooling == "weighted_max":
        fused[sel] = (1 - cfg.view_weight) * d + cfg.view_weight * np.maximum(d, best[sel])
    else:
        temp = cfg.view_temperature
        top = np.maximum(d, best[sel])  # subtracted before exp: no overflow at small temperatures
        total = np.exp((d - top) / temp) + np.add.reduceat(np.exp((vs - np.repeat(top, n)) / temp), offsets)
        fused[sel] = top + temp * np.log(total / (n + 1))
    return fused, best


def learned_words(index: CapabilityIndex, ctx: QueryContext, rows: np.ndarray, slots: np.ndarray,
                  support: np.ndarray) -> np.ndarray:
    """Raw BM25 of the agents' learned words (router/learning.py), scaled by the learned view's
    confidence n/(n + prior): a word a user asked an agent for counts only where the task is near
    what the agent was kept for, so a wrong outcome cannot lift it for every task naming the word.

    `benchmarks/routing_learning.py --json --fit` (BFCL streams; vectors only and these words
    ungated, in the same run): ungated words gained on held-out live (learning gain 0.116 vs 0.075,
    noisy +0.043 vs +0.029 over static) but lost on dev, where the constants are chosen (overall
    hit@1 0.806 vs 0.825 vectors only, and 10% wrong feedback 0.024 below static). Gated, live:
    gain 0.1005, noisy +0.036 over static (`--seed 1/2/3`: 0.090 / 0.065 / 0.098 vs 0.065 / 0.090 /
    0.059 vectors only); dev (`--fit` re-chose a fixed cosine floor): gain 0.077
    vs 0.066 vectors only, noisy +0.004."""
    out = np.zeros(len(rows), dtype=np.float32)
    sel = np.flatnonzero((slots >= 0) & (support > 0))
    if len(sel) == 0:
        return out
    ids = index.learned.word_ids[slots[sel]]
    confidence = support[sel] / (support[sel] + index.learned.config.prior)
    out[sel] = index.lexical.extra_scores(ctx.lexical, rows[sel], ids) * confidence
    return out


def score(index: CapabilityIndex, ctx: QueryContext, rows: np.ndarray, sims: np.ndarray) -> Scored:
    t: AgentTable = index.table
    rows = rows.astype(np.int64)
    eligible = t.alive[rows] & t.online[rows]
    if len(ctx.exclude_rows):
        eligible &= ~np.isin(rows, ctx.exclude_rows)
    fused, view = view_similarity(index, rows, ctx.qvec, sims)
    slots = t.learned[rows].astype(np.int64) - 1
    learned, support = index.learned.similarity(slots, ctx.qvec, fused)
    lift = index.learned.lift(fused, learned, support)
    sim = np.clip(fused + lift, 0.0, 1.0)
    raw = index.lexical.raw_scores(ctx.lexical, rows)
    words = learned_words(index, ctx, rows, slots, support)
    lex = saturate(raw + words)
    lexical = (1.0 - LEXICAL_WEIGHT) + LEXICAL_WEIGHT * lex
    words_part = LEXICAL_WEIGHT * (lex - saturate(raw)) if words.any() else np.zeros_like(lex)
    mask = np.uint64(ctx.policy_mask)
    policy_ok = (t.policy[rows] & mask) == mask
    if ctx.unknown_policies:
        policy_ok[:] = False
    skills_ok = skills_gate(index, rows, ctx.skills)
    cost = expected_cost(t, rows, ctx)
    latency = expected_latency(t, rows, ctx)
    budget_ok = np.ones(len(rows), bool) if ctx.max_cost is None else within(cost, ctx.max_cost)
    deadline_ok = np.ones(len(rows), bool) if ctx.deadline_ms is None else within(latency, ctx.deadline_ms)
    cost_scale = max(ctx.max_cost, 1e-9) if ctx.max_cost else COST_SCALE
    lat_scale = max(ctx.deadline_ms, 1e-6) if ctx.deadline_ms else LATENCY_SCALE_MS
    f_cost = 1.0 / (1.0 + cost / cost_scale)
    f_lat = 1.0 / (1.0 + latency / lat_scale)
    need = float(ctx.input_tokens + ctx.output_tokens)
    f_ctx = np.minimum(1.0, t.context[rows] / need) if need > 0 else np.ones(len(rows))
    f = (f_cost * f_lat * f_ctx).astype(np.float32)
    g = (1.0 + (t.spec[rows].astype(np.float32) @ ctx.qvec) / SPEC_SCALE) / 2.0
    g = np.clip(g, 0.0, 1.0).astype(np.float32)
    rep = (REPUTATION_BASE + REPUTATION_SPAN * t.reputation[rows]).astype(np.float32)
    ungated = sim * lexical * f * g * rep
    gates = {"policy": policy_ok, "skills": skills_ok, "budget": budget_ok, "deadline": deadline_ok}
    passed = policy_ok & skills_ok & budget_ok & deadline_ok
    alpha = np.where(passed, ungated, 0.0).astype(np.float32)
    factors = {
        "sim": sim,
        "description": sims.astype(np.float32),
        "view": view,
        "learned": learned,
        "learned_support": support,
        "learned_lift": lift,
        "lexical": lexical.astype(np.float32),
        "learned_words": words_part.astype(np.float32),
        "resources": f,
        "cost_factor": f_cost.astype(np.float32),
        "latency_factor": f_lat.astype(np.float32),
        "context_factor": f_ctx.astype(np.float32),
        "spec": g,
        "reputation": rep,
    }
    return Scored(rows, alpha, ungated.astype(np.float32), factors, gates, cost.astype(np.float32),
                  latency.astype(np.float32), eligible)


def gate_mask(index: CapabilityIndex, ctx: QueryContext) -> np.ndarray:
    """Every row that is live, online, not excluded and passes every hard gate (whole table).

    The rows narrow gate by gate, most selective first: a required skill's Bloom bits (each bit
    is set in ~2% of filters, so one pass over the table leaves ~2% of it), then the other gates
    on what is left. Why: at 1M agents seven full-table passes over the 128-byte filters, then
    five more for the other gates, made a selective query 86 / 149 ms p50 / p99
    (`router_scale.py --agents 1000000`, `selective_*`)."""
    n = len(index.ids)
    t = index.table
    ok = np.zeros(n, dtype=bool)
    if ctx.unknown_policies:
        return ok
    rows = np.arange(n, dtype=np.int64)
    for skill in ctx.skills:
        for pos in bit_positions(skill):
            byte, bit = pos >> 3, np.uint8(1 << (pos & 7))
            column = t.bloom[:n, byte] if len(rows) == n else t.bloom[rows, byte]  # a view first
            rows = rows[(column & bit) != 0]
    keep = t.alive[rows] & t.online[rows]
    mask = np.uint64(ctx.policy_mask)
    keep &= (t.policy[rows] & mask) == mask
    if ctx.max_cost is not None:
        keep &= within(expected_cost(t, rows, ctx), ctx.max_cost)
    if ctx.deadline_ms is not None:
        keep &= within(expected_latency(t, rows, ctx), ctx.deadline_ms)
    rows = rows[keep]
    if len(ctx.exclude_rows):
        rows = rows[~np.isin(rows, ctx.exclude_rows)]
    if ctx.skills and len(rows):
        rows = rows[skills_gate(index, rows, ctx.skills)]  # the exact lists (Bloom hits re-checked)
    ok[rows] = True
    return ok
