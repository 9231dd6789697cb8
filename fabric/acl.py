"""Broker credentials and ACLs for a federation, generated from the agent specs.

Mosquitto ACLs key on the *username*, so every agent logs in with its agent id as username
(all replicas of an agent share that login; their client ids follow `{agent_id}-{replica}`).
Services have role logins: `router`, `orchestrator`, `client` (the CLI) and `health` (the
broker's own health check). What each may do:

- agent `{id}`: publishes `foa/agents/{id}/#` and `foa/replies/#` (answers to requesters);
  subscribes `foa/agents/{id}/#` (its inbox, own VCV), `$share/agent/foa/agents/{id}/tasks`,
  `foa/clusters/+/channel`.
- router: publishes `foa/replies/#`, `foa/policies/enforcement`; subscribes VCVs, status,
  reputation, `foa/router/query` (+ `$share/routers/...`), `foa/router/outcomes`.
- orchestrator: publishes tasks to any agent, jobs, clusters, reputation, route queries,
  node outcomes (`foa/router/outcomes`: nobody else may, so an agent cannot report its own
  success), replies, audit; subscribes VCVs, status, jobs (+ `$share/orchestrators/...`), clusters,
  reputation, audit.
- client: publishes `foa/jobs/submit`, `foa/jobs/+/cancel`, `foa/router/query`; subscribes jobs, VCVs, status,
  reputation, audit.
- everyone: subscribes `foa/replies/{client_id}` (its own reply topic, via `pattern ... %c`).

Nobody but agent `{id}` can publish under `foa/agents/{id}/vcv`: the orchestrator may write
tasks to agents but not their VCVs or status.

Limits of a static ACL file (see docs/deploy.md): it cannot follow per-job channel
invitations, so every agent may read every `foa/clusters/+/channel`; per-channel access needs
dynamic ACLs (EMQX's HTTP/database authorization, or a mosquitto plugin). Mosquitto also does
not bind client ids to usernames, so the `%c` reply-topic rule trusts the client id; EMQX
(`${clientid}` placeholders plus a client-id check in authentication) or the mosquitto
dynamic-security plugin can bind them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fabric import security, topics
from fabric.topics import validate_id

Role = Literal["agent", "router", "orchestrator", "client", "health"]
SERVICE_ROLES: tuple[Role, ...] = ("router", "orchestrator", "client", "health")

#: mosquitto_passwd's format: `$7$` = PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt (2.0.x)
MOSQUITTO_PBKDF2_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12
_HASH_RE = re.compile(
    r"^\$(?P<type>[67])\$(?:(?P<iterations>\d+)\$)?(?P<salt>[A-Za-z0-9+/=]+)\$(?P<hash>[A-Za-z0-9+/=]+)$"
)


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_PBKDF2_ITERATIONS) -> str:
    """Hash a password the way `mosquitto_passwd` does, so mosquitto accepts the file as is."""
    if not password:
        raise ValueError("empty password")
    salt = salt if salt is not None else os.urandom(MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, encoded: str) -> bool:
    """Verify a password against a mosquitto `$6$` (SHA512) or `$7$` (PBKDF2-SHA512) hash."""
    match = _HASH_RE.match(encoded.strip())
    if not match:
        raise ValueError("not a mosquitto password hash ($6$ or $7$)")
    salt = base64.b64decode(match["salt"])
    expected = base64.b64decode(match["hash"])
    if match["type"] == "7":
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(match["iterations"] or 0))
    else:
        digest = hashlib.sha512(password.encode() + salt).digest()
    return hmac.compare_digest(digest, expected)


def new_password() -> str:
    """192 random bits, URL-safe (fits in broker URLs and .env files without quoting)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Principal:
    """One broker login."""

    username: str
    role: Role
    password: str

    def env_var(self) -> str:
        """The variable holding this login's password in the compose .env file."""
        name = re.sub(r"[^A-Za-z0-9]", "_", self.username).upper()
        return f"FOA_PW_AGENT_{name}" if self.role == "agent" else f"FOA_PW_{name}"


