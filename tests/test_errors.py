"""One exception root: what FoA raises on purpose is a `FoAError`, and still the builtin type
callers caught before (so `except ValueError` around a spec load keeps working)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.spec import SpecError, load_spec
from fabric.errors import ConfigError, FoAError, ProtocolError
from fabric.llm import LLMError, LLMOutputError, LLMTimeout, LLMUnavailable
from fabric.llm.structured import JSONExtractError, extract_json
from fabric.runtime import NoFederation, broker_url
from fabric.security import KeyFileError, load_private_key
from fabric.settings import Settings
from router.index import IndexError_


@pytest.mark.parametrize(
    ("error", "also"),
    [
        (LLMError, RuntimeError),
        (LLMUnavailable, RuntimeError),
        (LLMTimeout, RuntimeError),
        (LLMOutputError, RuntimeError),
        (JSONExtractError, ValueError),
        (SpecError, ConfigError),
        (KeyFileError, ConfigError),
        (IndexError_, ProtocolError),
        (NoFederation, ConfigError),
    ],
)
def test_every_error_roots_at_foa_error_and_keeps_its_builtin_base(error: type[Exception], also: type) -> None:
    assert issubclass(error, FoAError) and issubclass(error, also)


def test_the_messages_still_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FoAError, match="cannot read agent spec .*missing.yaml"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(FoAError, match="no federation to talk to: start one with `foa up`"):
        broker_url(Settings(data_dir=tmp_path))
    with pytest.raises(FoAError):
        extract_json("no json in here at all")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(FoAError):
        load_private_key(tmp_path / "bad.key")
