"""Shared fixtures: a real mosquitto for the session, settings pointing at it, the real embedder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fabric.broker import EmbeddedBroker, Mosquitto  # noqa: E402
from fabric.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """The reference broker, started by the test setup (nothing else starts it). One per test
    module, so one module's retained VCVs never show up in another's registry."""
    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "embedded"])
def any_broker(request: pytest.FixtureRequest) -> Mosquitto | EmbeddedBroker:
    """Run a test against both brokers the fabric supports."""
    return request.getfixturevalue("mosquitto" if request.param == "mosquitto" else "embedded_broker")


def make_settings(url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"keepalive_s": 2, "request_timeout_s": 5.0} | overrides
    return Settings(broker_url=url, data_dir=data_dir, **values)


@pytest.fixture
def settings(mosquitto: Mosquitto, tmp_path: Path) -> Settings:
    return make_settings(mosquitto.url, tmp_path)


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from fabric.embeddings import shared_embedder

    return shared_embedder()
