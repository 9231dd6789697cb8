"""Every MQTT topic string of the fabric lives here (docs/architecture.md §2); nothing else formats topics."""

from __future__ import annotations

ROOT = "foa"

AGENT_VCV_WILDCARD = f"{ROOT}/agents/+/vcv"
AGENT_STATUS_WILDCARD = f"{ROOT}/agents/+/status"
JOBS_SUBMIT = f"{ROOT}/jobs/submit"
JOBS_CANCEL_WILDCARD = f"{ROOT}/jobs/+/cancel"
JOBS_EVENTS_WILDCARD = f"{ROOT}/jobs/+/events"
JOBS_RESULT_WILDCARD = f"{ROOT}/jobs/+/result"
ROUTER_QUERY = f"{ROOT}/router/query"
ROUTER_OUTCOMES = f"{ROOT}/router/outcomes"  # orchestrators -> every router (not shared: all replicas learn)
POLICY_ENFORCEMENT = f"{ROOT}/policies/enforcement"
REPUTATION_WILDCARD = f"{ROOT}/reputation/+"

SHARE_GROUP_AGENT = "agent"
SHARE_GROUP_ROUTER = "routers"
SHARE_GROUP_ORCHESTRATOR = "orchestrators"


def agent_vcv(agent_id: str) -> str:
    return f"{ROOT}/agents/{agent_id}/vcv"


def agent_status(agent_id: str) -> str:
    return f"{ROOT}/agents/{agent_id}/status"


def agent_tasks(agent_id: str) -> str:
    return f"{ROOT}/agents/{agent_id}/tasks"


def agent_prefix(agent_id: str) -> str:
    return f"{ROOT}/agents/{agent_id}/"


def reputation(agent_id: str) -> str:
    """Retained per-agent reputation, written by orchestrators and read by routers."""
    return f"{ROOT}/reputation/{agent_id}"


def job_events(job_id: str) -> str:
    return f"{ROOT}/jobs/{job_id}/events"


def job_result(job_id: str) -> str:
    return f"{ROOT}/jobs/{job_id}/result"


def job_cancel(job_id: str) -> str:
    """Cancel requests for one job; every orchestrator replica listens, the owner acts."""
    return f"{ROOT}/jobs/{job_id}/cancel"


def cluster_channel(cluster_id: str) -> str:
    return f"{ROOT}/clusters/{cluster_id}/channel"


def replies(client_id: str) -> str:
    return f"{ROOT}/replies/{client_id}"


def shared(group: str, topic: str) -> str:
    """An MQTT v5 shared subscription: each message goes to one member of `group`."""
    return f"$share/{group}/{topic}"


def agent_id_of(topic: str) -> str | None:
    """The agent id in `foa/agents/{id}/...`, else None."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[0] == ROOT and parts[1] == "agents":
        return parts[2]
    return None


def validate_id(value: str, what: str = "id") -> str:
    """Ids become topic levels: they must not contain MQTT wildcards or separators."""
    if not value or any(ch in value for ch in "/+#\x00") or value.startswith("$"):
        raise ValueError(f"invalid {what} {value!r}: must be non-empty, no '/', '+', '#', NUL, or leading '$'")
    if len(value) > 128:
        raise ValueError(f"invalid {what}: longer than 128 characters")
    return value
