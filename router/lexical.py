"""BM25 over each agent's name, description, skills and the new words of its examples, kept
inside the router.

Why: one description vector misses exact terms a task names ("heron", "bmi", a parameter
name). On BFCL the lexical signal lifts top-1 from 0.66 to 0.76 (benchmarks/bfcl_routing.py).
It re-scores the index's candidates only (it is not a second retrieval path), so it costs
~50 µs per query and no posting lists: per agent the unique token ids and term counts live in
one flat int32/uint8 pool (`start`, `length` per row), document frequencies in one int32
array. Memory is ~5 bytes per distinct token per agent, capped at MAX_TOKENS tokens.

The raw BM25 score is mapped to [0, 1] by s / (s + KAPPA) (saturating, query-independent, so
the calibrated abstention threshold means the same thing for every query).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

K1 = 1.2
B = 0.75
#: BM25 score that maps to lexical 0.5; tuned on BFCL dev splits (3, 5, 10 measured; 10 best)
KAPPA = 10.0
MAX_TOKENS = 64

_STOP = frozenset(
    "a an and are as at be by for from get given if in into is it of on or that the this to which with "
    "what how can do does i me my you your we our please find".split()
)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD = re.compile(r"[a-z0-9]+")


_SUFFIXES = (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""))


@lru_cache(maxsize=200_000)  # a federation's vocabulary is small; stemming 10k descriptions is not
def stem(word: str) -> str:
    """A light suffix stripper (taxes→tax, queries→query, optimises/optimise→optimis)."""
    for suffix, repl in _SUFFIXES:
        if (
            word.endswith(suffix)
            and len(word) - len(suffix) >= 3
            and not word.endswith("ss" if suffix == "s" else "\0")
        ):
            word = word[: -len(suffix)] + repl
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case stemmed words; splits camelCase, snake_case and dotted names; drops stop words."""
    text = _CAMEL.sub(r"\1 \2", text).lower()
    return [stem(w) for w in _WORD.findall(text) if len(w) > 1 and w not in _STOP]


def agent_text(name: str, description: str, skills: Iterable[str], examples: Iterable[str] = ()) -> str:
    """The agent's BM25 document: name, description, skills, then each word of its examples
    (A2A skill examples, a tool's parameters: its views) that those lack, once.

    Once, not every time: templated tool views repeat the tool's name and description in each
    view, and counting those again would only lengthen the document. Last, so MAX_TOKENS cuts
    them first. `benchmarks/bfcl_routing.py --json` (functions with the MCP gateway's views; the
    earlier form in the same run): top-1 / top-5 dev 0.774 / 0.961 → 0.789 / 0.968, held-out live
    0.706 / 0.837 → 0.729 / 0.871. On the federations of the answerable questions only, appending
    the views whole gave dev 0.814 / 0.976 and live 0.734 / 0.889, these new words once 0.819 /
    0.975 and 0.739 / 0.891. W and κ re-tuned on dev after it: 0.9 / 40 best (0.805), live 0.730,
    so 0.7 / 10 stay."""
    base = " ".join([name.replace(".", " "), description, " ".join(skills)])
    seen = set(tokenize(base))
    extra = []
    for word in _WORD.findall(_CAMEL.sub(r"\1 \2", " ".join(examples)).lower()):
        token = tokenize(word)
        if token and token[0] not in seen:
            seen.add(token[0])
            extra.append(word)
    return " ".join([base, *extra])


def saturate(raw: np.ndarray) -> np.ndarray:
    """Raw BM25 to [0, 1): s / (s + KAPPA)."""
    return np.asarray(raw / (raw + KAPPA), dtype=np.float32)


