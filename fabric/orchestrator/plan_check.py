"""Plans that fit the question: every proposed subtask must be an instruction about it.

A 135M planner, and sometimes a large one, writes subtasks that are not instructions at all:
a timestamp copied out of the prompt ("20-Nov-20, 23:45:56.789,"), a two-word fragment, the
planning instructions echoed back. Such a subtask used to become a DAG node, the router gave it
to whichever agents were least bad at nothing, and the agents that fit the question never saw
it. Three checks, cheapest first:

- **degenerate**: fewer than `MIN_WORDS` alphabetic words (dates, times, numbers, fragments),
  mostly the planning prompt's own words (an echo of the instructions), or chat instead of an
  instruction: a statement that opens with a pronoun or a greeting ("I love this product",
  "This is a great idea", "Hi Dr. Alvarez, ..."), which the 135M planner writes often and no
  gold step does (0 of NESTFUL's 797 gold steps, 0 of HealthBench's 4,106 positive rubric
  criteria; `benchmarks/plan_check.py`);
- **off-question**: cosine between the subtask and the question below `similarity_floor`
  (FOA_PLAN_SIMILARITY_FLOOR, -0.05). Measured with `benchmarks/plan_check.py --json`: NESTFUL's
  gold steps sit far above any floor (1st percentile 0.145), but HealthBench's positive rubric
  criteria, which read like the parts of a clinical plan ("Advises the user to seek emergency
  care ..."), reach down to -0.06 (1st percentile) against their own prompt. The largest floor
  that keeps 98% of both suites' gold steps is -0.05; it drops 1.6% of HealthBench's gold
  steps and only 3-5% of steps set against a *different* question. So MiniLM's cosine only
  removes what is clearly about something else; the text checks above do the main work.

A plan left with no usable subtask becomes the one-node plan (the question verbatim); the
orchestrator reports every dropped subtask with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from fabric.orchestrator.dag import EmbedFn
from fabric.tasks import Plan

#: a subtask needs this many words of 2+ letters: "20-Nov-20, 23:45:56.789," has one
MIN_WORDS = 3
#: the planning instructions (agents/worker.py's decompose prompt), echoed back by weak planners
PROMPT_WORDS = frozenset(
    "split this request into subtasks that different experts could work on each subtask is one short "
    "instruction if a subtask needs the result of another list that subtask's id in depends_on".split()
)
_WORD = re.compile(r"[^\W\d_]{2,}")
#: how chat opens, and no instruction does
CHAT_OPENERS = frozenset(
    "i i'm i've i'd we we're she he they it it's this that these those my our your hi hello hey thanks thank "
    "yes no ok okay sure".split()
)
_FIRST = re.compile(r"[A-Za-z']+")


class DroppedSubtask(BaseModel):
    """A proposed subtask the plan check removed, and why (shown in events and the console)."""

    proposer: str
    subtask_id: str
    text: str
    reason: str
    similarity: float | None = None


def degenerate_reason(text: str) -> str | None:
    """Why `text` is not an instruction at all (None: it may be one)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < MIN_WORDS:
        return f"a fragment, not an instruction ({len(words)} word(s) of text)"
    echoed = sum(w in PROMPT_WORDS for w in words)
    if len(words) >= 6 and echoed / len(words) >= 0.7:
        return "an echo of the planning instructions"
    first = _FIRST.search(text)
    if first is not None and first.group().lower() in CHAT_OPENERS and not text.rstrip().endswith("?"):
        return f"a statement, not an instruction (it opens with {first.group()!r})"
    return None


def check_plans(
    question: str,
    proposals: Sequence[tuple[str, Plan]],
    embed: EmbedFn,
    *,
    similarity_floor: float,
    verbatim: str | None = None,
) -> tuple[list[tuple[str, Plan]], list[DroppedSubtask]]:
    """The proposals with unusable subtasks removed (a proposal left empty is removed), and what
    was dropped. Dependencies on a dropped subtask are dropped with it (the edge, not the node).
    `question` is what subtasks are compared with (a follow-up's routing text, with its
    conversation's subject); `verbatim`, the user's own question, is never a fragment either."""
    own = {" ".join(t.split()) for t in (question, verbatim) if t}
    dropped: list[DroppedSubtask] = []
    candidates: list[tuple[int, int]] = []  # (proposal, subtask) that passed the text check
    for p, (proposer, plan) in enumerate(proposals):
        for s, sub in enumerate(plan.subtasks):
            reason = None if sub.text in own else degenerate_reason(sub.text)
            if reason is None:
                candidates.append((p, s))
            else:
                dropped.append(DroppedSubtask(proposer=proposer, subtask_id=sub.id, text=sub.text, reason=reason))
    sims: dict[tuple[int, int], float] = {}
    if candidates:
        texts = [proposals[p][1].subtasks[s].text for p, s in candidates]
        vecs = np.asarray(embed([question, *texts]))
        for key, sim in zip(candidates, (vecs[1:] @ vecs[0]).tolist(), strict=True):
            sims[key] = float(sim)
    kept: list[tuple[str, Plan]] = []
    for p, (proposer, plan) in enumerate(proposals):
        subs = []
        for s, sub in enumerate(plan.subtasks):
            if (p, s) not in sims:
                continue
            if sims[(p, s)] < similarity_floor:
                dropped.append(
                    DroppedSubtask(
                        proposer=proposer,
                        subtask_id=sub.id,
                        text=sub.text,
                        reason=f"off the question (similarity {sims[(p, s)]:.2f} < {similarity_floor:.2f})",
                        similarity=round(sims[(p, s)], 4),
                    )
                )
                continue
            subs.append(sub)
        if subs:
            ids = {x.id for x in subs}
            fixed = [x.model_copy(update={"depends_on": [d for d in x.depends_on if d in ids]}) for x in subs]
            kept.append((proposer, Plan(subtasks=fixed)))
    return kept, dropped
