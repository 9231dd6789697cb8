"""docs/architecture.md against the code it describes: topics, α's constants, no outside citations.

The README's α had drifted from router/scoring.py (no lexical factor, "every factor in [0, 1]");
these checks fail when the code changes and the page does not.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fabric import topics
from router import lexical, scoring

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
README = (ROOT / "README.md").read_text()
NOT_TOPICS = {"agent_prefix", "shared", "agent_id_of", "validate_id"}


def section(title: str) -> str:
    """One `## N. title` section of the architecture page."""
    match = re.search(rf"^## \d+\. {re.escape(title)}\n(.*?)(?=^## |\Z)", ARCHITECTURE, re.S | re.M)
    assert match, f"docs/architecture.md has no section {title!r}"
    return match.group(1)


def test_every_topic_of_topics_py_is_in_the_topics_table() -> None:
    table = section("Topics")
    builders = [
        fn for name, fn in inspect.getmembers(topics, inspect.isfunction)
        if fn.__module__ == topics.__name__ and name not in NOT_TOPICS
    ]  # fmt: skip
    assert len(builders) >= 8
    for fn in builders:
        params = list(inspect.signature(fn).parameters)
        topic = fn(*(f"{{{p}}}" for p in params))
        assert f"`{topic}`" in table, f"{fn.__name__} → {topic} is not in docs/architecture.md §2"
    for constant in (topics.JOBS_SUBMIT, topics.ROUTER_QUERY, topics.POLICY_ENFORCEMENT):
        assert f"`{constant}`" in table
    for group in (topics.SHARE_GROUP_AGENT, topics.SHARE_GROUP_ROUTER, topics.SHARE_GROUP_ORCHESTRATOR):
        assert f"$share/{group}/" in table


def test_alpha_is_stated_as_scoring_py_computes_it() -> None:
    alpha = section("Routing: α")
    for factor in ("sim", "lexical", "f", "g", "reputation"):  # f: "resources", g: "spec" in the factors
        assert f"\n| {factor} |" in alpha
    for gate in scoring.GATES:
        assert f"1[{gate}]" in alpha
    low, high = scoring.REPUTATION_BASE, scoring.REPUTATION_MAX
    assert f"[{low:g}, {high:g}]" in alpha and f"{low:g} + {scoring.REPUTATION_SPAN:g} · score" in alpha
    assert f"W = {scoring.LEXICAL_WEIGHT:g}" in alpha and f"κ = {lexical.KAPPA:g}" in alpha
    assert f"[{1 - scoring.LEXICAL_WEIGHT:.1f}, 1]" in alpha  # the lexical factor's range
    assert f"α ≤ {high:g}" in alpha
    assert f"[{low:g}, {high:g}]" in README and "lexical" in README
    assert "each factor in [0, 1]" not in README


def test_no_docstring_cites_a_document_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("fabric", "router", "agents", "benchmarks", "tests")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"DESIGN(\.md)? ?§", line)
    ]
    assert cited == []
