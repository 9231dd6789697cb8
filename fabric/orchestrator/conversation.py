"""A follow-up question is routed with its conversation's subject.

"and for a child?" names no subject: embedded alone it lands anywhere (or nowhere) in the
capability space. Routing it with the conversation's earlier question(s) in front brings it back
to the specialty the conversation is about, while what the follow-up adds ("a child") still
counts. Only routing sees this text: the job's question (shown, planned, drafted) stays the
user's own, and the agents get the earlier turns as `history` instead.

What is prepended, and when, measured on follow-ups built from BFCL single-turn questions with
their subject removed (`benchmarks/conversation_routing.py --json`, 339 conversations over BFCL's
1,006 dev functions as agents):

- the earlier *questions* (up to `CONTEXT_QUESTIONS`), before the follow-up: follow-up hit@1
  0.006 -> 0.723 ("And what about 20 instead?") and 0.201 -> 0.729 ("And what if the height is
  20?"); on a third turn, 0.221 -> 0.738 with both earlier questions, 0.230 with the last one
  only (it has no subject either); the follow-up first, then the context, is a point lower;
- but only when it fits clearly better (`prefer_context`): a second question that changes the
  subject, routed with the first one in front, fell from 0.723 to 0.310 hit@1. Routing both texts
  and keeping the context only when its best α exceeds `CONTEXT_GAIN` (1.5) times the question's
  own best α: 0.723 / 0.696 / 0.696 for the follow-ups, 0.693 for a change of subject (gain 1.0:
  0.723 / 0.726 / 0.735 but 0.561; 2.0: 0.723 / 0.622 / 0.622 and 0.711). A ratio, not a fixed
  α: it needs no calibration, so it holds in a five-agent federation as in BFCL's.
"""

from __future__ import annotations

from collections.abc import Sequence

from fabric.messages import RouteResponse
from fabric.orchestrator.store import ConversationTurn
from fabric.tasks import Turn

#: how many earlier questions routing prepends, at most (the most recent ones; the job store
#: gives a job its last FOA_CONVERSATION_TURNS turns, 3 by default)
CONTEXT_QUESTIONS = 3
#: the context is kept when its best α exceeds this times the follow-up's own best α
CONTEXT_GAIN = 1.5


def routing_text(
    question: str, history: Sequence[ConversationTurn | Turn], *, questions: int = CONTEXT_QUESTIONS
) -> str:
    """The text a job of this conversation is routed by: its earlier question(s), then `question`."""
    earlier = [" ".join(t.question.split()) for t in history][-questions:] if questions > 0 else []
    return " ".join([*earlier, " ".join(question.split())]) if earlier else question


def prefer_context(alone: RouteResponse, framed: RouteResponse, *, gain: float = CONTEXT_GAIN) -> bool:
    """Whether the follow-up is about its conversation's subject: routed with it, the best agent
    fits `gain` times better than routed alone (a follow-up with a subject of its own fits alone)."""
    best_alone = alone.matches[0].score if alone.matches else 0.0
    best_framed = framed.matches[0].score if framed.matches else 0.0
    return best_framed > gain * max(best_alone, 0.0)


def history_refused(error: Exception) -> bool:
    """An agent built before conversations refused an input because of its `history` (its input
    models forbid unknown fields): the orchestrator re-sends the task without it."""
    return "history: Extra inputs are not permitted" in str(error)


def agent_history(history: Sequence[ConversationTurn]) -> list[Turn]:
    """The turns as the agents get them (question and answer summary)."""
    return [Turn(question=t.question, answer=t.answer) for t in history]