def check_agent_ids(agent_ids: Iterable[str]) -> list[str]:
    ids = [validate_id(a, "agent id") for a in agent_ids]
    clash = sorted(set(ids) & set(SERVICE_ROLES))
    if clash:
        raise ValueError(f"agent ids {clash} collide with service logins {list(SERVICE_ROLES)}: rename the agents")
    for agent_id in ids:
        if any(ch.isspace() for ch in agent_id) or ":" in agent_id:
            raise ValueError(f"agent id {agent_id!r} cannot be a broker username (no spaces or ':')")
    dupes = sorted({a for a in ids if ids.count(a) > 1})
    if dupes:
        raise ValueError(f"duplicate agent ids: {dupes}")
    return ids


def password_file(principals: Iterable[Principal]) -> str:
    """A mosquitto `password_file`: `username:$7$...` per line."""
    return "".join(f"{p.username}:{mosquitto_hash(p.password)}\n" for p in principals)


def _block(title: str, user: str | None, rules: list[tuple[str, str]]) -> list[str]:
    lines = [f"# {title}"]
    if user is not None:
        lines.append(f"user {user}")
    lines += [f"topic {access} {topic}" for access, topic in rules]
    return lines + [""]


def agent_rules(agent_id: str) -> list[tuple[str, str]]:
    own = topics.agent_prefix(agent_id) + "#"
    return [
        ("readwrite", own),
        ("read", topics.shared(topics.SHARE_GROUP_AGENT, topics.agent_tasks(agent_id))),
        ("read", topics.cluster_channel("+")),
        ("write", topics.replies("#")),
    ]


def role_rules(role: Role) -> list[tuple[str, str]]:
    vcvs, status, reputation = topics.AGENT_VCV_WILDCARD, topics.AGENT_STATUS_WILDCARD, topics.REPUTATION_WILDCARD
    replies = topics.replies("#")
    if role == "router":
        return [
            ("read", vcvs),
            ("read", status),
            ("read", reputation),
            ("read", topics.ROUTER_QUERY),
            ("read", topics.shared(topics.SHARE_GROUP_ROUTER, topics.ROUTER_QUERY)),
            ("read", topics.ROUTER_OUTCOMES),
            ("write", replies),
            ("write", topics.POLICY_ENFORCEMENT),
        ]
    if role == "orchestrator":
        return [
            ("read", vcvs),
            ("read", status),
            ("write", topics.agent_tasks("+")),
            ("readwrite", f"{topics.ROOT}/jobs/#"),
            ("read", topics.shared(topics.SHARE_GROUP_ORCHESTRATOR, topics.JOBS_SUBMIT)),
            ("readwrite", topics.cluster_channel("+")),
            ("readwrite", reputation),
            ("write", topics.ROUTER_QUERY),
            ("write", topics.ROUTER_OUTCOMES),
            ("readwrite", topics.POLICY_ENFORCEMENT),
            ("write", replies),
        ]
    if role == "client":
        return [
            ("write", topics.JOBS_SUBMIT),
            ("write", topics.JOBS_CANCEL_WILDCARD),
            ("read", f"{topics.ROOT}/jobs/#"),
            ("write", topics.ROUTER_QUERY),
            ("read", vcvs),
            ("read", status),
            ("read", reputation),
            ("read", topics.POLICY_ENFORCEMENT),
        ]
    if role == "health":
        return [("read", "$SYS/broker/uptime")]
    raise ValueError(f"no rules for role {role!r}")


def acl_file(agent_ids: Iterable[str]) -> str:
    """A mosquitto `acl_file` for these agents and the service roles."""
    ids = check_agent_ids(agent_ids)
    lines = [
        "# FoA broker ACL, generated by `foa creds init` from the agent specs. Do not edit by hand:",
        "# re-run `foa creds init` after adding an agent. Usernames are agent ids or service roles.",
        "",
        "# every client may read its own reply topic (request/response); client ids are",
        "# {agent_id}-{replica} for agents, {role}-{n} for services",
        f"pattern read {topics.replies('%c')}",
        "",
    ]
    for role in SERVICE_ROLES:
        lines += _block(f"role: {role}", role, role_rules(role))
    for agent_id in ids:
        lines += _block(f"agent: {agent_id}", agent_id, agent_rules(agent_id))
    return "\n".join(lines)


