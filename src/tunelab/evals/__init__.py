"""Evaluation: datasets × prompts × providers, scored by metrics and LLM judges,
recorded in a SQLite store. The Python API mirrors the YAML config key for key:

    from tunelab.evals import EvalConfig, PromptConfig, ProviderConfig, MetricConfig, run_eval
    cfg = EvalConfig(dataset="data.jsonl", prompts=[PromptConfig(id="zs", template="...")],
                     providers=[ProviderConfig(id="small", base_url="http://127.0.0.1:8000/v1", model="m")],
                     metrics=[MetricConfig("exact_match")])
    stats = run_eval(cfg, "tunelab.db")
"""

from tunelab.evals.config import (EvalConfig, JudgeConfig, MetricConfig, Price, PromptConfig, ProviderConfig,
                                  RetryConfig, load_config)
from tunelab.evals.errors import EvalError
from tunelab.evals.runner import RunStats, run_eval
from tunelab.evals.store import SCHEMA_VERSION, ResultRow, RunInfo, Store

__all__ = ["EvalConfig", "EvalError", "JudgeConfig", "MetricConfig", "Price", "PromptConfig", "ProviderConfig",
           "ResultRow", "RetryConfig", "RunInfo", "RunStats", "SCHEMA_VERSION", "Store", "load_config", "run_eval"]
