"""VCV model: round trip, validation errors, version rule, Bloom filter false-positive rate."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest
from pydantic import ValidationError

from fabric.bloom import BLOOM_BITS, BLOOM_HASHES, BloomFilter
from fabric.envelope import MessageError, decode, make
from fabric.registry import Registry
from fabric.vcv import VCV
from tests.fabric_helpers import vcv_for


def test_vcv_round_trip_through_envelope(embedder) -> None:
    vcv = vcv_for(
        embedder,
        "cardio",
        "heart specialist",
        skills=["ECG interpretation", "hypertension"],
        policies=["HIPAA", "clinical"],
    )
    payload = make(vcv, sender="t").to_json()
    back = decode(payload, VCV).body
    assert back == vcv
    assert back.skills == ["ecg interpretation", "hypertension"]
    assert back.policies == ["clinical", "hipaa"]
    assert back.has_skills(["ECG_interpretation"]) and not back.has_skills(["surgery"])
    assert np.allclose(back.capability_array(), vcv.capability_array())
    # vectors travel as base64 float32: two 384-d vectors in ~4 KB, a third of JSON number lists
    as_lists = len(vcv.model_dump_json(round_trip=False)) + 2 * sum(len(repr(x)) + 1 for x in vcv.capability)
    assert len(payload) < 6 * 1024 < as_lists


def test_vcv_accepts_plain_lists(embedder) -> None:
    vcv = vcv_for(embedder, "a", "x")
    data = vcv.model_dump()
    data["capability"] = [float(x) for x in vcv.capability]
    assert VCV.model_validate(data).capability == pytest.approx(vcv.capability)


def test_wrong_dimension_is_refused_by_a_checking_receiver(embedder) -> None:
    vcv = vcv_for(embedder, "a", "x")
    vcv.check_dimension(384)
    with pytest.raises(ValueError, match="dimension 384, expected 256"):
        vcv.check_dimension(256)


def test_non_normalised_capability_is_rejected(embedder) -> None:
    data = vcv_for(embedder, "a", "x").model_dump()
    data["capability"] = [x * 2 for x in data["capability"]]
    with pytest.raises(ValidationError, match="not L2-normalised"):
        VCV.model_validate(data)


def test_bloom_mismatch_and_bad_ids_are_rejected(embedder) -> None:
    data = vcv_for(embedder, "a", "x", skills=["python"]).model_dump()
    data["skills_bloom"] = BloomFilter().to_b64()
    with pytest.raises(ValidationError, match="not in skills_bloom"):
        VCV.model_validate(data)
    data = vcv_for(embedder, "a", "x").model_dump() | {"agent_id": "a/b"}
    with pytest.raises(ValidationError, match="invalid agent_id"):
        VCV.model_validate(data)


def test_wrong_schema_payload_is_a_clear_error() -> None:
    with pytest.raises(MessageError, match="not a valid envelope"):
        decode(b'{"kind": "vcv"}', VCV)
    with pytest.raises(MessageError, match="not a valid envelope"):
        decode(b"\x00\xffnot json", VCV)


def test_version_regress_is_ignored(embedder) -> None:
    reg = Registry()
    v1 = vcv_for(embedder, "a", "first", version=1)
    v3 = vcv_for(embedder, "a", "third", version=3)
    v2 = vcv_for(embedder, "a", "second", version=2)
    assert reg.apply_vcv("a", v1)
    assert reg.apply_vcv("a", v3)
    assert not reg.apply_vcv("a", v2)  # arrived late
    assert not reg.apply_vcv("a", v3)  # same version again
    entry = reg.get("a")
    assert entry is not None and entry.vcv is not None
    assert entry.vcv.version == 3 and entry.vcv.description == "third"
    assert reg.stale_versions == 2
    assert reg.apply_vcv("a", None) and reg.get("a") is None  # left


def test_bumped_increments_version(embedder) -> None:
    v1 = vcv_for(embedder, "a", "x")
    assert v1.bumped(name="renamed").version == v1.version + 1


def test_bloom_false_positive_rate_matches_design() -> None:
    """With 40 skills the theoretical FP rate of m=1024, k=7 is ~0.08%; measure it."""
    rng = random.Random(7)
    word = lambda: "".join(rng.choices(string.ascii_lowercase, k=10))  # noqa: E731 - a one-line generator reads better inline
    n, probes = 40, 50_000
    skills = [word() for _ in range(n)]
    bloom = BloomFilter.of(skills)
    assert all(s in bloom for s in skills)  # no false negatives, ever
    fp = sum(word() in bloom for _ in range(probes)) / probes
    theory = (1 - np.exp(-BLOOM_HASHES * n / BLOOM_BITS)) ** BLOOM_HASHES
    assert fp < 0.005, fp
    assert fp < theory * 4 + 0.0005
    # and the filter is exactly the documented size on the wire
    assert len(bloom.to_bytes()) == BLOOM_BITS // 8
