"""The router service: VCV/status/reputation streams in, route and assign answers out.

- VCVs: `foa/agents/+/vcv`, retained (the snapshot) then live (the deltas). An empty payload
  means the agent left (tombstone). VCVs from another embedding model, whose agent id does not
  match the topic, or that `verify_vcv` rejects (the signature hook) are counted and logged.
- status: offline agents leave results at once; reputation: retained scores multiply into α.
- queries: `$share/routers/foa/router/query`, so replicas split the load. A bad query gets an
  ErrorReply (code + readable message), never a timeout, and never stops the service.
- graph work never runs on the event loop: a flusher task inserts buffered vectors in a worker
  thread, compaction rebuilds a shard in one, and the periodic snapshot is written by a forked
  child (router_scale.py prints the loop's worst stall during a snapshot: `max_loop_stall_ms`).
- restart: the index is restored from its snapshot (no re-insert); the retained VCVs then
  replay and are ignored as stale, and agents whose retained VCV is gone by the time the
  replay settles are deleted.
- abstention: a calibrated model (router/abstention.py) or, from older files, a raw threshold on
  α: from the snapshot, or `<data_dir>/router/calibration.json` written by
  `foa route --calibrate --save`, or, when neither exists, fitted by the service itself on
  probes built from the agents' descriptions once the retained snapshot has settled.
  `status()` says which one is in force and where it came from (its provenance).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from fabric import topics
from fabric.aio import wait_within
from fabric.bus import Bus, Incoming
from fabric.embeddings import EmbedBatcher, Embedder
from fabric.envelope import Envelope
from fabric.errors import ConfigError, readable
from fabric.messages import (
    AgentStatus,
    AssignQuery,
    AuditEvent,
    ErrorReply,
    NodeOutcome,
    Reputation,
    RouteQuery,
    RouterStatus,
    RouterStatusQuery,
)
from fabric.metrics import Metrics
from fabric.service import ServiceRuntime
from fabric.settings import Settings
from fabric.vcv import KNOWN_POLICIES, VCV
from fabric.vectors import Vector, as_array, check_unit
from router.abstention import AbstentionModel, Top, fit
from router.calibration import OFF_TOPIC, relevant_probes
from router.engine import RouterEngine, assign
from router.index import CapabilityIndex, IndexConfig, collapse_huge_pages
from router.lexical import LexicalIndex

log = logging.getLogger("foa.router")

VerifyVCV = Callable[[VCV], str | None]
VerifyOutcome = Callable[[NodeOutcome], str | None]
T = TypeVar("T")
RESERVOIR = 256  # descriptions kept for self-calibration probes
MIN_AGENTS_TO_CALIBRATE = 3
FLUSH_AT = 1024  # buffered vectors that wake the background flusher (else it looks every FLUSH_EVERY_S)
FLUSH_EVERY_S = 0.25


@dataclass
class RouterCounters:
    vcvs: int = 0
    rejected_vcvs: int = 0
    stale_vcvs: int = 0
    tombstones: int = 0
    queries: int = 0
    errors: int = 0
    audits: int = 0
    outcomes: int = 0
    rejected_outcomes: int = 0
    by_vector: int = 0  # query texts routed by the vector that came with them (not embedded here)


def calibration_path(settings: Settings) -> Path:
    return settings.data_dir / "router" / "calibration.json"


def snapshot_path(settings: Settings) -> Path:
    return settings.data_dir / "router" / "index"


class RouterService:
    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        embedder: Embedder,
        *,
        index: CapabilityIndex | None = None,
        verify_vcv: VerifyVCV | None = None,
        verify_outcome: VerifyOutcome | None = None,
        snapshot_dir: Path | None = None,
        snapshot_every_s: float = 60.0,
        settle_s: float = 1.0,
        auto_calibrate: bool = True,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.embedder = embedder
        self.batcher = EmbedBatcher(embedder)
        config = IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name)
        self.index = index or CapabilityIndex(config)
        if self.index.config.embedding_model != embedder.model_name or self.index.config.dim != embedder.dim:
            raise ConfigError(
                f"index was built with {self.index.config.embedding_model} ({self.index.config.dim}-d), "
                f"router embeds with {embedder.model_name} ({embedder.dim}-d): build the index with the "
                "router's FOA_EMBEDDING_MODEL / FOA_EMBEDDING_DIM"
            )
        self.engine = RouterEngine(self.index)
        self.verify_vcv = verify_vcv
        self.verify_outcome = verify_outcome
        self.metrics: Metrics | None = None  # set by run_router when metrics are on
        self.snapshot_dir = snapshot_dir
        self.snapshot_every_s = snapshot_every_s
        self.settle_s = settle_s
        self.auto_calibrate = auto_calibrate
        self.counters = RouterCounters()
        self.synced = asyncio.Event()
        self._seen: set[str] = set()
        self._last_vcv = time.monotonic()
        self._dirty = False
        self._descriptions: dict[str, str] = {}
        self._rng = random.Random(0)
        self._calibrated_at_agents = 0
        self._calibration_mtime = 0.0
        # graph maintenance runs off the event loop (flush, compaction, the snapshot child): one at
        # a time, so a fork never copies a half-done graph call and a rebuild never races a flush
        self.index.auto_flush = False
        self._graph_lock = asyncio.Lock()
        self._flush_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()  # fire-and-forget audit publishes

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._load_calibration_file()
        await self.bus.subscribe(topics.AGENT_VCV_WILDCARD, self._on_vcv, body_types=VCV, accept_empty=True)
        await self.bus.subscribe(
            topics.AGENT_STATUS_WILDCARD, self._on_status, body_types=AgentStatus, accept_empty=True
        )
        await self.bus.subscribe(
            topics.REPUTATION_WILDCARD, self._on_reputation, body_types=Reputation, accept_empty=True
        )
        await self.bus.subscribe(
            topics.shared(topics.SHARE_GROUP_ROUTER, topics.ROUTER_QUERY), self._on_query, body_types=None
        )
        # not shared: every replica learns from every outcome
        await self.bus.subscribe(topics.ROUTER_OUTCOMES, self._on_outcome, body_types=NodeOutcome)
        self._tasks.append(asyncio.create_task(self._maintain(), name="router-maintenance"))
        self._tasks.append(asyncio.create_task(self._flusher(), name="router-flush"))
        log.info("router started", extra={"agents": len(self.index), "client_id": self.bus.client_id})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._tasks.clear()
        if self.snapshot_dir is not None and self._dirty:
            self.save()

    def save(self) -> None:
        """Snapshot on this thread (shutdown; the running service uses `save_in_background`)."""
        if self.snapshot_dir is not None:
            self.index.snapshot(self.snapshot_dir)
            self._dirty = False

    async def save_in_background(self) -> None:
        """Snapshot without stalling the event loop: a forked child writes its copy-on-write view
        (the loop pays the fork: ~6 ms at 2.8 GB here) while queries and VCVs go on."""
        if self.snapshot_dir is None:
            return
        if not hasattr(os, "fork"):
            self.save()
            return
        self._dirty = False  # changes from here on set it again (the child's copy has some of them)
        try:
            await snapshot_in_background(self.index, self.snapshot_dir, self._graph_lock)
        except OSError:
            self._dirty = True
            log.warning("background snapshot failed; will retry", exc_info=True)

    async def flush(self) -> int:
        return await flush_in_background(self.index, self._graph_lock)

    async def compact(self) -> int:
        """Rebuild tombstone-heavy shards in a worker thread; changes meanwhile are replayed."""
        done = 0
        for s in self.index.shards_to_compact():
            async with self._graph_lock:
                rows = self.index.begin_compact(s)
                try:
                    fresh = await _off_loop(self.index.rebuild_shard, s, rows)
                except BaseException:
                    self.index.cancel_compact()
                    raise
                self.index.finish_compact(s, fresh, rows)
                done += 1
        plan = self.index.begin_compact_lexical()
        if plan is not None:
            try:
                built = await _off_loop(LexicalIndex.build_compact, plan)
            except BaseException:
                self.index.lexical.cancel_compact()
                raise
            self.index.lexical.finish_compact(plan, built)
        return done

    async def _flusher(self) -> None:
        while True:
            try:
                await wait_within(self._flush_wanted.wait(), FLUSH_EVERY_S)
            except TimeoutError:
                pass
            self._flush_wanted.clear()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - a failed insert must not stop the service
                log.exception("background flush failed")

    async def _maintain(self) -> None:
        """Settle the retained snapshot, then compact / calibrate / snapshot periodically."""
        while time.monotonic() - self._last_vcv < self.settle_s:
            await asyncio.sleep(self.settle_s / 4)
        self._reconcile()
        self.synced.set()
        last_snapshot = time.monotonic()
        while True:
            await self.compact()
            self._load_calibration_file()
            if self.auto_calibrate:
                await self._maybe_calibrate()
            if (
                self.snapshot_dir is not None
                and self._dirty
                and time.monotonic() - last_snapshot > self.snapshot_every_s
            ):
                await self.save_in_background()
                last_snapshot = time.monotonic()
            await asyncio.sleep(1.0)

    def _reconcile(self) -> None:
        """After a restore: agents whose retained VCV vanished while we were down are gone."""
        gone = [a for a in list(self.index.rows) if a not in self._seen]
        for agent_id in gone:
            self.index.delete(agent_id)
        if gone:
            log.info("dropped agents absent from the retained snapshot", extra={"count": len(gone)})

    # ---- streams --------------------------------------------------------------------------

    def _on_vcv(self, msg: Incoming) -> None:
        """Synchronous on purpose: the bus runs it inline, so a 10k-VCV snapshot costs no task per VCV."""
        self._last_vcv = time.monotonic()
        agent_id = topics.agent_id_of(msg.topic)
        if msg.envelope is None:
            if agent_id and self.index.delete(agent_id):
                self.counters.tombstones += 1
                self._descriptions.pop(agent_id, None)
                self._dirty = True
            return
        vcv: VCV = msg.envelope.body
        self.counters.vcvs += 1
        reason = None
        if agent_id != vcv.agent_id:
            reason = f"VCV of {vcv.agent_id!r} published on the topic of {agent_id!r}"
        elif self.verify_vcv is not None:
            reason = self.verify_vcv(vcv)
        if reason is None:
            result = self.index.upsert(vcv)
            self._seen.add(vcv.agent_id)
            if result.accepted:
                self._dirty = True
                if self.index.buf_n >= FLUSH_AT:
                    self._flush_wanted.set()
                self._remember(vcv)
                return
            if result.reason.startswith("stale"):
                self.counters.stale_vcvs += 1
                return
            reason = result.reason
        self.counters.rejected_vcvs += 1
        log.warning("rejected VCV", extra={"agent_id": vcv.agent_id, "reason": reason})
        if self.metrics is not None:
            self.metrics.reject(reason.split(":", 1)[0])
        # every refused VCV is a policy decision: audit it where auditors look
        audit = AuditEvent(
            query_id=f"vcv:{vcv.agent_id}:{vcv.version}", agent_id=vcv.agent_id, gate="signature", detail=reason
        )
        task = asyncio.get_running_loop().create_task(self._publish_audit(audit))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_audit(self, audit: AuditEvent) -> None:
        try:
            await self.bus.publish(topics.POLICY_ENFORCEMENT, audit, wait=False)
        except Exception:  # noqa: BLE001 - auditing must not stop ingestion
            log.debug("could not publish audit event", exc_info=True)

    def _remember(self, vcv: VCV) -> None:
        """Reservoir of descriptions for self-calibration probes."""
        if vcv.agent_id in self._descriptions or len(self._descriptions) < RESERVOIR:
            self._descriptions[vcv.agent_id] = vcv.description
        elif self._rng.random() < RESERVOIR / max(len(self.index), 1):
            self._descriptions.pop(self._rng.choice(list(self._descriptions)))
            self._descriptions[vcv.agent_id] = vcv.description

    def _on_status(self, msg: Incoming) -> None:
        if msg.envelope is None:  # a cleared retained status says nothing
            return
        status: AgentStatus = msg.envelope.body
        if topics.agent_id_of(msg.topic) != status.agent_id:
            log.warning("status on another agent's topic", extra={"topic": msg.topic, "agent_id": status.agent_id})
            return
        self.index.set_online(status.agent_id, status.status == "online")

    def _on_reputation(self, msg: Incoming) -> None:
        if msg.envelope is None:  # cleared: back to unknown
            agent_id = topics.agent_id_of(msg.topic) or msg.topic.rsplit("/", 1)[-1]
            self.index.set_reputation(agent_id, 0.5)
            return
        rep: Reputation = msg.envelope.body
        self.index.set_reputation(rep.agent_id, rep.score)

    async def _on_outcome(self, msg: Incoming) -> None:
        """A node outcome from an orchestrator: fold it into the learned views (router/learning.py)."""
        assert msg.envelope is not None
        outcome: NodeOutcome = msg.envelope.body
        self.counters.outcomes += 1
        reason = self.verify_outcome(outcome) if self.verify_outcome is not None else None
        if reason is None and outcome.embedding_model and outcome.embedding_model != self.embedder.model_name:
            reason = f"outcome embedded with {outcome.embedding_model!r}, router uses {self.embedder.model_name!r}"
        if reason is not None:
            self.counters.rejected_outcomes += 1
            log.warning("rejected node outcome", extra={"job_id": outcome.job_id, "reason": reason})
            return
        if outcome.vector is None:
            if not outcome.subtask.strip():
                self.counters.rejected_outcomes += 1
                return
            vec = (await self.batcher.embed([outcome.subtask]))[0]
            outcome = outcome.model_copy(update={"vector": vec})
        if self.index.learn(outcome):
            self._dirty = True

    # ---- queries --------------------------------------------------------------------------

    async def _on_query(self, msg: Incoming) -> None:
        env = msg.envelope
        assert env is not None
        self.counters.queries += 1
        started = time.perf_counter()
        try:
            reply = await self._answer(env)
        except Exception as exc:  # noqa: BLE001 - a bad query must not stop the service
            log.exception("route query failed", extra={"id": env.id})
            reply = ErrorReply(code="internal", message=f"router failed on this query: {exc}")
        if self.metrics is not None:
            self.metrics.routes.labels("error" if isinstance(reply, ErrorReply) else "ok").inc()
            self.metrics.route_latency.observe(time.perf_counter() - started)
        if isinstance(reply, ErrorReply):
            self.counters.errors += 1
        if env.reply_to:
            await self.bus.reply(env, reply)

    async def _answer(self, env: Envelope[Any]) -> Any:
        if env.kind == RouterStatusQuery.KIND:
            return RouterStatus.model_validate(self.status())
        try:
            if env.kind == RouteQuery.KIND:
                query: RouteQuery | AssignQuery = RouteQuery.model_validate(env.body)
            elif env.kind == AssignQuery.KIND:
                query = AssignQuery.model_validate(env.body)
            else:
                return ErrorReply(
                    code="unsupported",
                    message=f"the router answers route_query, assign_query and router_status_query, not {env.kind!r}",
                )
        except ValidationError as exc:
            return ErrorReply(code="bad_request", message=readable(exc, {"": "query"}))
        flags = query.policies if isinstance(query, RouteQuery) else [p for s in query.subtasks for p in s.policies]
        unknown = sorted(
            {f.strip().lower() for f in flags}
            - set(KNOWN_POLICIES)
            - {f for f in flags if self.index.policy_known(f.strip().lower())}
        )
        if unknown:
            return ErrorReply(
                code="unknown_policy",
                message=f"unknown policy flag(s) {unknown}: not a known flag ({', '.join(sorted(KNOWN_POLICIES))}) "
                "and not advertised by any live agent",
            )
        if isinstance(query, AssignQuery):  # refused before any of it is embedded
            empty = [s.subtask_id for s in query.subtasks if not s.text.strip()]
            if empty:
                return ErrorReply(code="bad_request", message=f"subtasks {empty} have empty text")
        try:
            if isinstance(query, RouteQuery):
                vecs = await self._vectors([query.text], [query.vector], query.embedding_model)
            else:
                vecs = await self._vectors(
                    [s.text for s in query.subtasks], [s.vector for s in query.subtasks], query.embedding_model
                )
        except ValueError as exc:
            return ErrorReply(code="bad_request", message=str(exc))
        if isinstance(query, RouteQuery):
            outcome = self.engine.route(query, vecs[0], query_id=env.id)
            for event in outcome.audits:
                await self.bus.publish(topics.POLICY_ENFORCEMENT, event, wait=False)
            self.counters.audits += len(outcome.audits)
            return outcome.response
        return assign(self.engine, query, vecs)

    async def _vectors(self, texts: list[str], given: Sequence[Vector | None], model: str) -> np.ndarray:
        """The query texts' vectors: those the sender embedded with this router's model as they
        came (an orchestrator embeds the question for its plan check anyway: issue 22 measured
        the router's second embedding at ~4.5 ms of CPU per query, and a thread hop on the
        query's critical path), the others embedded here. A vector of another model is ignored
        (its text is embedded); one of this model with the wrong size or length is refused."""
        if model != self.embedder.model_name:
            given = [None] * len(texts)  # another model's space: its vectors mean nothing here
        missing = [i for i, v in enumerate(given) if v is None]
        out = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        for i, vec in enumerate(given):
            if vec is None:
                continue
            arr = as_array(vec)
            if arr.shape != (self.embedder.dim,):
                raise ValueError(f"query vector has {arr.size} dimensions, {model} has {self.embedder.dim}")
            check_unit(arr, "query vector")
            out[i] = arr
        if missing:
            out[missing] = await self.batcher.embed([texts[i] for i in missing])
        self.counters.by_vector += len(texts) - len(missing)
        return out

    # ---- calibration ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Health-style status: agents, counters, and the abstention in force with its provenance."""
        model = self.engine.model
        return {
            "agents": len(self.index),
            "synced": self.synced.is_set(),
            "embedding_model": self.embedder.model_name,
            "counters": dict(vars(self.counters)),
            "learning": {"agents": len(self.index.learned.slots), **vars(self.index.learned.stats)},
            "abstention": {
                "kind": "model" if model is not None else ("threshold" if self.engine.threshold is not None else None),
                "alpha_threshold": self.engine.threshold,
                "features": list(model.features) if model is not None else None,
                "probability_threshold": model.threshold if model is not None else None,
                "provenance": dict(self.index.meta.get("calibration") or {}),
            },
        }

    def _load_calibration_file(self) -> None:
        """A model (or an older file's raw threshold) written by `foa route --calibrate --save`
        (re-read when the file changes)."""
        path = calibration_path(self.settings)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime <= self._calibration_mtime:
            return
        self._calibration_mtime = mtime
        try:
            data = json.loads(path.read_text())
            if data.get("embedding_model") == self.embedder.model_name:
                if data.get("model") is not None:
                    model = AbstentionModel.from_dict(data["model"])
                    self.engine.set_model(model, source=str(path))
                else:
                    self.engine.set_threshold(float(data["threshold"]), source=str(path), **data.get("info", {}))
                self._calibrated_at_agents = int(data.get("agents", 0))
                log.info("loaded abstention calibration", extra={"path": str(path), **self.status()["abstention"]})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable calibration file", extra={"path": str(path), "error": str(exc)})

    async def _maybe_calibrate(self) -> None:
        """Self-calibrate when there is no threshold yet or the federation grew/shrank by 25%."""
        n = len(self.index)
        if n < MIN_AGENTS_TO_CALIBRATE:
            return
        if self.engine.threshold is not None and abs(n - self._calibrated_at_agents) < 0.25 * max(
            self._calibrated_at_agents, 1
        ):
            return
        result = await self.calibrate_from_probes()
        log.info("calibrated abstention", extra={"threshold": result["threshold"], "agents": n})

    async def calibrate_from_probes(self) -> dict[str, Any]:
        """Fit the abstention model on probes: paraphrases of the agents' descriptions (relevant)
        and OFF_TOPIC (irrelevant), routed through this router's own index."""
        relevant = relevant_probes(list(self._descriptions.values()), seed=len(self.index))
        texts = relevant + list(OFF_TOPIC)
        vecs = await asyncio.to_thread(self.embedder.embed, texts)
        tops = top_candidates(self.engine, texts, vecs)
        model = fit_probes(tops[: len(relevant)], tops[len(relevant) :], agents=len(self.index))
        self.engine.set_model(model, source="self")
        self._calibrated_at_agents = len(self.index)
        self._dirty = True
        return {"threshold": model.alpha_threshold, "model": model.to_dict()}


async def snapshot_in_background(index: CapabilityIndex, path: Path, graph_lock: asyncio.Lock) -> None:
    """The service's snapshot: the event loop pays only the fork (`CapabilityIndex.snapshot_in_child`),
    made cheap by huge pages (`collapse_huge_pages`, in a worker thread). `graph_lock` keeps
    background flushes and compactions out of the fork and out of the child's lifetime (a
    flush then would copy-on-write most of the graph's 2 MB pages)."""
    await _off_loop(collapse_huge_pages)
    async with graph_lock:
        pid = index.snapshot_in_child(path)
        await _off_loop(CapabilityIndex.wait_snapshot, pid)


async def flush_in_background(index: CapabilityIndex, graph_lock: asyncio.Lock) -> int:
    """Insert the buffered vectors into the graphs in a worker thread (hnswlib releases the GIL);
    queries go on meanwhile, waiting at most one insert chunk for a shard's lock."""
    async with graph_lock:
        batch = index.begin_flush()
        if batch is None:
            return 0
        try:
            await _off_loop(index.insert_batch, batch)
        finally:
            added = index.finish_flush(batch)
        return added


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`asyncio.to_thread`, but a cancelled caller still waits for the worker (it cannot be
    interrupted, and the caller's cleanup must not run while it still uses the index)."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


async def run_router(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    verify_vcv: VerifyVCV | None = None,
    ready: asyncio.Event | None = None,
    snapshot: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """`foa router`: restore the snapshot if there is one, serve until SIGINT/SIGTERM (or `stop`),
    then snapshot and leave."""
    from fabric.security import VcvGate

    client_id = f"router-{os.urandom(4).hex()}"
    async with ServiceRuntime(settings, "router", instance=client_id, embedder=embedder, stop=stop) as rt:
        embedder = await rt.embedder()
        snap = snapshot_path(settings) if snapshot else None
        index = await asyncio.to_thread(restore_index, snap, embedder.model_name) if snap is not None else None
        gate = VcvGate.from_settings(settings)  # FOA_TRUST_STORE set: signatures are checked
        verify_vcv = verify_vcv or gate.check

        async with Bus(settings, client_id, broker=rt.broker(), persistent=False) as bus:
            rt.watch_bus(bus)
            service = RouterService(settings, bus, embedder, index=index, verify_vcv=verify_vcv,
                                    verify_outcome=gate.check_outcome, snapshot_dir=snap)
            service.metrics = rt.metrics
            await service.start()
            rt.on_drain(service.stop)  # the snapshot is written while the bus is still open
            rt.ready()
            if ready is not None:
                ready.set()
            await rt.serve()


def restore_index(snap: Path, embedding_model: str) -> CapabilityIndex | None:
    """The index snapshot at `snap` if there is one from this embedding model, else None (empty start)."""
    if not (snap / "meta.json").exists():
        return None
    try:
        index = CapabilityIndex.restore(snap)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot restore snapshot; starting empty", extra={"path": str(snap), "error": str(exc)})
        return None
    if index.config.embedding_model != embedding_model:
        log.warning("snapshot is from another embedding model; starting empty", extra={"path": str(snap)})
        return None
    log.info("restored index snapshot", extra={"agents": len(index), "path": str(snap)})
    return index


def top_candidates(engine: RouterEngine, texts: list[str], vecs: np.ndarray) -> list[Top]:
    """The abstention model's input per text (abstention off; the best two and their factors)."""
    out = []
    for text, vec in zip(texts, vecs, strict=False):
        res = engine.route(RouteQuery(text=text, top_k=2, abstain=False), vec).response
        out.append(Top.of_matches(res.matches))
    return out


def fit_probes(relevant: list[Top], irrelevant: list[Top], *, agents: int) -> AbstentionModel:
    """The abstention model fitted on probes (the service's self-calibration and `foa route --calibrate`)."""
    return fit(relevant, irrelevant, provenance={
        "source": "probes: agent descriptions (relevant) and OFF_TOPIC (irrelevant)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "agents": agents,
    })


def top_scores(engine: RouterEngine, texts: list[str], vecs: np.ndarray) -> list[float]:
    """Best α per text with abstention off (calibration input)."""
    out = []
    for text, vec in zip(texts, vecs, strict=False):
        res = engine.route(RouteQuery(text=text, top_k=1, abstain=False), vec).response
        out.append(res.matches[0].score if res.matches else 0.0)
    return out
