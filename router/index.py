"""The capability index: live VCVs in numpy columns plus sharded hnswlib graphs.

Layout (per agent, measured in benchmarks/router_scale.py):
- one row per agent in numpy columns (`AgentTable`): version, liveness, online flag, policy
  bitmask, resources, reputation, int8 spec embedding, 128-byte Bloom filter, exact skill ids.
  No Python object per agent except its id string in `ids` / `rows` (~130 bytes).
- capability vectors live only inside hnswlib (space 'ip' on unit vectors, label = row).
- upserts land in a small brute-forced buffer and reach the graphs in multi-threaded batches
  (`flush`), so a single upsert is visible at once and costs ~50 µs of the caller's thread. The
  service inserts those batches in a worker thread (`begin_flush` / `insert_batch` /
  `finish_flush`): hnswlib releases the GIL, per-shard locks keep its add_items apart from
  queries, and a batch stays brute-forced until it is in. Measured with
  benchmarks/router_scale.py: 15-16k new agents/s end to end at 100k, 8.6-8.9k at 1M (2 cores).
- snapshots are written by a forked child from its copy-on-write view (`snapshot_in_child`): the
  event loop pays the fork, ~3-5 ms at 300k agents with huge pages (`collapse_huge_pages`).

Shard scheme: `hash` (row % S, every query probes every shard, each returns 2k/S + 16) is
the default; `centroid` (spherical k-means over the first flushed batch, a query probes the
`probe` nearest shards) is kept for comparison. Measured on 100k clustered agents, S = 4,
fetch 256, one query thread (benchmarks/router_scale.py --agents 100000 [--scheme centroid
--probe 2]): hash recall@10 0.9993 at p50 2.27 ms; centroid recall@10 0.895 at p50 1.95 ms:
queries near a partition border miss agents in the unprobed shards, and the shards come out
unbalanced. Hash shards keep recall, are balanced by construction, rebuild (compaction) one
quarter of the graph at a time, and can be probed in parallel by replicas with more cores.

Deletes are tombstones (`mark_deleted`); the row goes on a free list and the next new agent
reuses it. With hash shards a reused row lands in the same shard, and hnswlib's add of a
deleted label un-deletes and rewires that slot in place, so the graph does not grow. `compact`
rebuilds a shard whose tombstones exceed a ratio (centroid shards, or long churn).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import hnswlib
import numpy as np

from fabric.bloom import BLOOM_BITS, BLOOM_HASHES, BloomFilter
from fabric.broker import die_with_parent
from fabric.errors import ProtocolError
from fabric.messages import NodeOutcome
from fabric.vcv import VCV
from fabric.vectors import INT8_SCALE, to_int8
from router.learning import WORDS_MAX, LearnedViews, LearningConfig
from router.lexical import CompactionPlan, LexicalIndex, agent_text

SNAPSHOT_VERSION = 2  # 2: ids as a NUL-joined blob, pending (unflushed) vectors saved
FREE = -2  # shard column: row is free
PENDING = -1  # shard column: row's vector is in the upsert buffer
MAX_POLICIES = 64
SPEC_SCALE = INT8_SCALE
#: vectors per locked add_items call of a background flush while queries wait for the shard:
#: a query waits one chunk at most (~1 ms at 100k agents on 2 cores); the chunk doubles (up to
#: 32x) while no query waits, since each add_items call starts its threads anew
INSERT_CHUNK = 8
QUERY_QUIET_S = 0.05  # a background insert uses every core only when no query came this recently


@dataclass
class IndexConfig:
    dim: int
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    shards: int = 4
    scheme: Literal["hash", "centroid"] = "hash"
    probe: int = 2  # centroid scheme: shards probed per query
    M: int = 16
    ef_construction: int = 64
    ef_search: int = 64
    search_cache: int = 1024  # repeated query vectors answered from memory until the index changes
    buffer_size: int = 4096
    compact_ratio: float = 0.2
    # hash shards: each returns shard_margin · k / shards + 16 of a search for k (each holds ~1/S
    # of the global top k; the margin and the floor keep recall)
    shard_margin: float = 2.0
    build_threads: int = 0  # 0 = all cores
    # threads one query searches its shards with (1 = the calling thread only). 2 halves the graph
    # walk at 1M agents on 2 cores (measured in benchmarks/router_scale.py --query-threads)
    query_threads: int = 1
    # how α's similarity fuses the description with the example views (router/scoring.py;
    # chosen by benchmarks/routing_views.py on BFCL dev: weighted max, w = 0.5)
    view_pooling: Literal["softmax", "max", "weighted_max", "none"] = "weighted_max"
    view_temperature: float = 0.05  # softmax pooling's temperature
    view_weight: float = 0.5  # weighted max: (1 - w) · description + w · max(description, best view)
    # views re-score only this many candidates, the best by their description's cosine (the view
    # gather is most of a query's cost: 576 candidates × 8 views made p99 6.2 ms at 100k agents)
    view_candidates: int = 64
    # the words of an agent's examples that its name, description and skills lack join its BM25
    # document, once each (router/lexical.py agent_text; False: the lexical factor before them)
    lexical_examples: bool = True


class IndexError_(ProtocolError):
    """A VCV the index cannot hold (wrong dimension, too many policy flags, ...)."""


class ShardLock:
    """A shard's lock that a background writer hands over: `yield_to_waiters` after each chunk lets
    a waiting query in (threading.Lock is not fair: a loop that releases and re-acquires it would
    starve the waiter; measured: queries waited ~15 ms beside a flush without this)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0  # threads blocked in __enter__

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.waiting += 1
            self._lock.acquire()
            self.waiting -= 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def acquire(self) -> None:
        self.__enter__()

    def release(self) -> None:
        self._lock.release()

    def yield_to_waiters(self) -> None:
        deadline = time.monotonic() + 0.05
        while self.waiting and time.monotonic() < deadline:
            time.sleep(0.0002)  # GIL released: the waiter (which needs the GIL too) gets in


def _grow(arr: np.ndarray, capacity: int) -> np.ndarray:
    new = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
    new[: len(arr)] = arr
    return new