# ---- the credentials folder written by `foa creds init` ----------------------------------

PASSWD_FILE = "passwd"
ACL_FILE = "acl"
CREDENTIALS_FILE = "credentials.json"
ENV_FILE = "broker.env"
KEYS_DIR = "keys"
TRUST_FILE = "trust.json"


@dataclass
class CredentialBundle:
    """What `foa creds init` writes into one folder.

    - `passwd`, `acl`: mosquitto's password_file and acl_file (hashes only; mode 0644 so the
      broker container's own user can read them);
    - `credentials.json`, `broker.env`: the clear passwords (mode 0600), the latter in the
      `FOA_PW_*` form docker compose reads with `--env-file`;
    - `keys/{agent_id}.key` (0600) and `.pub`: each agent's ed25519 signing key;
    - `trust.json`: the routers' trust store (agent_id -> public key).
    """

    principals: list[Principal]
    agent_ids: list[str]

    @classmethod
    def create(
        cls, agent_ids: Iterable[str], existing: dict[str, str] | None = None, rotate: bool = False
    ) -> CredentialBundle:
        """Logins for the agents and service roles; reuse `existing` passwords unless `rotate`."""
        ids = check_agent_ids(agent_ids)
        keep = {} if rotate else dict(existing or {})
        principals = [Principal(role, role, keep.get(role) or new_password()) for role in SERVICE_ROLES]
        principals += [Principal(a, "agent", keep.get(a) or new_password()) for a in ids]
        return cls(principals, ids)

    def password(self, username: str) -> str:
        return next(p.password for p in self.principals if p.username == username)

    def env_text(self) -> str:
        lines = ["# broker passwords for docker compose (`docker compose --env-file`); keep secret"]
        lines += [f"{p.env_var()}={p.password}" for p in self.principals]
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path, rotate_keys: bool = False) -> dict[str, str]:
        """Write every file; an agent that already has a key keeps it unless `rotate_keys`."""
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / PASSWD_FILE).write_text(password_file(self.principals))
        (out_dir / ACL_FILE).write_text(acl_file(self.agent_ids))
        for name in (PASSWD_FILE, ACL_FILE):
            os.chmod(out_dir / name, 0o644)
        creds = {p.username: {"role": p.role, "password": p.password} for p in self.principals}
        security.write_private_file(out_dir / CREDENTIALS_FILE, (json.dumps(creds, indent=2) + "\n").encode())
        security.write_private_file(out_dir / ENV_FILE, self.env_text().encode())
        keys_dir = out_dir / KEYS_DIR
        store = security.TrustStore()
        # and the orchestrators' key: routers learn only from node outcomes it signed
        for agent_id in [*self.agent_ids, security.ORCHESTRATOR_KEY]:
            key_path = security.agent_key_path(keys_dir, agent_id)
            if key_path.exists() and not rotate_keys:
                key = security.load_private_key(key_path)
            else:
                key = security.generate_key()
                security.save_private_key(key, key_path)
            security.save_public_key(key, keys_dir / f"{agent_id}.pub")
            store.add(agent_id, key)
        store.save(out_dir / TRUST_FILE)
        return {
            "passwd": str(out_dir / PASSWD_FILE),
            "acl": str(out_dir / ACL_FILE),
            "credentials": str(out_dir / CREDENTIALS_FILE),
            "env": str(out_dir / ENV_FILE),
            "keys": str(keys_dir),
            "trust_store": str(out_dir / TRUST_FILE),
        }


def read_existing_passwords(out: str | Path) -> dict[str, str]:
    """username -> password from a previous `credentials.json`, or {} when there is none."""
    path = Path(out) / CREDENTIALS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {user: str(entry["password"]) for user, entry in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a credentials file written by `foa creds init`: {exc}") from exc
