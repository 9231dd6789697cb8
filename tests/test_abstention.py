"""Calibrated abstention (router/abstention.py): the model itself, the engine with and without it,
and the shipped agents (agents/specs) with the real embedder, in the engine, in the router
service on the bus (self-calibration), and through `foa route --calibrate --save` against a real
mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agents.sdk import build_vcv
from agents.spec import default_specs_dir, load_specs
from fabric import topics
from fabric.bus import Bus
from fabric.embeddings import Embedder
from fabric.messages import RouteQuery
from fabric.settings import Settings
from router.abstention import (
    FEATURES,
    OF_ALPHA,
    AbstentionModel,
    Top,
    UnknownFeature,
    cut_for_false_accept,
    fit,
    register_feature,
)
from router.calibration import OFF_TOPIC, calibrate, relevant_probes
from router.client import RouterClient
from router.engine import RouterEngine
from router.index import CapabilityIndex, IndexConfig
from router.service import RouterService, calibration_path, fit_probes, top_candidates, top_scores

pytestmark = pytest.mark.timeout(180)

IN_SCOPE = "Calculate 1234 * 5678"  # refused by the raw threshold: the mathematician's α is ~0.04
OFF = ["Recommend a good movie for tonight", "Write a haiku about the sea.", "What is the capital of France?"]


def synthetic(n: int, seed: int, relevant: bool) -> list[Top]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        top = float(rng.uniform(0.05, 0.4) if relevant else rng.uniform(0.0, 0.12))
        second = top * float(rng.uniform(0.2, 0.7) if relevant else rng.uniform(0.8, 1.0))
        out.append(Top((top, second), {"sim": top * 2, "lexical": 0.3 + (0.4 if relevant else 0.1) * rng.random()}))
    return out


def test_model_fits_serialises_and_meets_the_false_accept_target() -> None:
    rel, irr = synthetic(200, 1, True), synthetic(200, 2, False)
    model = fit(rel, irr, target_false_accept=0.05, provenance={"source": "synthetic"})
    accepted_neg = np.mean([not model.abstains(t) for t in irr])
    assert accepted_neg <= 0.05
    assert model.provenance["source"] == "synthetic" and model.provenance["irrelevant"] == 200
    again = AbstentionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    for t in rel[:20] + irr[:20]:
        assert again.p_relevant(t) == pytest.approx(model.p_relevant(t))
        # the per-query α threshold is where the decision flips: below it abstain, at/above accept
        flip = model.alpha_flip(t)
        assert model.abstains(t.with_top(flip * 0.98)) or flip == 0.0
        assert not model.abstains(t.with_top(min(flip * 1.02 + 1e-6, 1.5)))
    assert 0.0 < model.alpha_threshold < 0.4
    assert model.abstains(Top(()))


def test_false_accept_cut_and_feature_hook() -> None:
    p_irr = np.array([0.1, 0.2, 0.3, 0.9])
    p_rel = np.array([0.5, 0.95])
    assert cut_for_false_accept(p_rel, p_irr, 0.0) == pytest.approx(0.925)  # refuses even the 0.9 negative
    assert cut_for_false_accept(p_rel, p_irr, 0.25) == pytest.approx(0.4)  # one of four may pass
    register_feature("test_spec_x2", lambda t: 2 * float(t.factors.get("spec", 1.0)))
    try:
        model = fit(synthetic(50, 3, True), synthetic(50, 4, False), features=("log_top", "test_spec_x2"))
        assert model.features == ("log_top", "test_spec_x2")
    finally:
        FEATURES.pop("test_spec_x2")
    with pytest.raises(UnknownFeature):
        AbstentionModel.from_dict(model.to_dict())
    # a feature that moves with the best α says how (of_alpha), so alpha_flip stays exact
    register_feature("test_sqrt_top", lambda t: t.alphas[0] ** 0.5 if t.alphas else 0.0, of_alpha=lambda a, s: a**0.5)
    try:
        model = fit(synthetic(80, 5, True), synthetic(80, 6, False), features=("test_sqrt_top", "rel_gap", "sim"))
        for t in synthetic(10, 7, True) + synthetic(10, 8, False):
            flip = model.alpha_flip(t)
            if 0.0 < flip < 1.5:
                assert not model.abstains(t.with_top(flip)) and model.abstains(t.with_top(flip - 1e-5))
    finally:
        FEATURES.pop("test_sqrt_top")
        OF_ALPHA.pop("test_sqrt_top")


@pytest.fixture(scope="module")
def shipped(embedder: Embedder) -> tuple[RouterEngine, list[str]]:
    """The shipped agents (agents/specs, with the mathematician) in a real index."""
    index = CapabilityIndex(IndexConfig(dim=embedder.dim, embedding_model=embedder.model_name))
    specs = load_specs(default_specs_dir())
    assert "mathematician" in {s.id for s in specs}
    for spec in specs:
        assert index.upsert(build_vcv(spec, embedder)).accepted
    index.flush()
    return RouterEngine(index), [s.description for s in specs]


def probes(embedder: Embedder, descriptions: list[str], n_agents: int) -> tuple[list[str], list[str]]:
    return relevant_probes(descriptions, seed=n_agents), list(OFF_TOPIC)


def test_engine_without_a_model_is_unchanged_and_the_model_accepts_the_mathematician(
    shipped: tuple[RouterEngine, list[str]], embedder: Embedder, tmp_path: Path
) -> None:
    engine, descriptions = shipped
    rel, irr = probes(embedder, descriptions, len(engine.index))
    texts = rel + irr
    vecs = embedder.embed(texts)
    # today: one raw cut on the best α (max F1 on the probes)
    tops = top_scores(engine, texts, vecs)
    cut = calibrate(tops[: len(rel)], tops[len(rel):]).threshold
    engine.set_threshold(cut, source="test")
    assert engine.model is None
    ask = [IN_SCOPE, *OFF]
    qvecs = embedder.embed(ask)
    before = [engine.route(RouteQuery(text=t, top_k=3), v).response for t, v in zip(ask, qvecs, strict=True)]
    for res in before:
        assert res.threshold == cut
        plain = engine.route(RouteQuery(text="x", top_k=3, abstain=False), qvecs[0]).response
        assert plain.threshold == cut
    assert before[0].abstained, "today's raw threshold refuses the arithmetic task (the issue's report)"
    # the calibrated model, fitted on the same probes
    cands = top_candidates(engine, texts, vecs)
    model = fit_probes(cands[: len(rel)], cands[len(rel):], agents=len(engine.index))
    engine.set_model(model, source="test")
    assert engine.threshold == model.alpha_threshold
    after = [engine.route(RouteQuery(text=t, top_k=3), v).response for t, v in zip(ask, qvecs, strict=True)]
    assert not after[0].abstained and after[0].matches[0].agent_id == "mathematician"
    assert after[0].threshold is not None
    assert after[0].matches[0].score >= after[0].threshold  # the α threshold stays "accept at or above"
    for text, res in zip(OFF, after[1:], strict=True):
        assert res.abstained and res.matches == [], text
        best = engine.route(RouteQuery(text=text, top_k=1, abstain=False), embedder.embed([text])[0]).response
        assert res.threshold is not None and best.matches[0].score < res.threshold
    # the model travels with the index snapshot
    engine.index.snapshot(tmp_path / "snap")
    restored = RouterEngine(CapabilityIndex.restore(tmp_path / "snap"))
    assert restored.model is not None and restored.model.to_dict() == model.to_dict()
    assert not restored.route(RouteQuery(text=IN_SCOPE, top_k=1), qvecs[0]).response.abstained
    # a raw threshold replaces the model (older calibration files)
    engine.set_threshold(cut, source="test")
    assert engine.model is None and engine.route(RouteQuery(text=IN_SCOPE, top_k=1), qvecs[0]).response.abstained


async def publish_shipped(bus: Bus, embedder: Embedder, prefix: str) -> list[str]:
    ids = []
    for spec in load_specs(default_specs_dir()):
        vcv = build_vcv(spec, embedder).model_copy(update={"agent_id": f"{prefix}{spec.id}"})
        await bus.publish(topics.agent_vcv(vcv.agent_id), vcv, retain=True)
        ids.append(vcv.agent_id)
    return ids


async def eventually(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_service_self_calibrates_the_model_and_reports_its_provenance(
    memory_settings: Settings, embedder: Embedder
) -> None:
    async def main() -> None:
        async with (
            Bus(memory_settings, "abst-agents", persistent=False) as agents,
            Bus(memory_settings, "abst-router", persistent=False) as rbus,
            Bus(memory_settings, "abst-client", persistent=False) as cbus,
        ):
            service = RouterService(memory_settings, rbus, embedder, settle_s=0.2)
            await service.start()
            try:
                ids = await publish_shipped(agents, embedder, "")
                await eventually(lambda: service.engine.model is not None)
                status = service.status()
                assert status["agents"] == len(ids) and status["abstention"]["kind"] == "model"
                prov = status["abstention"]["provenance"]
                assert prov["source"] == "self" and prov["agents"] == len(ids) and prov["irrelevant"] == len(OFF_TOPIC)
                assert "date" in prov and "target_false_accept" in prov
                client = RouterClient(cbus, timeout=10.0)
                res = await client.route(RouteQuery(text=IN_SCOPE, top_k=2))
                assert not res.abstained and res.matches[0].agent_id == "mathematician"
                for text in OFF:
                    assert (await client.route(RouteQuery(text=text, top_k=2))).abstained, text
            finally:
                await service.stop()

    asyncio.run(main())


def test_cli_calibrate_save_then_router_loads_the_model(settings: Settings, embedder: Embedder) -> None:
    """`foa route --calibrate --save` against a real mosquitto: the file holds the model and its
    provenance, and a router started afterwards loads it (not self-calibrated)."""

    async def main() -> None:
        async with (
            Bus(settings, "abst-agents2", persistent=False) as agents,
            Bus(settings, "abst-router2", persistent=False) as rbus,
        ):
            service = RouterService(settings, rbus, embedder, settle_s=0.2, auto_calibrate=False)
            await service.start()
            ids = await publish_shipped(agents, embedder, "cal-")
            try:
                await eventually(lambda: len(service.index) >= len(ids))
                env = {**os.environ, "FOA_BROKER_URL": settings.broker_url or "",
                       "FOA_DATA_DIR": str(settings.data_dir)}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "fabric.cli", "route", "--calibrate", "--save", "--json", env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                data = json.loads(out)
                assert data["saved"] == str(calibration_path(settings)) and data["agents"] >= len(ids)
            finally:
                await service.stop()
            saved = json.loads(calibration_path(settings).read_text())
            assert saved["model"]["features"] and saved["info"]["irrelevant"] == len(OFF_TOPIC)
        async with (
            Bus(settings, "abst-agents3", persistent=False) as agents,
            Bus(settings, "abst-router3", persistent=False) as rbus,
        ):
            fresh = RouterService(settings, rbus, embedder, settle_s=0.2, auto_calibrate=False)
            await fresh.start()
            try:
                await eventually(lambda: len(fresh.index) >= len(ids))
                status = fresh.status()["abstention"]
                assert status["kind"] == "model"
                assert status["provenance"]["source"] == str(calibration_path(settings))
                vec = embedder.embed([IN_SCOPE])[0]
                assert not fresh.engine.route(RouteQuery(text=IN_SCOPE, top_k=1), vec).response.abstained
            finally:
                await fresh.stop()
                for agent_id in ids:
                    await agents.publish(topics.agent_vcv(agent_id), None, retain=True)

    asyncio.run(main())