class AgentTable:
    """Per-agent metadata as numpy columns (row = hnswlib label)."""

    COLUMNS: dict[str, tuple[Any, tuple[int, ...]]] = {
        "version": (np.int64, ()),
        "alive": (np.bool_, ()),
        "online": (np.bool_, ()),
        "shard": (np.int16, ()),
        "policy": (np.uint64, ()),
        "latency_ms": (np.float32, ()),
        "tokens_per_s": (np.float32, ()),
        "cost_in": (np.float32, ()),
        "cost_out": (np.float32, ()),
        "context": (np.int32, ()),
        "concurrency": (np.int32, ()),
        "reputation": (np.float32, ()),
        "vec_hash": (np.uint64, ()),
        "skill_start": (np.int64, ()),
        "skill_len": (np.int16, ()),
        "view_start": (np.int64, ()),
        "view_len": (np.int8, ()),
        "learned": (np.int32, ()),  # 1 + the agent's slot in the learned views (router/learning.py), 0 = none
    }

    # the COLUMNS, made by __init__ in a loop and declared here for the type checker
    version: np.ndarray
    alive: np.ndarray
    online: np.ndarray
    shard: np.ndarray
    policy: np.ndarray
    latency_ms: np.ndarray
    tokens_per_s: np.ndarray
    cost_in: np.ndarray
    cost_out: np.ndarray
    context: np.ndarray
    concurrency: np.ndarray
    reputation: np.ndarray
    vec_hash: np.ndarray
    skill_start: np.ndarray
    skill_len: np.ndarray
    view_start: np.ndarray
    view_len: np.ndarray
    learned: np.ndarray

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.capacity = capacity
        for name, (dtype, shape) in self.COLUMNS.items():
            setattr(self, name, np.zeros((capacity, *shape), dtype=dtype))
        self.shard[:] = FREE
        self.spec = np.zeros((capacity, dim), dtype=np.int8)
        self.bloom = np.zeros((capacity, BLOOM_BITS // 8), dtype=np.uint8)
        self.skill_pool = np.zeros(capacity * 2, dtype=np.int32)
        self.skill_used = 0
        self.view_pool = np.zeros((0, dim), dtype=np.int8)  # example views, int8 like the spec (SPEC_SCALE)
        self.view_used = 0

    def ensure(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        cap = max(rows, 2 * self.capacity)
        for name in [*self.COLUMNS, "spec", "bloom"]:
            setattr(self, name, _grow(getattr(self, name), cap))
        self.shard[self.capacity :] = FREE
        self.capacity = cap

    def set_skills(self, row: int, ids: list[int]) -> None:
        n = len(ids)
        if self.skill_used + n > len(self.skill_pool):
            self.skill_pool = _grow(self.skill_pool, max(self.skill_used + n, 2 * len(self.skill_pool)))
        self.skill_pool[self.skill_used : self.skill_used + n] = ids
        self.skill_start[row] = self.skill_used
        self.skill_len[row] = n
        self.skill_used += n

    def set_views(self, row: int, views: np.ndarray) -> None:
        """An agent's views (float, unit rows) as int8: in place when they fit the old slot."""
        n = len(views)
        q = to_int8(views)
        if 0 < n <= int(self.view_len[row]):
            start = int(self.view_start[row])
        else:
            if self.view_used + n > len(self.view_pool):  # 1.25x: the pool is most of an agent's bytes
                self.view_pool = _grow(self.view_pool, max(self.view_used + n, len(self.view_pool) * 5 // 4, 64))
            start = self.view_used
            self.view_used += n
        self.view_pool[start : start + n] = q
        self.view_start[row] = start
        self.view_len[row] = n

    def skills_of(self, row: int) -> np.ndarray:
        s = int(self.skill_start[row])
        return self.skill_pool[s : s + int(self.skill_len[row])]

    def arrays(self, rows: int) -> dict[str, np.ndarray]:
        out = {f"col_{n}": getattr(self, n)[:rows] for n in [*self.COLUMNS, "spec", "bloom"]}
        out["skill_pool"] = self.skill_pool[: self.skill_used]
        out["view_pool"] = self.view_pool[: self.view_used]
        return out

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in [*self.COLUMNS, "spec", "bloom", "skill_pool", "view_pool"])


@dataclass
class FlushBatch:
    """Buffered vectors on their way into the graphs (`begin_flush` → `insert_batch` → `finish_flush`).

    Until `finish_flush`, the batch is searched by brute force like the buffer; `live[i]` turns
    False when row `rows[i]` is re-upserted or deleted meanwhile (its graph copy is then stale and
    is tombstoned by `finish_flush`)."""

    rows: np.ndarray  # int64
    vecs: np.ndarray  # float32 (n, dim)
    targets: np.ndarray  # int16 shard per row
    live: np.ndarray  # bool
    slot: dict[int, int]  # row -> index in the batch


@dataclass
class UpsertResult:
    accepted: bool
    reason: str = ""
    row: int = -1


@dataclass
class IndexStats:
    agents: int = 0
    online: int = 0
    rows: int = 0
    pending: int = 0
    tombstones: int = 0
    shard_sizes: list[int] = field(default_factory=list)
    upserts: int = 0
    ignored_stale: int = 0
    deletes: int = 0
    compactions: int = 0
    search_cache_hits: int = 0


class CapabilityIndex:
    """Newest VCV per agent, searchable by capability vector, with snapshot/restore."""

    def __init__(self, config: IndexConfig, learning: LearningConfig | None = None) -> None:
        self.config = config
        self.table = AgentTable(config.dim)
        self.learned = LearnedViews(config.dim, learning or LearningConfig())
        self.lexical = LexicalIndex()
        self.ids: list[str | None] = []  # row -> agent id
        self.rows: dict[str, int] = {}  # agent id -> row
        self.free: list[int] = []
        self.policy_bits: dict[str, int] = {}
        self.policy_refs: dict[str, int] = {}
        self.skill_vocab: dict[str, int] = {}
        self.offline: set[str] = set()  # agents reported offline (known or not yet)
        self.reputation_pending: dict[str, float] = {}
        self.meta: dict[str, Any] = {}  # e.g. the calibrated abstention threshold
        self.shards: list[hnswlib.Index] = [self._new_shard(1024) for _ in range(config.shards)]
        self.shard_deleted: list[set[int]] = [set() for _ in range(config.shards)]
        self.centroids: np.ndarray | None = None
        self.buf_vecs = np.zeros((config.buffer_size, config.dim), dtype=np.float32)
        self.buf_rows = np.full(config.buffer_size, -1, dtype=np.int64)
        self.buf_n = 0
        self.buf_slot: dict[int, int] = {}
        #: False: a full buffer grows instead of flushing inline (the service flushes in a worker
        #: thread, see `begin_flush`); True: `upsert` flushes a full buffer itself (scripts, tests)
        self.auto_flush = True
        self.inflight: FlushBatch | None = None
        # one lock per shard around every graph call: hnswlib's add_items is not safe against a
        # concurrent knn_query, mark_deleted or resize_index, and a background flush holds a
        # shard's lock for one INSERT_CHUNK at a time, so a query waits one chunk at most
        self.locks = [ShardLock() for _ in range(config.shards)]
        # rows whose graph membership changed while a background compaction rebuilt a shard
        self._touched: set[int] | None = None
        self.stats = IndexStats()
        # (query bytes, k) -> (rows, sims); emptied whenever a vector enters or leaves search
        self._searches: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}
        self._query_pool: ThreadPoolExecutor | None = None
        self._last_query = 0.0  # time.monotonic() of the last search (background inserts yield a core)
        self.last_fork_s = 0.0  # what the last snapshot_in_child's fork cost its caller

    # ---- shards ---------------------------------------------------------------------------

    def _new_shard(self, capacity: int) -> hnswlib.Index:
        shard = hnswlib.Index(space="ip", dim=self.config.dim)
        shard.init_index(max_elements=capacity, M=self.config.M, ef_construction=self.config.ef_construction)
        shard.set_ef(self.config.ef_search)
        return shard

    @property
    def threads(self) -> int:
        return self.config.build_threads or os.cpu_count() or 1

    def _shard_for(self, rows: np.ndarray, vecs: np.ndarray) -> np.ndarray:
        shards: np.ndarray  # numpy's stubs type arithmetic on a bare ndarray as Any
        if self.config.scheme == "hash" or self.config.shards == 1:
            shards = np.remainder(rows, self.config.shards).astype(np.int16)
            return shards
        if self.centroids is None:
            self.centroids = _kmeans(vecs, self.config.shards)
        shards = np.argmax(vecs @ self.centroids.T, axis=1).astype(np.int16)
        return shards

    def flush(self) -> int:
        """Move buffered upserts into the graphs now (multi-threaded batch insert), on this thread."""
        batch = self.begin_flush()
        if batch is None:
            if self.inflight is not None:
                raise RuntimeError("a background flush is in flight: finish it (finish_flush) before flushing inline")
            return 0
        self.insert_batch(batch, chunk=0)
        return self.finish_flush(batch)

    def begin_flush(self) -> FlushBatch | None:
        """Owner thread: move the buffer into an in-flight batch (still searched by brute force).

        None when the buffer is empty or another batch is still in flight."""
        if self.buf_n == 0 or self.inflight is not None:
            return None
        live = self.buf_rows[: self.buf_n] >= 0
        rows = self.buf_rows[: self.buf_n][live].copy()
        vecs = self.buf_vecs[: self.buf_n][live].copy()
        batch = FlushBatch(rows, vecs, self._shard_for(rows, vecs), np.ones(len(rows), dtype=bool),
                           dict(zip(rows.tolist(), range(len(rows)), strict=True)))
        self.inflight = batch
        self.buf_n = 0
        self.buf_rows[:] = -1
        self.buf_slot.clear()
        return batch

    def insert_batch(self, batch: FlushBatch, chunk: int = INSERT_CHUNK) -> None:
        """Any thread: add the batch to the graphs. hnswlib releases the GIL in add_items (measured:
        the event loop keeps ticking within 0.1 ms of its schedule beside a 50k-vector add_items).

        With `chunk` > 0 each shard's lock is held for `chunk` vectors at a time, so queries on the
        owner thread interleave with the insert; 0 = each shard in one call (inline flush)."""
        for s in range(self.config.shards):
            sel = np.flatnonzero(batch.targets == s)
            if not len(sel):
                continue
            shard = self.shards[s]
            step = chunk or len(sel)
            with self.locks[s]:
                need = shard.element_count + len(sel)
                if need > shard.max_elements:
                    # not thread safe with queries: under the lock. Geometric, so rare; it copies the
                    # shard (~20 ms per 100k vectors here), which is the one stall left in a flush
                    shard.resize_index(max(need, 2 * shard.max_elements))
            i = 0
            while i < len(sel):
                part = sel[i : i + step]
                i += len(part)
                # while queries are coming in, one insert thread leaves them a core (measured at
                # 300k agents on 2 cores: queries during a flush at p99 21-85 ms with both cores inserting)
                busy = chunk and time.monotonic() - self._last_query < QUERY_QUIET_S
                threads = max(1, self.threads - 1) if busy else self.threads
                with self.locks[s]:
                    shard.add_items(batch.vecs[part], batch.rows[part].astype(np.uint64), num_threads=threads)
                # short chunks while queries come, longer ones (fewer calls) while none do
                step = chunk if self.locks[s].waiting else min(2 * step, 32 * chunk) if chunk else step
                self.locks[s].yield_to_waiters()

    def finish_flush(self, batch: FlushBatch) -> int:
        """Owner thread: the batch's rows are now served by their shards; rows re-upserted or
        deleted while it was in flight are tombstoned in the graph (their copy there is stale)."""
        self._searches.clear()
        ok = batch.live
        rows, targets = batch.rows[ok], batch.targets[ok]
        self.table.shard[rows] = targets
        for s in range(self.config.shards):
            self.shard_deleted[s].difference_update(rows[targets == s].tolist())
        for row, s in zip(batch.rows[~ok].tolist(), batch.targets[~ok].tolist(), strict=True):
            with self.locks[s]:
                self.shards[s].mark_deleted(row)
            self.shard_deleted[s].add(row)
        if self._touched is not None:
            self._touched.update(batch.rows.tolist())
        self.inflight = None
        return len(rows)

    def _buffer(self, row: int, vec: np.ndarray) -> None:
        self._searches.clear()
        slot = self.buf_slot.get(row)
        if slot is None:
            if self.buf_n >= len(self.buf_rows):
                if self.auto_flush and self.inflight is None:
                    self.flush()
                else:  # a background flusher drains it; meanwhile it is brute-forced
                    self.buf_vecs = _grow(self.buf_vecs, 2 * len(self.buf_rows))
                    self.buf_rows = np.concatenate([self.buf_rows, np.full(len(self.buf_rows), -1, np.int64)])
            slot = self.buf_n
            self.buf_n += 1
            self.buf_slot[row] = slot
            self.buf_rows[slot] = row
        self.buf_vecs[slot] = vec
        self.table.shard[row] = PENDING

    def _unindex(self, row: int) -> None:
        """Take a row's vector out of search (tombstone in its shard or drop from the buffer)."""
        self._searches.clear()
        s = int(self.table.shard[row])
        if s == PENDING:
            slot = self.buf_slot.pop(row, None)
            if slot is not None:
                self.buf_rows[slot] = -1
            elif self.inflight is not None and row in self.inflight.slot:
                self.inflight.live[self.inflight.slot[row]] = False
        elif s >= 0:
            with self.locks[s]:
                self.shards[s].mark_deleted(row)
            self.shard_deleted[s].add(row)
            if self._touched is not None:
                self._touched.add(row)
        self.table.shard[row] = FREE

    # ---- writes ---------------------------------------------------------------------------

    def _policy_mask(self, policies: list[str], register: bool) -> int:
        mask = 0
        for p in policies:
            bit = self.policy_bits.get(p)
            if bit is None:
                if not register:
                    continue
                if len(self.policy_bits) >= MAX_POLICIES:
                    raise IndexError_(f"more than {MAX_POLICIES} distinct policy flags in the federation")
                bit = len(self.policy_bits)
                self.policy_bits[p] = bit
            mask |= 1 << bit
        return mask

    def policy_known(self, flag: str) -> bool:
        """Advertised by at least one live agent."""
        return self.policy_refs.get(flag, 0) > 0

    def query_policy_mask(self, policies: list[str]) -> tuple[int, list[str]]:
        """(mask, flags nobody advertises): such flags make every agent fail the gate."""
        unknown = [p for p in policies if p not in self.policy_bits]
        return self._policy_mask(policies, register=False), unknown

    def _skill_ids(self, skills: list[str]) -> list[int]:
        out = []
        for s in skills:
            sid = self.skill_vocab.get(s)
            if sid is None:
                sid = len(self.skill_vocab)
                self.skill_vocab[s] = sid
            out.append(sid)
        return out

    def upsert(self, vcv: VCV) -> UpsertResult:
        """Keep the newest version per agent; an older or equal version is ignored."""
        if vcv.dim != self.config.dim:
            return UpsertResult(False, f"capability dimension {vcv.dim}, index has {self.config.dim}")
        if vcv.embedding_model != self.config.embedding_model:
            return UpsertResult(
                False, f"embedding model {vcv.embedding_model!r}, router uses {self.config.embedding_model!r}"
            )
        if len(vcv.spec_embedding) != self.config.dim:
            return UpsertResult(
                False, f"spec embedding dimension {len(vcv.spec_embedding)}, expected {self.config.dim}"
            )
        row = self.rows.get(vcv.agent_id)
        t = self.table
        if row is not None and vcv.version <= int(t.version[row]):
            self.stats.ignored_stale += 1
            return UpsertResult(False, f"stale version {vcv.version} <= {int(t.version[row])}", row)
        if vcv.bloom_bits == BLOOM_BITS and vcv.bloom_hashes == BLOOM_HASHES:
            bloom = vcv.bloom().to_bytes()
        elif vcv.skills:
            bloom = BloomFilter.of(vcv.skills).to_bytes()
        else:
            return UpsertResult(False, f"bloom filter {vcv.bloom_bits}/{vcv.bloom_hashes} without a skill list")
        try:
            mask = self._policy_mask(vcv.policies, register=True)
        except IndexError_ as exc:
            return UpsertResult(False, str(exc))
        vec = vcv.capability_array()
        vhash = int.from_bytes(hashlib.blake2b(vec.tobytes(), digest_size=8).digest(), "little")
        if row is None:
            row = self.free.pop() if self.free else len(self.ids)
            if row == len(self.ids):
                self.ids.append(vcv.agent_id)
                t.ensure(row + 1)
                self.lexical.ensure_rows(t.capacity)
            else:
                self.ids[row] = vcv.agent_id
            self.rows[vcv.agent_id] = row
            t.reputation[row] = self.reputation_pending.pop(vcv.agent_id, 0.5)
            new_vector = True
        else:
            self._release_policies(row)
            self.lexical.clear_row(row)
            new_vector = int(t.vec_hash[row]) != vhash or int(t.shard[row]) == FREE
        for p in vcv.policies:
            self.policy_refs[p] = self.policy_refs.get(p, 0) + 1
        r = vcv.resources
        t.version[row] = vcv.version
        t.alive[row] = True
        t.online[row] = vcv.agent_id not in self.offline
        t.policy[row] = np.uint64(mask)
        t.latency_ms[row] = r.latency_ms
        t.tokens_per_s[row] = r.tokens_per_s
        t.cost_in[row] = r.cost_per_1k_input
        t.cost_out[row] = r.cost_per_1k_output
        t.context[row] = r.context_window
        t.concurrency[row] = r.max_concurrency
        t.vec_hash[row] = np.uint64(vhash)
        t.spec[row] = to_int8(vcv.spec_array())
        t.bloom[row] = np.frombuffer(bloom, dtype=np.uint8)
        t.set_skills(row, self._skill_ids(vcv.skills))
        t.set_views(row, vcv.views_array())
        slot = self.learned.slot(vcv.agent_id)
        t.learned[row] = 0 if slot is None else slot + 1
        examples = vcv.examples if self.config.lexical_examples else ()
        self.lexical.set_row(row, agent_text(vcv.name, vcv.description, vcv.skills, examples))
        if slot is not None:  # a new version, or an agent back: its learned words against its new text
            self._learned_words(vcv.agent_id, row, slot)
        if new_vector:
            if int(t.shard[row]) != FREE:
                self._unindex(row)
            self._buffer(row, vec)
        self.stats.upserts += 1
        return UpsertResult(True, row=row)

    def _release_policies(self, row: int) -> None:
        mask = int(self.table.policy[row])
        for flag, bit in self.policy_bits.items():
            if mask >> bit & 1:
                self.policy_refs[flag] = self.policy_refs.get(flag, 1) - 1

    def delete(self, agent_id: str) -> bool:
        """Tombstone: the agent left (empty retained VCV). A later VCV of any version re-adds it."""
        row = self.rows.pop(agent_id, None)
        if row is None:
            return False
        self._unindex(row)
        self._release_policies(row)
        self.lexical.clear_row(row)
        t = self.table
        t.alive[row] = False
        t.online[row] = False
        t.version[row] = 0
        t.skill_len[row] = 0
        t.learned[row] = 0  # the learned view stays with the agent id, for when it comes back
        self.ids[row] = None
        self.free.append(row)
        self.stats.deletes += 1
        return True

    def set_online(self, agent_id: str, online: bool) -> None:
        """Status stream: offline agents leave results at once and come back when online."""
        if online:
            self.offline.discard(agent_id)
        else:
            self.offline.add(agent_id)
        row = self.rows.get(agent_id)
        if row is not None:
            self.table.online[row] = online

    def set_reputation(self, agent_id: str, score: float) -> None:
        row = self.rows.get(agent_id)
        if row is None:
            self.reputation_pending[agent_id] = score
        else:
            self.table.reputation[row] = score

    def forget_learning(self, config: LearningConfig | None = None) -> None:
        """Drop every learned view (benchmarks replay a stream from scratch; an operator may too)."""
        self.learned = LearnedViews(self.config.dim, config or self.learned.config)
        self.table.learned[:] = 0

    def learn(self, outcome: NodeOutcome, now: float | None = None) -> list[str]:
        """Fold a node outcome into the learned views (router/learning.py); the agents it moved."""
        changed = self.learned.observe(outcome, now, known=self.rows)
        for agent_id in changed:
            row, slot = self.rows.get(agent_id), self.learned.slot(agent_id)
            if row is not None and slot is not None:
                self.table.learned[row] = slot + 1
                if agent_id in outcome.kept:
                    self._learned_words(agent_id, row, slot)
        return changed

    def _learned_words(self, agent_id: str, row: int, slot: int) -> None:
        """The learned words the agent's own BM25 document lacks, as lexical token ids."""
        own = self.lexical.row_tokens(row)
        words = [w for w in self.learned.words_of(agent_id) if w not in own][:WORDS_MAX]
        self.learned.set_word_ids(slot, [self.lexical.token_id(w) for w in words])

    def version_of(self, agent_id: str) -> int | None:
        row = self.rows.get(agent_id)
        return None if row is None else int(self.table.version[row])

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self.rows

    # ---- search ---------------------------------------------------------------------------

    def search(self, vec: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """About the k rows nearest to `vec` (cosine), from the probed shards and the buffer.

        `allowed` (bool per row) restricts the search inside the graphs (hnswlib filter): the
        fallback for gates so selective that over-fetching cannot find k passing agents.
        Returns (rows int64, cosine float32), unsorted, only rows still live in the index.

        Unfiltered results are remembered per (query vector, k) until a vector enters or leaves
        the index: planners send the same subtask texts over and over (and every job asks for
        a synthesiser with the same text), and a graph walk costs ~0.1 ms per shard.
        """
        key = None
        if allowed is None and self.config.search_cache > 0:
            key = (np.ascontiguousarray(vec, dtype=np.float32).tobytes(), k)
            hit = self._searches.get(key)
            if hit is not None:
                self.stats.search_cache_hits += 1
                return hit
        rows, sims = self._search(vec, k, allowed)
        if key is not None:
            if len(self._searches) >= self.config.search_cache:
                self._searches.pop(next(iter(self._searches)))
            rows.flags.writeable = False
            sims.flags.writeable = False
            self._searches[key] = (rows, sims)
        return rows, sims

    def _search(self, vec: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        self._last_query = time.monotonic()
        filt = None if allowed is None else (lambda label: bool(allowed[label]))
        q = np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1)
        out_rows: list[np.ndarray] = []
        out_sims: list[np.ndarray] = []
        if self.config.scheme == "centroid" and self.centroids is not None and allowed is None:
            probed = np.argsort(-(self.centroids @ q[0]))[: self.config.probe].tolist()
            per_shard = k
        else:
            probed = list(range(self.config.shards))
            # each hash shard holds ~1/S of the global top-k; a margin plus a floor keeps recall
            margin = int(self.config.shard_margin * k) // self.config.shards + 16
            per_shard = k if self.config.shards == 1 else min(k, margin)
        found: list[tuple[int, np.ndarray, np.ndarray] | None]
        if self.config.query_threads > 1 and len(probed) > 1:
            # the shards split between this thread and the pool's (knn_query releases the GIL)
            if self._query_pool is None:
                self._query_pool = ThreadPoolExecutor(self.config.query_threads - 1, thread_name_prefix="router-q")
            mine = probed[:: self.config.query_threads]
            theirs = [s for s in probed if s not in mine]
            futures = [self._query_pool.submit(self._probe, s, q, per_shard, filt) for s in theirs]
            found = [self._probe(s, q, per_shard, filt) for s in mine] + [f.result() for f in futures]
        else:
            found = [self._probe(s, q, per_shard, filt) for s in probed]
        for hit in found:
            if hit is None:
                continue
            s, rows, sims = hit
            # a row whose vector is in the buffer or an in-flight batch (or was restored as
            # pending) may still have an older copy in the graph: the brute-forced one counts
            ok = self.table.shard[rows] == s
            out_rows.append(rows[ok])
            out_sims.append(sims[ok])
        pending = [(self.buf_rows[: self.buf_n], self.buf_vecs[: self.buf_n])]
        if self.inflight is not None:
            pending.append((np.where(self.inflight.live, self.inflight.rows, -1), self.inflight.vecs))
        for prows, pvecs in pending:
            if not len(prows):
                continue
            live = prows >= 0
            if allowed is not None:
                live &= allowed[np.maximum(prows, 0)]
            sims = pvecs[live] @ q[0]
            rows = prows[live]
            if len(rows) > k:
                top = np.argpartition(-sims, k)[:k]
                rows, sims = rows[top], sims[top]
            out_rows.append(rows)
            out_sims.append(sims.astype(np.float32))
        if not out_rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(out_rows), np.concatenate(out_sims).astype(np.float32)

    def _probe(self, s: int, q: np.ndarray, per_shard: int, filt: Any) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The per_shard nearest rows of shard s (any thread: under the shard's lock)."""
        shard = self.shards[s]
        kk = min(per_shard, shard.element_count - len(self.shard_deleted[s]))
        if kk <= 0:
            return None
        with self.locks[s]:
            shard.set_ef(max(self.config.ef_search, kk))
            try:
                labels, dist = shard.knn_query(q, k=kk, num_threads=1, filter=filt)
            except RuntimeError:  # fewer reachable (allowed) elements than kk
                if filt is None:
                    labels, dist = shard.knn_query(q, k=max(1, kk // 2), num_threads=1)
                else:
                    labels, dist = _filtered_all(shard, q, kk, filt)
                    if len(labels[0]) == 0:
                        return None
        return s, labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Capability vectors of rows (from the graphs or the buffer); for compaction and tests."""
        out = np.zeros((len(rows), self.config.dim), dtype=np.float32)
        shard_of = self.table.shard[rows]
        for i, (row, s) in enumerate(zip(rows.tolist(), shard_of.tolist(), strict=False)):
            if s == PENDING:
                slot = self.buf_slot.get(row)
                if slot is not None:
                    out[i] = self.buf_vecs[slot]
                elif self.inflight is not None:
                    out[i] = self.inflight.vecs[self.inflight.slot[row]]
        for s in range(self.config.shards):
            sel = np.flatnonzero(shard_of == s)
            if len(sel):
                with self.locks[s]:
                    out[sel] = self.shards[s].get_items(rows[sel].astype(np.uint64), return_type="numpy")
        return out

    # ---- maintenance ----------------------------------------------------------------------

    def compact(self, force: bool = False) -> int:
        """Rebuild shards whose tombstones exceed compact_ratio, on this thread; returns shards rebuilt."""
        rebuilt = 0
        for s in self.shards_to_compact(force):
            rows = self.begin_compact(s)
            self.finish_compact(s, self.rebuild_shard(s, rows), rows)
            rebuilt += 1
        self.compact_lexical()
        return rebuilt

    def shards_to_compact(self, force: bool = False) -> list[int]:
        out = []
        for s, shard in enumerate(self.shards):
            dead = len(self.shard_deleted[s])
            if dead and (force or dead >= self.config.compact_ratio * max(shard.element_count, 1)):
                out.append(s)
        return out

    def begin_compact(self, s: int) -> np.ndarray:
        """Owner thread: the rows a rebuild of shard `s` starts from; changes from now on are replayed."""
        if self._touched is not None:
            raise RuntimeError("one shard compaction at a time")
        self._touched = set()
        return np.flatnonzero(self.table.shard[: len(self.ids)] == s)

    def rebuild_shard(self, s: int, rows: np.ndarray) -> hnswlib.Index:
        """Any thread: a fresh graph of `rows`' vectors. hnswlib releases the GIL in get_items and
        add_items, and the old shard is read in locked chunks, so queries go on meanwhile."""
        fresh = self._new_shard(max(1024, int(len(rows) * 1.25)))
        step = 16 * INSERT_CHUNK
        for i in range(0, len(rows), step):
            labels = rows[i : i + step].astype(np.uint64)
            with self.locks[s]:
                vecs = self.shards[s].get_items(labels, return_type="numpy")
            self.locks[s].yield_to_waiters()
            fresh.add_items(vecs, labels, num_threads=self.threads)
        return fresh

    def cancel_compact(self) -> None:
        """Owner thread: a rebuild was abandoned; the old shard stays."""
        self._touched = None

    def finish_compact(self, s: int, fresh: hnswlib.Index, rows: np.ndarray) -> None:
        """Owner thread: replay what changed in shard `s` during the rebuild, then swap it in."""
        touched = np.fromiter(self._touched or (), dtype=np.int64)
        self._touched = None
        now = touched[self.table.shard[touched] == s]  # (re-)added to s meanwhile: their current vectors
        if len(now):
            with self.locks[s]:
                vecs = self.shards[s].get_items(now.astype(np.uint64), return_type="numpy")
            fresh.add_items(vecs, now.astype(np.uint64), num_threads=1)
        built = np.zeros(len(self.ids), dtype=bool)
        built[rows] = True
        gone = touched[(self.table.shard[touched] != s) & built[touched]].tolist()  # left s meanwhile
        for row in gone:
            fresh.mark_deleted(row)
        self._searches.clear()
        with self.locks[s]:
            self.shards[s] = fresh
        self.shard_deleted[s] = set(gone)
        self.stats.compactions += 1

    def begin_compact_lexical(self) -> CompactionPlan | None:
        """The lexical pool's rebuild plan when over half of it is garbage (see LexicalIndex.build_compact)."""
        if self.lexical.garbage_ratio() <= 0.5:
            return None
        return self.lexical.begin_compact(np.flatnonzero(self.table.alive[: len(self.ids)]))

    def compact_lexical(self) -> None:
        plan = self.begin_compact_lexical()
        if plan is not None:
            self.lexical.finish_compact(plan, LexicalIndex.build_compact(plan))

    def stats_now(self) -> IndexStats:
        n = len(self.ids)
        self.stats.agents = len(self.rows)
        self.stats.online = int((self.table.alive[:n] & self.table.online[:n]).sum())
        self.stats.rows = n
        self.stats.pending = len(self.buf_slot)
        self.stats.tombstones = sum(len(d) for d in self.shard_deleted)
        pairs = zip(self.shards, self.shard_deleted, strict=False)
        self.stats.shard_sizes = [s.element_count - len(d) for s, d in pairs]
        return self.stats

    def memory_bytes(self) -> dict[str, int]:
        """An account of the index's memory (RSS is measured separately by the benchmark)."""
        hnsw = 0
        for shard in self.shards:
            # level-0 links (2M+1 ints) + vector + label, plus ~1/M upper-level links and the label map
            per = self.config.dim * 4 + (2 * self.config.M + 1) * 4 + 8 + (self.config.M + 1) * 4 // self.config.M + 48
            hnsw += shard.max_elements * per
        py = sum(len(i) + 49 for i in self.ids if i) + len(self.ids) * 8 + len(self.rows) * 100
        lex = sum(a.nbytes for a in self.lexical.state(len(self.ids)).values()) + self.lexical.start.nbytes // 2
        return {
            "hnsw": hnsw,
            "columns": self.table.nbytes(),
            "lexical": lex,
            "python_ids": py,
            "buffer": self.buf_vecs.nbytes,
        }

    # ---- snapshot -------------------------------------------------------------------------

    def snapshot(self, path: str | Path, *, flush: bool = True) -> Path:
        """Write graphs (hnswlib binary), columns (.npy) and metadata (JSON) into a directory.

        flush=False writes buffered and in-flight vectors as `pending_*.npy` instead of inserting
        them first (`snapshot_in_child` does that: a forked child must not wait for a flush)."""
        if flush:
            self.flush()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir(parents=True)
        n = len(self.ids)
        arrays = self.table.arrays(n) | self.lexical.state(n)
        prows, pvecs = self._pending()
        arrays |= {"pending_rows": prows, "pending_vecs": pvecs}
        # one NUL-joined blob (agent ids are MQTT topic levels: never NUL): json.loads of a
        # million ids was ~1 s of the restore
        ids_blob = "\0".join(i or "" for i in self.ids).encode()
        arrays["ids"] = np.frombuffer(ids_blob, dtype=np.uint8)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for s, shard in enumerate(self.shards):
            shard.save_index(str(tmp / f"shard_{s}.bin"))
            np.save(tmp / f"shard_{s}_deleted.npy", np.fromiter(self.shard_deleted[s], dtype=np.int64))
        if self.centroids is not None:
            np.save(tmp / "centroids.npy", self.centroids)
        self.learned.save(tmp)
        meta = {
            "snapshot_version": SNAPSHOT_VERSION,
            "rows": n,
            "config": asdict(self.config),
            "policy_bits": self.policy_bits,
            "policy_refs": self.policy_refs,
            "skill_vocab": list(self.skill_vocab),
            "skill_used": self.table.skill_used,
            "view_used": self.table.view_used,
            "offline": sorted(self.offline),
            "reputation_pending": self.reputation_pending,
            "free": self.free,
            "lexical": self.lexical.meta(),
            "meta": self.meta,
            "written_at": time.time(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            old = path.with_name(path.name + ".old")
            if old.exists():
                _rmtree(old)
            path.rename(old)
            tmp.rename(path)
            _rmtree(old)
        else:
            tmp.rename(path)
        return path

    def _pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows (and vectors) not yet served by a graph: the buffer and a live in-flight batch."""
        rows = [self.buf_rows[: self.buf_n]]
        vecs = [self.buf_vecs[: self.buf_n]]
        if self.inflight is not None:
            rows.append(np.where(self.inflight.live, self.inflight.rows, -1))
            vecs.append(self.inflight.vecs)
        all_rows = np.concatenate(rows)
        live = all_rows >= 0
        return all_rows[live], np.concatenate(vecs)[live]

    def snapshot_in_child(self, path: str | Path) -> int:
        """Fork; the child writes `snapshot(path, flush=False)` from its copy-on-write view of the
        index and exits. Returns the child's pid (wait with `wait_snapshot`).

        Why a process: the copy-on-write fork is a consistent view that costs the caller only
        the fork (~6 ms for a 2.8 GB process here) instead of the whole write (1.5 s at 1M
        agents), and mutations go on meanwhile. The caller holds every shard lock across the
        fork so no graph call is half done in the child's copy. POSIX only (no fork on Windows:
        use `snapshot`)."""
        for lock in self.locks:
            lock.acquire()
        try:
            t0 = time.perf_counter()
            pid = os.fork()
            self.last_fork_s = time.perf_counter() - t0
        finally:
            for lock in self.locks:
                lock.release()  # in the child too: its copies were taken by this thread
        if pid:
            return pid
        code = 1
        try:
            # an orphan must not write on: a restarted router's own snapshot would share `.tmp`
            die_with_parent(signal.SIGKILL)
            self.snapshot(path, flush=False)
            code = 0
        except BaseException:  # noqa: BLE001 - the child reports through its exit status
            traceback.print_exc(file=sys.stderr)
        finally:
            os._exit(code)

    @staticmethod
    def wait_snapshot(pid: int) -> None:
        """Block until a `snapshot_in_child` child exits; raise if it failed (run it in a thread)."""
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise OSError(f"snapshot child {pid} exited with {code}: see its traceback on stderr")

    @classmethod
    def restore(cls, path: str | Path, *, build_threads: int = 0) -> CapabilityIndex:
        """Load a snapshot: graphs with hnswlib.load_index (shards in parallel threads: it releases
        the GIL), columns with np.load; no re-insert. Pending vectors go back into the buffer."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        version = meta.get("snapshot_version")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"snapshot {path} has version {version}, expected {SNAPSHOT_VERSION}")
        config = IndexConfig(**meta["config"])
        config.build_threads = build_threads
        index = cls(config)

        def load_shard(s: int) -> hnswlib.Index:
            shard = hnswlib.Index(space="ip", dim=config.dim)
            shard.load_index(str(path / f"shard_{s}.bin"))
            shard.set_ef(config.ef_search)
            return shard

        with ThreadPoolExecutor(max_workers=min(config.shards, os.cpu_count() or 1)) as pool:
            shards = pool.map(load_shard, range(config.shards))
            ids: list[str | None]
            if version == 1:
                ids = json.loads((path / "ids.json").read_text())
            else:
                n = int(meta["rows"])
                ids = list(np.load(path / "ids.npy").tobytes().decode().split("\0")) if n else []
                for row in meta["free"]:
                    ids[row] = None
            n = len(ids)
            index.ids = ids
            index.rows = dict(zip(ids, range(n), strict=True))  # type: ignore[arg-type]  # None removed below
            index.rows.pop(None, None)  # type: ignore[call-overload]  # the free rows' key
            t = index.table
            if n:
                for name in [*AgentTable.COLUMNS, "spec", "bloom"]:
                    file = path / f"col_{name}.npy"
                    if file.exists():
                        setattr(t, name, np.load(file))
                    else:  # a column newer than the snapshot (the views): empty
                        dtype, shape = AgentTable.COLUMNS[name]
                        setattr(t, name, np.zeros((n, *shape), dtype=dtype))
                t.capacity = n
            t.skill_pool = np.array(np.load(path / "skill_pool.npy"), dtype=np.int32)
            t.skill_used = int(meta["skill_used"])
            if (path / "view_pool.npy").exists():
                t.view_pool = np.array(np.load(path / "view_pool.npy"), dtype=np.int8).reshape(-1, t.dim)
                t.view_used = int(meta.get("view_used", len(t.view_pool)))
            lex_arrays = {p.stem: np.load(p) for p in path.glob("lex_*.npy")}
            index.lexical = LexicalIndex.restore(lex_arrays, meta["lexical"], t.capacity)
            for s in range(config.shards):
                index.shard_deleted[s] = set(np.load(path / f"shard_{s}_deleted.npy").tolist())
            index.shards = list(shards)
        if (path / "pending_rows.npy").exists():
            for row, vec in zip(np.load(path / "pending_rows.npy").tolist(), np.load(path / "pending_vecs.npy"),
                                strict=True):
                index._buffer(row, vec)
        if (path / "centroids.npy").exists():
            index.centroids = np.load(path / "centroids.npy")
        index.learned = LearnedViews.load(path, config.dim)
        index.table.learned[: len(index.ids)] = 0
        for agent_id, slot in index.learned.slots.items():
            if agent_id in index.rows:
                index.table.learned[index.rows[agent_id]] = slot + 1
        index.policy_bits = meta["policy_bits"]
        index.policy_refs = meta["policy_refs"]
        index.skill_vocab = {s: i for i, s in enumerate(meta["skill_vocab"])}
        index.offline = set(meta["offline"])
        index.reputation_pending = meta["reputation_pending"]
        index.free = meta["free"]
        index.meta = meta["meta"]
        return index


def _filtered_all(shard: hnswlib.Index, q: np.ndarray, k: int, filt: Any) -> tuple[np.ndarray, np.ndarray]:
    """hnswlib raises when fewer than k elements pass the filter: ask for fewer until it answers."""
    while k > 1:
        k //= 2
        try:
            found: tuple[np.ndarray, np.ndarray] = shard.knn_query(q, k=k, num_threads=1, filter=filt)  # untyped lib
            return found
        except RuntimeError:
            continue
    return np.zeros((1, 0), dtype=np.uint64), np.zeros((1, 0), dtype=np.float32)


_MADV_COLLAPSE = 25  # Linux >= 6.1
_HUGE = 1 << 21
_COLLAPSE_STEP = 16 * _HUGE
#: mappings smaller than this stay in 4 KB pages (measured, not a fix: see `collapse_huge_pages`)
COLLAPSE_MIN_BYTES = 2 * _HUGE


def collapse_huge_pages(
    *, min_bytes: int = COLLAPSE_MIN_BYTES, step: int = _COLLAPSE_STEP,
    on_call: Callable[[float, float, int], None] | None = None,
) -> int:
    """Rewrite this process's large anonymous mappings (the hnswlib graphs, the heap) as 2 MB pages.

    Why: `snapshot_in_child` forks, and fork copies one page-table entry per 4 KB page: measured
    here at 300k agents (1.2 GB), fork took 19-26 ms with 4 KB pages and 3-5 ms after this.
    MADV_COLLAPSE (Linux >= 6.1) converts what is there now (~2 s per GB of CPU in the kernel,
    without the GIL: run it in a worker thread). Not MADV_HUGEPAGE: with it, later page faults
    in the graphs compact memory while holding the mm lock, and the event loop's own mmap()
    waited behind them (1M agents: a 60 ms loop stall during a flush). Returns MB scanned; 0
    where the platform cannot (then fork is just slower).

    The loop stall of a background snapshot is this, not the fork (`benchmarks/snapshot_stall.py
    --no-queries`, 100k agents with 8 views, three runs: 32.5, 55.8, 37.1 ms while collapsing, 8-13 ms
    for fork and write): one 16-page call takes 7-11 ms at the median and up to 375 ms, and the loop
    waits when it touches memory being collapsed (each stall over 10 ms overlapped one call of
    160-200 ms, in mappings of 20-106 MB). Not fixed: collapsing only mappings of 64 MB or more
    (`min_bytes`) stalled 5.8 ms once, but router_scale.py then measured 38.5 ms (fork 20.8 ms); 256 MB
    or more: no stall, fork 33.8 ms. With a routed query every tick, 7.9 and 8.6 ms (4 and 64 MB).
    `on_call(start, end, mapping_bytes)` sees every madvise call (perf_counter times)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as fh:
            lines = fh.read().splitlines()
    except (OSError, AttributeError):
        return 0
    scanned = 0
    for line in lines:
        parts = line.split()
        if len(parts) < 5 or not parts[1].startswith("rw") or parts[1][3] != "p":
            continue
        if len(parts) > 5 and parts[5] != "[heap]":
            continue  # file-backed, stack, vdso
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        lo, hi = (lo + _HUGE - 1) & ~(_HUGE - 1), hi & ~(_HUGE - 1)
        if hi - lo < max(2 * _HUGE, min_bytes):
            continue
        scanned += hi - lo
        for at in range(lo, hi, step):
            # best effort (fails on busy ranges, or before Linux 6.1), in slices with a pause:
            # the event loop's own page faults wait while the kernel rewrites the page tables
            t0 = time.perf_counter()
            madvise(at, min(step, hi - at), _MADV_COLLAPSE)
            if on_call is not None:
                on_call(t0, time.perf_counter(), hi - lo)
            time.sleep(0.001)
    return scanned >> 20


def _rmtree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _kmeans(vecs: np.ndarray, k: int, iters: int = 10, seed: int = 0) -> np.ndarray:
    """Spherical k-means on (a sample of) the first batch: the centroid shard keys."""
    rng = np.random.default_rng(seed)
    sample = vecs if len(vecs) <= 20_000 else vecs[rng.choice(len(vecs), 20_000, replace=False)]
    cent = sample[rng.choice(len(sample), k, replace=len(sample) < k)].copy()
    for _ in range(iters):
        assign = np.argmax(sample @ cent.T, axis=1)
        for j in range(k):
            members = sample[assign == j]
            if len(members):
                c = members.sum(0)
                cent[j] = c / (np.linalg.norm(c) or 1.0)
    return cent.astype(np.float32)
