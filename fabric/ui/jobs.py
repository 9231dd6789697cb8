"""A bounded, in-memory view of the federation's jobs, built from the wire alone.

The console hears every submission, job event and (retained) result on the broker; it keeps the
newest `max_jobs` jobs and at most `max_events` events each, so a long-running console has a
fixed memory ceiling. Everything is kept as the JSON that was published: a job page is derived
from it on request (`detail`), and the same derivation serves a job still running (from its
events) and a finished one (its result fills in what events only sketch).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fabric.ui.models import JobDetail, JobState, JobSummary, NodeView, ThreadTurn, TimelineItem

#: the end states of a job, as a JobResult's status or a `done` event's data says them
FINISHED: dict[str, JobState] = {"completed": "completed", "failed": "failed", "canceled": "canceled"}


@dataclass
class JobRecord:
    job_id: str
    question: str | None = None
    submit: dict[str, Any] | None = None
    events: dict[int, dict[str, Any]] = field(default_factory=dict)  # by seq: QoS 0/1 may repeat or reorder
    result: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    error: str | None = None
    cancel_requested: bool = False

    @property
    def conversation_id(self) -> str | None:
        """The conversation the job continues (its submission) or started (its result names it)."""
        found = (self.result or {}).get("conversation_id") or (self.submit or {}).get("conversation_id")
        return str(found) if found else None

    def turn(self) -> ThreadTurn:
        return ThreadTurn(
            job_id=self.job_id,
            state=self.state,
            question=self.question,
            answer=str((self.result or {}).get("answer") or "")[:300],
            created_at=self.created_at,
        )

    def ordered_events(self) -> list[dict[str, Any]]:
        return [self.events[k] for k in sorted(self.events)]

    @property
    def state(self) -> JobState:
        if self.result is not None:
            return FINISHED.get(str(self.result.get("status")), "failed")
        for event in reversed(self.ordered_events()):
            if event.get("phase") == "done":
                status = str(_dict(event.get("data")).get("status"))
                if status in FINISHED:
                    return FINISHED[status]
        if self.error:
            return "lost"
        return "running" if self.events else "submitted"

    def summary(self) -> JobSummary:
        events = self.ordered_events()
        usage = _dict((self.result or {}).get("usage"))
        return JobSummary(
            job_id=self.job_id,
            state=self.state,
            phase=str(events[-1].get("phase", "")) if events else "",
            question=self.question,
            created_at=self.created_at,
            updated_at=self.updated_at,
            tokens=int(usage.get("tokens") or 0),
            cost=float(usage.get("cost") or 0.0),
            events=len(events),
            error=self.error,
            cancel_requested=self.cancel_requested,
            conversation_id=self.conversation_id,
        )

    def detail(self) -> JobDetail:
        return derive(self)


class JobBook:
    """The newest jobs by last activity; the oldest is forgotten first."""

    def __init__(self, max_jobs: int = 500, max_events: int = 1000) -> None:
        self.max_jobs = max_jobs
        self.max_events = max_events
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def touch(self, job_id: str, at: float | None = None) -> JobRecord:
        record = self.jobs.get(job_id)
        if record is None:
            record = self.jobs[job_id] = JobRecord(job_id, created_at=at or time.time())
            while len(self.jobs) > self.max_jobs:
                self.jobs.popitem(last=False)
        else:
            self.jobs.move_to_end(job_id)
        record.updated_at = time.time()
        return record

    def on_submit(self, submit: dict[str, Any]) -> JobRecord:
        record = self.touch(str(submit["job_id"]))
        record.submit = submit
        record.question = str(submit.get("question") or "") or record.question
        return record

    def on_event(self, event: dict[str, Any]) -> JobRecord:
        record = self.touch(str(event["job_id"]), at=float(event.get("at") or time.time()))
        if len(record.events) < self.max_events:
            record.events[int(event.get("seq", len(record.events)))] = event
        if record.created_at > float(event.get("at") or record.created_at):
            record.created_at = float(event["at"])
        return record

    def on_result(self, result: dict[str, Any], at: float | None = None) -> JobRecord:
        record = self.touch(str(result["job_id"]), at=at)
        record.result = result
        record.error = None
        return record

    def summaries(self) -> list[JobSummary]:
        return [r.summary() for r in reversed(self.jobs.values())]

    def detail(self, record: JobRecord) -> JobDetail:
        """A job's page, with its conversation's thread: the jobs of its conversation this console
        has seen, in the order they were asked (a job alone in its conversation has no thread)."""
        detail = record.detail()
        conversation = record.conversation_id
        if conversation is not None:
            turns = [r for r in self.jobs.values() if r.conversation_id == conversation]
            if len(turns) > 1:
                detail.thread = [r.turn() for r in sorted(turns, key=lambda r: r.created_at)]
        return detail


# ---- the job page, derived from events and result ----------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def derive(record: JobRecord) -> JobDetail:
    """Nodes, edges, assignments, drafts, clusters and rounds of one job.

    Events carry the live sketch (a draft is cut to 200 characters, a round to its votes); the
    result, once there, is authoritative for the DAG, assignments and rounds.
    """
    events = record.ordered_events()
    result = record.result or {}
    dag: dict[str, Any] = _dict(result.get("dag"))
    assignments: dict[str, Any] = _dict(result.get("assignments"))
    proposers: list[dict[str, Any]] = []
    nodes: dict[str, NodeView] = {}
    synthesis: dict[str, Any] = {}
    left_out: dict[str, Any] = {}
    dropped: list[dict[str, Any]] = []
    plan_note = ""

    def node(node_id: str) -> NodeView:
        if node_id not in nodes:
            nodes[node_id] = NodeView(node_id=node_id, text="", depends_on=[], state="pending")
        return nodes[node_id]

    for event in events:
        phase, data = event.get("phase"), _dict(event.get("data"))
        if phase == "decompose":
            if data.get("dag") and not result.get("dag"):
                dag = _dict(data["dag"])
            if data.get("proposers"):
                proposers = [p for p in _list(data["proposers"]) if isinstance(p, dict)]
            if data.get("direct"):
                plan_note = str(event.get("message", ""))
        elif phase == "unfit" and data.get("dropped"):
            dag = dag if result.get("dag") else _dict(data.get("dag"))
            plan_note = str(event.get("message", ""))
        elif phase == "plan_check":
            dropped = [d for d in _list(data.get("dropped")) if isinstance(d, dict)]
            plan_note = str(event.get("message", ""))
        elif phase == "assign":
            assignments = assignments or _dict(data.get("assignments"))
            left_out = _dict(data.get("left_out"))
        elif phase == "synthesise":
            synthesis = data

    edges = [[str(e[0]), str(e[1])] for e in _list(dag.get("edges")) if isinstance(e, list | tuple) and len(e) == 2]
    for raw in _list(dag.get("nodes")):
        item = _dict(raw)
        if "id" in item:
            view = node(str(item["id"]))
            view.text = str(item.get("text", ""))
    for src, dst in edges:
        node(dst).depends_on.append(src)
    for node_id, matches in assignments.items():
        view = node(node_id)
        view.assigned = [m for m in _list(matches) if isinstance(m, dict)]
        view.state = "drafting"
    for node_id, out in left_out.items():
        if node_id in nodes:  # a node that left the plan (unfit) keeps no card
            nodes[node_id].left_out = [o for o in _list(out) if isinstance(o, dict)]

    for event in events:
        phase, data = event.get("phase"), _dict(event.get("data"))
        nid = data.get("node")
        if not isinstance(nid, str):
            continue
        view = node(nid)
        if phase == "exact_failed":
            view.exact_failed.append(f"{data.get('agent_id')}: {data.get('error')}")
        elif phase == "draft":
            view.drafts.update({str(k): str(v) for k, v in _dict(data.get("drafts")).items()})
        elif phase == "cluster":
            view.clusters = [[str(a) for a in _list(c)] for c in _list(data.get("clusters"))]
            view.state = "refining"
        elif phase == "refine":
            cluster = str(data.get("cluster", "?"))
            info = view.rounds.setdefault(cluster, {"members": [], "rounds": [], "stopped": None,
                                                    "representative": None})
            votes = _dict(data.get("votes"))
            info["rounds"].append({"round": data.get("round"), "votes": votes})
            info["members"] = sorted(set(info["members"]) | set(votes))
            view.state = "refining"
        elif phase == "node_done":
            view.representative = str(data.get("representative") or "") or None
            view.drafts.update({str(k): str(v) for k, v in _dict(data.get("drafts")).items()})
            view.state = "done"

    for view in nodes.values():  # assigned, but still waiting for its inputs
        if view.state == "drafting" and any(nodes[d].state != "done" for d in view.depends_on if d in nodes):
            view.state = "pending"

    for node_id, clusters in _dict(result.get("rounds")).items():
        view = node(node_id)
        view.state = "done"
        for cluster_id, raw in _dict(clusters).items():
            info = _dict(raw)
            per_round = _list(info.get("votes"))
            view.rounds[cluster_id] = {
                "members": _list(info.get("members")),
                "rounds": [{"round": i + 1, "votes": _dict(v)} for i, v in enumerate(per_round)],
                "stopped": info.get("stopped"),
                "representative": info.get("representative"),
            }
            if not view.clusters or len(view.clusters) < len(_dict(clusters)):
                view.clusters = [_list(_dict(c).get("members")) for c in _dict(clusters).values()]
    if result.get("status") in ("failed", "canceled"):  # a node that had not finished never will
        for view in nodes.values():
            if view.state != "done":
                view.state = "pending"

    start = min((float(e.get("at") or 0) for e in events), default=0.0)
    timeline = [
        TimelineItem(t=round(float(e.get("at") or start) - start, 3), phase=str(e.get("phase", "")),
                     message=str(e.get("message", "")))
        for e in events
    ]
    return JobDetail(
        summary=record.summary(),
        nodes=list(nodes.values()),
        edges=edges,
        proposers=proposers,
        plan_note=plan_note,
        dropped=dropped,
        answer=str(result.get("answer") or ""),
        synthesis=synthesis,
        failure_reason=result.get("failure_reason"),
        usage=_dict(result.get("usage")),
        timings={str(k): float(v) for k, v in _dict(result.get("timings")).items() if isinstance(v, int | float)},
        timeline=timeline,
        result=record.result,
    )
