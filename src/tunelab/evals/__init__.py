"""Evaluation: datasets × prompts × providers, scored by metrics and LLM judges,
recorded in a SQLite store. The Python API mirrors the YAML config."""

from tunelab.evals.errors import EvalError
from tunelab.evals.store import ResultRow, RunInfo, Store

__all__ = ["EvalError", "ResultRow", "RunInfo", "Store"]
