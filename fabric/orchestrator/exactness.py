"""Exact results survive refinement and synthesis.

A draft is *exact* when it is a result rather than an opinion: a tool's output (MCP), an A2A
data artifact, or an SDK agent's `DraftOutput(exact=True)`. An LLM's refinement of "2025-12-25
is a Thursday" can only make it worse, and a synthesis LLM may drop or reword it. So:

- in a channel, an exact answer that did not fail is the representative; the LLM members may
  add to it (an answer that quotes it verbatim stays eligible) but not replace it;
- across a node's clusters, a cluster with an exact answer wins;
- the final answer carries every exact node result verbatim (appended when a synthesis lost it);
- a failed exact call (an agent tagged `mcp` or `exact` whose draft failed) is reported in the
  node's outcome, in the events and in the answer, never hidden behind another agent's guess.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: VCV tags of agents whose drafts are results (the MCP gateway tags its agents `mcp`)
EXACT_TAGS = frozenset({"mcp", "exact"})


def is_exact_agent(tags: Collection[str]) -> bool:
    return bool(EXACT_TAGS.intersection(tags))


def eligible_answers(answers: Mapping[str, str], exact: Mapping[str, str]) -> dict[str, str]:
    """The answers that may represent a cluster: every answer when no member is exact, else the
    exact ones and those that quote an exact answer verbatim (an LLM that added to it)."""
    if not exact:
        return dict(answers)
    facts = [e.strip() for e in exact.values() if e.strip()]
    return {a: text for a, text in answers.items() if a in exact or any(f in text for f in facts)}


def carry_exact(answer: str, exact_results: Mapping[str, str], failures: Mapping[str, list[str]]) -> str:
    """The answer with every exact result verbatim and every failed exact call stated.

    `exact_results`: subtask text -> the exact answer of its node; `failures`: subtask text ->
    the failed exact calls of its node ("agent: message")."""
    missing = {s: r.strip() for s, r in exact_results.items() if r.strip() and r.strip() not in answer}
    notes = [
        f"- {subtask}: {call}. The answer to this part did not come from that tool."
        for subtask, calls in failures.items()
        for call in calls
    ]
    parts = [answer.rstrip()] if answer.strip() else []
    if missing:
        parts.append("Exact results:\n" + "\n".join(f"- {s}: {r}" for s, r in missing.items()))
    if notes:
        parts.append("Failed exact calls:\n" + "\n".join(notes))
    return "\n\n".join(parts)
