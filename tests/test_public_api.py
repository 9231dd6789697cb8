"""`foa` exports exactly the public API: everything in `__all__` imports, nothing private leaks
(in the manner of httpx's tests/test_exported_members.py)."""

from __future__ import annotations

import inspect

import foa


def test_all_lists_exactly_the_public_members() -> None:
    exported = set(foa.__all__)
    assert len(exported) == len(foa.__all__), "duplicates in foa.__all__"
    public = {name for name in dir(foa) if not name.startswith("_") and not inspect.ismodule(getattr(foa, name))} - {
        "annotations"
    }
    assert public == exported, (sorted(public - exported), sorted(exported - public))
    for name in foa.__all__:
        assert not name.startswith("_")
        member = getattr(foa, name)
        module = getattr(member, "__module__", "") or ""
        assert module.split(".")[0] in ("fabric", "agents", "typing", "builtins", "types", ""), (name, module)


def test_the_readme_names_are_exported() -> None:
    for name in (
        "Agent",
        "AgentSpec",
        "AgentHost",
        "Settings",
        "VCV",
        "DecomposeInput",
        "Plan",
        "DraftInput",
        "DraftOutput",
        "RefineInput",
        "RefineOutput",
        "SynthesiseInput",
        "SynthesiseOutput",
        "TaskRequest",
        "Usage",
        "JobResult",
        "Client",
        "submit_and_follow",
        "cancel_job",
        "OpenAICompatBackend",
        "EmbeddedBackend",
        "FoAError",
        "TaskFailed",
        "TaskError",
        "JobFailed",
        "ProtocolError",
        "ConfigError",
        "TransportError",
    ):
        assert name in foa.__all__, name
    assert issubclass(foa.JobFailed, foa.FoAError) and issubclass(foa.TaskError, foa.FoAError)


def test_the_errors_of_every_layer_root_at_foa_error() -> None:
    from agents.server import TaskFailed
    from fabric.client import JobFailed
    from fabric.dispatch import TaskError
    from fabric.envelope import MessageError, decode
    from fabric.errors import ConfigError, FoAError, ProtocolError
    from fabric.orchestrator.budget import BudgetError
    from fabric.orchestrator.engine import NodeFailed

    for cls in (MessageError, TaskError, TaskFailed, NodeFailed, BudgetError, JobFailed):
        assert issubclass(cls, FoAError), cls
    assert issubclass(MessageError, ProtocolError) and issubclass(BudgetError, ConfigError)
    assert issubclass(MessageError, ValueError) and issubclass(BudgetError, ValueError)  # what callers caught before
    try:
        decode(b"{not json")
    except FoAError as exc:
        assert str(exc).startswith("not a valid envelope")
    else:
        raise AssertionError("a malformed payload must raise")


def test_the_readme_agent_example_serves_typed_drafts() -> None:
    """The README's agent, run as written (minus the network): `draft` from its input annotation."""
    import asyncio
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = re.search(r"### An agent in a few lines\n\n```python\n(.*?)```", readme, re.S)
    assert found, "the README's agent example moved: update this test"
    namespace: dict[str, object] = {}
    exec(compile(found.group(1).replace("asyncio.run(agent.run())", ""), "README.md", "exec"), namespace)
    agent = namespace["agent"]
    assert isinstance(agent, foa.Agent) and agent.tasks.kinds == ["draft"]
    task = foa.TaskRequest(task_id="t", task_kind="draft", agent_id="echo", input={"question": "q", "subtask": "hello"})
    result = asyncio.run(agent.tasks.execute(task))
    assert result.ok and result.output == {"answer": "hello", "confidence": 1.0, "exact": False}