def _flat(starts: np.ndarray, lens: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """Pool positions of the concatenated ranges [starts[i], starts[i] + lens[i])."""
    if owner is None:
        owner = np.repeat(np.arange(len(lens)), lens)
    flat: np.ndarray = starts[owner] + (np.arange(len(owner)) - np.repeat(np.cumsum(lens) - lens, lens))
    return flat


@dataclass
class CompactionPlan:
    rows: np.ndarray
    starts: np.ndarray
    lens: np.ndarray
    pool_ids: np.ndarray
    pool_tf: np.ndarray


@dataclass
class LexicalQuery:
    ids: np.ndarray  # int32 token ids present in the vocabulary
    idf: np.ndarray  # float32, same length
    weight: np.ndarray | None = None  # float32 idf per token id of the vocabulary (0 = not in the query)


class LexicalIndex:
    """Per-row bag of token ids with BM25 statistics; rows are the capability index's rows."""

    def __init__(self, capacity: int = 1024) -> None:
        self.vocab: dict[str, int] = {}
        self.df = np.zeros(1024, dtype=np.int32)
        self.start = np.zeros(capacity, dtype=np.int64)
        self.length = np.zeros(capacity, dtype=np.int16)  # unique tokens of the row
        self.doclen = np.zeros(capacity, dtype=np.float32)  # tokens incl. repeats
        self.pool_ids = np.zeros(capacity * 8, dtype=np.int32)
        self.pool_tf = np.zeros(capacity * 8, dtype=np.uint8)
        self.pool_used = 0
        self.docs = 0
        self.total_len = 0.0
        self._touched: set[int] | None = None  # rows (re)set or cleared while a compaction builds
        self.tokens: list[str] = []  # by id: learned words are checked against a row's tokens

    # ---- maintenance ----------------------------------------------------------------------

    def ensure_rows(self, capacity: int) -> None:
        if capacity > len(self.start):
            grow = max(capacity, 2 * len(self.start))
            for name in ("start", "length", "doclen"):
                old = getattr(self, name)
                new = np.zeros(grow, dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)

    def token_id(self, token: str) -> int:
        tid = self.vocab.get(token)
        if tid is None:
            tid = len(self.vocab)
            self.vocab[token] = tid
            self.tokens.append(token)
            if tid >= len(self.df):
                df = np.zeros(2 * len(self.df), dtype=np.int32)
                df[: len(self.df)] = self.df
                self.df = df
        return tid

    def set_row(self, row: int, text: str) -> None:
        """(Re)index a row; call clear_row first if it held another document."""
        counts = Counter(tokenize(text))
        items = counts.most_common(MAX_TOKENS) if len(counts) > MAX_TOKENS else list(counts.items())
        n = len(items)
        if self.pool_used + n > len(self.pool_ids):
            grow = max(self.pool_used + n, 2 * len(self.pool_ids))
            for name in ("pool_ids", "pool_tf"):
                old = getattr(self, name)
                new = np.zeros(grow, dtype=old.dtype)
                new[: self.pool_used] = old[: self.pool_used]
                setattr(self, name, new)
        ids = [self.token_id(t) for t, _ in items]
        s = self.pool_used
        self.pool_ids[s : s + n] = ids
        self.pool_tf[s : s + n] = [min(c, 255) for _, c in items]
        self.pool_used += n
        self.start[row] = s
        self.length[row] = n
        if self._touched is not None:
            self._touched.add(row)
        dl = float(sum(c for _, c in items))
        self.doclen[row] = dl
        self.df[ids] += 1  # ids are unique within a row
        self.docs += 1
        self.total_len += dl

    def row_tokens(self, row: int) -> set[str]:
        """The row's tokens, as stored."""
        s, n = int(self.start[row]), int(self.length[row])
        return {self.tokens[i] for i in self.pool_ids[s : s + n].tolist()}

    def clear_row(self, row: int) -> None:
        n = int(self.length[row])
        if n == 0 and self.doclen[row] == 0:
            return
        s = int(self.start[row])
        self.df[self.pool_ids[s : s + n]] -= 1
        if self._touched is not None:
            self._touched.add(row)
        self.docs -= 1
        self.total_len -= float(self.doclen[row])
        self.length[row] = 0
        self.doclen[row] = 0.0

    def garbage_ratio(self) -> float:
        live = int(self.length.sum())
        return 1.0 - live / self.pool_used if self.pool_used else 0.0

    def compact(self, rows: np.ndarray) -> None:
        """Rewrite the pool keeping only `rows` (the live ones): cleared rows leave holes."""
        plan = self.begin_compact(rows)
        self.finish_compact(plan, self.build_compact(plan))

    def begin_compact(self, rows: np.ndarray) -> CompactionPlan:
        """Owner thread: what a rebuild of the pool starts from; rows changed from now on are replayed."""
        if self._touched is not None:
            raise RuntimeError("one lexical compaction at a time")
        self._touched = set()
        return CompactionPlan(rows.copy(), self.start[rows].astype(np.int64), self.length[rows].astype(np.int64),
                              self.pool_ids, self.pool_tf)

    def cancel_compact(self) -> None:
        self._touched = None

    @staticmethod
    def build_compact(plan: CompactionPlan, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Any thread: the plan's rows packed into a new pool, in chunks that each hold the GIL for
        ~1 ms (numpy's gathers keep it), so the event loop runs between them. The old pool arrays
        are only read: set_row appends past the plan's ranges, or to a grown copy."""
        total = int(plan.lens.sum())
        ids = np.empty(max(total, 1), dtype=np.int32)
        tfs = np.empty(max(total, 1), dtype=np.uint8)
        new_start = np.cumsum(plan.lens) - plan.lens
        for i in range(0, len(plan.rows), chunk):
            lens = plan.lens[i : i + chunk]
            flat = _flat(plan.starts[i : i + chunk], lens)
            at = int(new_start[i]) if len(lens) else 0
            ids[at : at + len(flat)] = plan.pool_ids[flat]
            tfs[at : at + len(flat)] = plan.pool_tf[flat]
            time.sleep(0)
        return ids, tfs

    def finish_compact(self, plan: CompactionPlan, built: tuple[np.ndarray, np.ndarray]) -> None:
        """Owner thread: swap the packed pool in; rows changed meanwhile are copied from the live pool."""
        ids, tfs = built
        touched = self._touched or set()
        self._touched = None
        used = int(plan.lens.sum())
        changed = np.zeros(len(self.start), dtype=bool)  # a mask, not np.isin: no sort of a million rows
        changed[np.fromiter(touched, dtype=np.int64)] = True
        keep = ~changed[plan.rows]
        self.start[plan.rows[keep]] = (np.cumsum(plan.lens) - plan.lens)[keep]
        extra = sorted(touched)
        lens = self.length[extra].astype(np.int64)
        need = used + int(lens.sum())
        if need > len(ids):
            ids, tfs = np.resize(ids, need), np.resize(tfs, need)
        flat = _flat(self.start[extra].astype(np.int64), lens)
        ids[used:need] = self.pool_ids[flat]
        tfs[used:need] = self.pool_tf[flat]
        self.start[extra] = used + np.cumsum(lens) - lens
        self.pool_ids, self.pool_tf, self.pool_used = ids, tfs, need

    # ---- query ----------------------------------------------------------------------------

    def query(self, text: str) -> LexicalQuery:
        ids = sorted({self.vocab[t] for t in tokenize(text) if t in self.vocab})
        arr = np.asarray(ids, dtype=np.int32)
        n = max(self.docs, 1)
        df = self.df[arr].astype(np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        # a dense idf by token id: one gather per candidate token instead of a binary search
        # (~10 µs to build for a 25k-token vocabulary; scores() drops from ~160 to ~100 µs)
        weight = np.zeros(len(self.df), dtype=np.float32)
        weight[arr] = idf
        return LexicalQuery(arr, idf, weight)

    def extra_scores(self, q: LexicalQuery, rows: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Raw BM25 that words outside the rows' documents would add, each counted once at the row's
        own length (`words`: token ids per row, -1 = none; router/learning.py's learned words)."""
        out = np.zeros(len(rows), dtype=np.float32)
        if len(q.ids) == 0 or len(rows) == 0 or q.weight is None:
            return out
        known = (words >= 0) & (words < len(q.weight))  # a word newer than the query is not in it
        idf = np.where(known, q.weight[np.where(known, words, 0)], 0.0).sum(axis=1)
        return np.asarray(self._bm25(idf, np.float32(1.0), self.doclen[rows]), dtype=np.float32)

    def _bm25(self, idf: np.ndarray, tf: np.ndarray | np.float32, dl: np.ndarray) -> np.ndarray:
        """One term's BM25 in a document of length dl."""
        avgdl = self.total_len / max(self.docs, 1) or 1.0
        return np.asarray(idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avgdl)))

    def raw_scores(self, q: LexicalQuery, rows: np.ndarray) -> np.ndarray:
        """BM25 of each row for the query, before saturation."""
        out = np.zeros(len(rows), dtype=np.float32)
        if len(q.ids) == 0 or len(rows) == 0:
            return out
        lens = self.length[rows].astype(np.int64)
        total = int(lens.sum())
        if total == 0:
            return out
        owner = np.repeat(np.arange(len(rows)), lens)
        flat = _flat(self.start[rows], lens, owner)
        tok = self.pool_ids[flat]
        if q.weight is not None and len(q.weight) == len(self.df):
            w = q.weight[tok]
            hit = w > 0  # idf = log1p(positive) > 0 for every query token
            idf = w[hit]
        else:  # a query made before the vocabulary grew
            pos = np.searchsorted(q.ids, tok)
            pos[pos >= len(q.ids)] = 0
            hit = q.ids[pos] == tok
            idf = q.idf[pos[hit]]
        if not hit.any():
            return out
        tf = self.pool_tf[flat[hit]].astype(np.float32)
        contrib = self._bm25(idf, tf, self.doclen[rows][owner[hit]])
        return np.bincount(owner[hit], weights=contrib, minlength=len(rows)).astype(np.float32)

    # ---- snapshot -------------------------------------------------------------------------

    def state(self, rows: int) -> dict[str, np.ndarray]:
        return {
            "lex_start": self.start[:rows],
            "lex_length": self.length[:rows],
            "lex_doclen": self.doclen[:rows],
            "lex_pool_ids": self.pool_ids[: self.pool_used],
            "lex_pool_tf": self.pool_tf[: self.pool_used],
            "lex_df": self.df[: len(self.vocab)],
        }

    def meta(self) -> dict[str, object]:
        return {"vocab": list(self.vocab), "docs": self.docs, "total_len": self.total_len}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], meta: dict[str, object], capacity: int) -> LexicalIndex:
        lex = cls(capacity)
        rows = len(arrays["lex_start"])
        lex.start[:rows] = arrays["lex_start"]
        lex.length[:rows] = arrays["lex_length"]
        lex.doclen[:rows] = arrays["lex_doclen"]
        lex.pool_ids = np.array(arrays["lex_pool_ids"], dtype=np.int32)
        lex.pool_tf = np.array(arrays["lex_pool_tf"], dtype=np.uint8)
        lex.pool_used = len(lex.pool_ids)
        vocab: list[str] = list(meta["vocab"])  # type: ignore[call-overload]  # meta is the JSON we wrote
        lex.vocab = {t: i for i, t in enumerate(vocab)}
        lex.tokens = vocab
        lex.df = np.zeros(max(1024, 2 * len(vocab)), dtype=np.int32)
        lex.df[: len(vocab)] = arrays["lex_df"]
        lex.docs = int(meta["docs"])  # type: ignore[call-overload]  # meta is the JSON we wrote
        lex.total_len = float(meta["total_len"])  # type: ignore[arg-type]  # meta is the JSON we wrote
        return lex
