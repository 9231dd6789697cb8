"""Test helpers for the router tests: real VCVs made with the real embedder."""

from __future__ import annotations

from typing import Any

from fabric.bloom import BloomFilter
from fabric.embeddings import Embedder
from fabric.vcv import VCV, Resources

AGENTS: dict[str, str] = {
    "cardio": "Cardiology assistant: interprets ECGs, heart rhythm and blood pressure readings",
    "derm": "Dermatology helper that describes skin lesions, rashes and moles",
    "tax": "Prepares personal income tax returns and explains deductions",
    "contracts": "Reviews legal contracts, NDAs and lease agreements for risky clauses",
    "sql": "Writes and optimises SQL queries for PostgreSQL databases",
    "python": "Writes, debugs and tests Python code, including pandas data pipelines",
    "translate": "Translates documents between English, French, German and Spanish",
    "weather": "Gives weather forecasts and climate statistics for any city",
    "travel": "Plans trips: flights, hotels, itineraries and visa requirements",
    "recipes": "Suggests cooking recipes from the ingredients you have at home",
    "math": "Solves algebra, calculus and statistics problems step by step",
    "poetry": "Writes poems, song lyrics and short stories on request",
}


def make_vcv(embedder: Embedder, agent_id: str, description: str, *, version: int = 1,
             skills: list[str] | None = None, policies: list[str] | None = None,
             spec: str | None = None, model: str | None = None, **resources: Any) -> VCV:
    skills = skills or []
    cap, spec_vec = embedder.embed([description, spec or description])
    return VCV(
        agent_id=agent_id,
        version=version,
        name=agent_id,
        description=description,
        capability=cap.tolist(),
        skills=skills,
        skills_bloom=BloomFilter.of(skills).to_b64(),
        resources=Resources(**resources),
        policies=policies or [],
        spec_embedding=spec_vec.tolist(),
        embedding_model=model or embedder.model_name,
    )
