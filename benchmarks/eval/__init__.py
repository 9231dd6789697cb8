"""Shared evaluation code for the benchmarks: data loading, grading, statistics, DAG metrics,
systems under test and the Markdown/PNG report writer. Each module has one job and no global
state, so the harnesses (`benchmarks/healthbench.py`, `benchmarks/nestful_dag.py`) and the unit
tests compose them explicitly."""
