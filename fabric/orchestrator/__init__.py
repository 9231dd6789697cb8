"""The orchestrator (A-0): job in → DAG → assignments → drafts → channels → answer out.

Read `engine.py` top to bottom for the data path; each phase lives in its own module.
"""
