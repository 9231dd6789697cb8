"""The capability index: live VCVs in numpy columns plus sharded hnswlib graphs.

Layout (per agent, measured in benchmarks/router_scale.py):
- one row per agent in numpy columns (`AgentTable`): version, liveness, online flag, policy
  bitmask, resources, reputation, int8 spec embedding, 128-byte Bloom filter, exact skill ids.
  No Python object per agent except its id string in `ids` / `rows` (~130 bytes).
- capability vectors live only inside hnswlib (space 'ip' on unit vectors, label = row).
- upserts land in a small brute-forced buffer and reach the graphs in multi-threaded batches
  (`flush`), so a single upsert is visible at once and costs microseconds.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import hnswlib
import numpy as np

from fabric.bloom import BLOOM_BITS, BLOOM_HASHES, BloomFilter
from fabric.errors import ProtocolError
from fabric.vcv import VCV
from router.lexical import LexicalIndex, agent_text

SNAPSHOT_VERSION = 1
FREE = -2  # shard column: row is free
PENDING = -1  # shard column: row's vector is in the upsert buffer
MAX_POLICIES = 64
SPEC_SCALE = 127.0



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
    build_threads: int = 0  # 0 = all cores


class IndexError_(ProtocolError):
    """A VCV the index cannot hold (wrong dimension, too many policy flags, ...)."""


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

    def skills_of(self, row: int) -> np.ndarray:
        s = int(self.skill_start[row])
        return self.skill_pool[s : s + int(self.skill_len[row])]

    def arrays(self, rows: int) -> dict[str, np.ndarray]:
        out = {f"col_{n}": getattr(self, n)[:rows] for n in [*self.COLUMNS, "spec", "bloom"]}
        out["skill_pool"] = self.skill_pool[: self.skill_used]
        return out

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in [*self.COLUMNS, "spec", "bloom", "skill_pool"])


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

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self.table = AgentTable(config.dim)
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
        self.stats = IndexStats()
        # (query bytes, k) -> (rows, sims); emptied whenever a vector enters or leaves search
        self._searches: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}

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
        """Move buffered upserts into the graphs (multi-threaded batch insert)."""
        if self.buf_n == 0:
            return 0
        self._searches.clear()
        live = self.buf_rows[: self.buf_n] >= 0
        rows = self.buf_rows[: self.buf_n][live]
        vecs = self.buf_vecs[: self.buf_n][live]
        targets = self._shard_for(rows, vecs)
        for s in range(self.config.shards):
            sel = targets == s
            if not sel.any():
                continue
            shard = self.shards[s]
            srows = rows[sel]
            need = shard.element_count + int(sel.sum())
            if need > shard.max_elements:
                shard.resize_index(max(need, 2 * shard.max_elements))
            shard.add_items(vecs[sel], srows.astype(np.uint64), num_threads=self.threads)
            self.shard_deleted[s].difference_update(srows.tolist())
        self.table.shard[rows] = targets
        n = int(live.sum())
        self.buf_n = 0
        self.buf_rows[:] = -1
        self.buf_slot.clear()
        return n

    def _buffer(self, row: int, vec: np.ndarray) -> None:
        self._searches.clear()
        slot = self.buf_slot.get(row)
        if slot is None:
            if self.buf_n >= self.config.buffer_size:
                self.flush()
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
        elif s >= 0:
            self.shards[s].mark_deleted(row)
            self.shard_deleted[s].add(row)
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
        t.spec[row] = np.clip(np.rint(vcv.spec_array() * SPEC_SCALE), -127, 127).astype(np.int8)
        t.bloom[row] = np.frombuffer(bloom, dtype=np.uint8)
        t.set_skills(row, self._skill_ids(vcv.skills))
        self.lexical.set_row(row, agent_text(vcv.name, vcv.description, vcv.skills))
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
        filt = None if allowed is None else (lambda label: bool(allowed[label]))
        q = np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1)
        out_rows: list[np.ndarray] = []
        out_sims: list[np.ndarray] = []
        if self.config.scheme == "centroid" and self.centroids is not None and allowed is None:
            probed = np.argsort(-(self.centroids @ q[0]))[: self.config.probe].tolist()
            per_shard = k
        else:
            probed = list(range(self.config.shards))
            # each hash shard holds ~1/S of the global top-k; 2x margin plus a floor keeps recall
            per_shard = k if self.config.shards == 1 else min(k, 2 * k // self.config.shards + 16)
        for s in probed:
            shard = self.shards[s]
            live = shard.element_count - len(self.shard_deleted[s])
            kk = min(per_shard, live)
            if kk <= 0:
                continue
            shard.set_ef(max(self.config.ef_search, kk))
            try:
                labels, dist = shard.knn_query(q, k=kk, num_threads=1, filter=filt)
            except RuntimeError:  # fewer reachable (allowed) elements than kk
                if filt is None:
                    labels, dist = shard.knn_query(q, k=max(1, kk // 2), num_threads=1)
                else:
                    labels, dist = _filtered_all(shard, q, kk, filt)
                    if len(labels[0]) == 0:
                        continue
            out_rows.append(labels[0].astype(np.int64))
            out_sims.append(1.0 - dist[0])
        if self.buf_n:
            live = self.buf_rows[: self.buf_n] >= 0
            if allowed is not None:
                live &= allowed[np.maximum(self.buf_rows[: self.buf_n], 0)]
            sims = self.buf_vecs[: self.buf_n][live] @ q[0]
            rows = self.buf_rows[: self.buf_n][live]
            if len(rows) > k:
                top = np.argpartition(-sims, k)[:k]
                rows, sims = rows[top], sims[top]
            out_rows.append(rows)
            out_sims.append(sims.astype(np.float32))
        if not out_rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(out_rows), np.concatenate(out_sims).astype(np.float32)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Capability vectors of rows (from the graphs or the buffer); for compaction and tests."""
        out = np.zeros((len(rows), self.config.dim), dtype=np.float32)
        shard_of = self.table.shard[rows]
        for i, (row, s) in enumerate(zip(rows.tolist(), shard_of.tolist(), strict=False)):
            if s == PENDING:
                out[i] = self.buf_vecs[self.buf_slot[row]]
        for s in range(self.config.shards):
            sel = np.flatnonzero(shard_of == s)
            if len(sel):
                out[sel] = self.shards[s].get_items(rows[sel].astype(np.uint64), return_type="numpy")
        return out

    # ---- maintenance ----------------------------------------------------------------------

    def compact(self, force: bool = False) -> int:
        """Rebuild shards whose tombstones exceed compact_ratio; returns shards rebuilt."""
        rebuilt = 0
        self._searches.clear()
        for s, shard in enumerate(self.shards):
            dead = len(self.shard_deleted[s])
            if not dead or (not force and dead < self.config.compact_ratio * max(shard.element_count, 1)):
                continue
            rows = np.flatnonzero(self.table.shard[: len(self.ids)] == s)
            vecs = shard.get_items(rows.astype(np.uint64), return_type="numpy") if len(rows) else None
            fresh = self._new_shard(max(1024, int(len(rows) * 1.25)))
            if vecs is not None:
                fresh.add_items(vecs, rows.astype(np.uint64), num_threads=self.threads)
            self.shards[s] = fresh
            self.shard_deleted[s] = set()
            rebuilt += 1
        if self.lexical.garbage_ratio() > 0.5:
            self.lexical.compact(np.flatnonzero(self.table.alive[: len(self.ids)]))
        self.stats.compactions += rebuilt
        return rebuilt

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

    def snapshot(self, path: str | Path) -> Path:
        """Write graphs (hnswlib binary), columns (.npy) and metadata (JSON) into a directory."""
        self.flush()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        n = len(self.ids)
        arrays = self.table.arrays(n) | self.lexical.state(n)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for s, shard in enumerate(self.shards):
            shard.save_index(str(tmp / f"shard_{s}.bin"))
            np.save(tmp / f"shard_{s}_deleted.npy", np.fromiter(self.shard_deleted[s], dtype=np.int64))
        if self.centroids is not None:
            np.save(tmp / "centroids.npy", self.centroids)
        (tmp / "ids.json").write_text(json.dumps(self.ids))
        meta = {
            "snapshot_version": SNAPSHOT_VERSION,
            "config": asdict(self.config),
            "policy_bits": self.policy_bits,
            "policy_refs": self.policy_refs,
            "skill_vocab": list(self.skill_vocab),
            "skill_used": self.table.skill_used,
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

    @classmethod
    def restore(cls, path: str | Path, *, build_threads: int = 0) -> CapabilityIndex:
        """Load a snapshot: graphs with hnswlib.load_index, columns with np.load; no re-insert."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("snapshot_version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot {path} has version {meta.get('snapshot_version')}, expected {SNAPSHOT_VERSION}")
        config = IndexConfig(**meta["config"])
        config.build_threads = build_threads
        index = cls(config)
        ids: list[str | None] = json.loads((path / "ids.json").read_text())
        n = len(ids)
        index.ids = ids
        index.rows = {a: i for i, a in enumerate(ids) if a is not None}
        t = index.table
        t.ensure(max(n, 1))
        for name in [*AgentTable.COLUMNS, "spec", "bloom"]:
            getattr(t, name)[:n] = np.load(path / f"col_{name}.npy")
        t.skill_pool = np.array(np.load(path / "skill_pool.npy"), dtype=np.int32)
        t.skill_used = int(meta["skill_used"])
        lex_arrays = {p.stem: np.load(p) for p in path.glob("lex_*.npy")}
        index.lexical = LexicalIndex.restore(lex_arrays, meta["lexical"], t.capacity)
        for s in range(config.shards):
            shard = hnswlib.Index(space="ip", dim=config.dim)
            shard.load_index(str(path / f"shard_{s}.bin"))
            shard.set_ef(config.ef_search)
            index.shards[s] = shard
            index.shard_deleted[s] = set(np.load(path / f"shard_{s}_deleted.npy").tolist())
        if (path / "centroids.npy").exists():
            index.centroids = np.load(path / "centroids.npy")
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
