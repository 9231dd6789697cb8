"""Shared fixtures: a real mosquitto per module, an in-process MemoryBroker per test, settings
pointing at either, the real embedder.

Tests of logic (SDK, router service, orchestrator) use `memory_settings`: no broker process, the
semantics `tests/test_transport_contract.py` holds both brokers to. Tests where processes or a
real broker are the point (subprocesses, restarts, chaos) use `settings` (mosquitto)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fabric.embeddings import Embedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fabric.broker import EmbeddedBroker, LocalBroker, Mosquitto  # noqa: E402 - imported after the environment defaults above
from fabric.settings import Settings  # noqa: E402 - imported after the environment defaults above
from fabric.transports.memory import MemoryBroker  # noqa: E402 - imported after the environment defaults above
from fabric.transports.paho import install_paho_speedups  # noqa: E402 - imported after the environment defaults above

install_paho_speedups()  # as every service does at start: the tests run the paho the services run


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """The reference broker, started by the test setup (nothing else starts it). One per test
    module, so one module's retained VCVs never show up in another's registry."""
    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto"), die_with_parent=True)  # a killed run leaves none
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def embedded_broker() -> Iterator[LocalBroker]:
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "embedded"])
def any_broker(request: pytest.FixtureRequest) -> LocalBroker:
    """Run a test against both broker processes the fabric supports."""
    broker: LocalBroker = request.getfixturevalue("mosquitto" if request.param == "mosquitto" else "embedded_broker")
    return broker


def make_settings(url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"keepalive_s": 2, "request_timeout_s": 5.0} | overrides
    return Settings(broker_url=url, data_dir=data_dir, **values)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "in_memory: `settings` points at an in-process MemoryBroker (a test of logic, no broker process)"
    )


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on this module's mosquitto, or on a MemoryBroker for tests marked `in_memory`."""
    if request.node.get_closest_marker("in_memory") is not None:
        memory: Settings = request.getfixturevalue("memory_settings")
        return memory
    return make_settings(request.getfixturevalue("mosquitto").url, tmp_path)


@pytest.fixture
def memory_broker() -> Iterator[MemoryBroker]:
    """An in-process broker for one test, registered as memory://<unique name> while it runs."""
    with MemoryBroker(f"test-{uuid.uuid4().hex[:8]}") as broker:
        yield broker


@pytest.fixture
def memory_settings(memory_broker: MemoryBroker, tmp_path: Path) -> Settings:
    """`settings` on the in-process broker: for tests of logic, not of processes."""
    return make_settings(memory_broker.url, tmp_path)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    from fabric.embeddings import shared_embedder

    return shared_embedder()
