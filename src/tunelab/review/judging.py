"""LLM judges on imported items, so the agreement report can set a G-Eval judge
(probability-weighted, evaluation steps) beside the plain rubric judge (reasoning,
then 'Score: N') on the same model, per human dimension. Both are cached in the
eval store's result cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from tunelab.review.imported import ImportedItem

# Criteria and steps for the dimensions of the shipped Topical-Chat set (after G-Eval's dialogue
# prompts, in our words); any other dimension gets a generic criterion naming it.
CRITERIA = {
    "naturalness": ("Naturalness: is the response what a person would naturally say in this conversation?",
                    ["Read the conversation and the response.", "Judge whether a person could have said it.",
                     "Give the score."]),
    "coherence": ("Coherence: does the response follow from the conversation and keep its context?",
                  ["Read the conversation.", "Check that the response continues it sensibly.", "Give the score."]),
    "engagingness": ("Engagingness: is the response dull or interesting?",
                     ["Read the response.", "Judge whether it adds something interesting.", "Give the score."]),
    "groundedness": ("Groundedness: does the response use the given fact?",
                     ["Read the fact and the response.", "Check whether the response uses the fact.",
                      "Give the score."]),
}


def judge_vectors(items: list[ImportedItem], dimensions: dict[str, tuple[int, int]], base_url: str, model: str,
                  *, api_key: str = "EMPTY", db: str | Path | None = None) -> tuple[dict, dict]:
    """{("geval", dim) | ("rubric_judge", dim): per-item scores} and notes saying how G-Eval scored."""
    from tunelab.evals.geval import GEvalConfig, methods_used, score_all

    store = _store(db)
    vectors, notes = {}, {}
    rows = [(_question(it), it.output, it.references) for it in items]
    for dim, scale in dimensions.items():
        criteria, steps = CRITERIA.get(dim, (f"{dim.capitalize()}: how good is the response in terms of {dim}?",
                                             ["Read the input and the response.", f"Judge its {dim}.",
                                              "Give the score."]))
        cfg = GEvalConfig(id=f"geval-{dim}", base_url=base_url, model=model, criteria=criteria, steps=steps,
                          scale=scale, task="a conversation and a response for its next turn", api_key=api_key)
        got = score_all(cfg, rows, store)
        vectors[("geval", dim)] = np.array([np.nan if v.score is None else v.score for v in got])
        notes.setdefault("geval", {"method": {}})["method"][dim] = methods_used(got)
        vectors[("rubric_judge", dim)] = _rubric(rows, criteria, scale, base_url, model, api_key, store)
    if store is not None:
        store.close()
    return vectors, notes


def _rubric(rows, criteria, scale, base_url, model, api_key, store) -> np.ndarray:
    from tunelab.evals.config import JudgeConfig, ProviderConfig, RetryConfig
    from tunelab.evals.judges import judge_key, judge_rubric
    from tunelab.evals.providers import make_provider

    cfg = JudgeConfig(id="rubric_judge", type="rubric", provider=f"{base_url}|{model}", rubric=criteria, scale=scale)
    keys = [judge_key(cfg, *row) for row in rows]
    found = store.cache_get_results(keys) if store is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in found]

    async def run():
        provider = make_provider(ProviderConfig(id="judge", model=model, base_url=base_url), RetryConfig())
        gate = asyncio.Semaphore(8)

        async def one(i):
            async with gate:
                return await judge_rubric(cfg, lambda m: provider.complete(m, cfg.params), *rows[i])
        try:
            return await asyncio.gather(*(one(i) for i in todo))
        finally:
            await provider.aclose()

    fresh = asyncio.run(run()) if todo else []
    new = {keys[i]: v.score for i, v in zip(todo, fresh) if v.score is not None}
    if store is not None and new:
        store.cache_put_results(new)
    values = {**found, **{keys[i]: v.score for i, v in zip(todo, fresh)}}
    return np.array([np.nan if values.get(k) is None else float(values[k]) for k in keys])


def _question(it: ImportedItem) -> str:
    parts = [str(it.vars[k]) for k in ("input", "dialogue") if it.vars.get(k)]
    if it.vars.get("fact"):
        parts.append(f"Fact: {it.vars['fact']}")
    return "\n\n".join(parts) or f"(input {it.input_id})"


def _store(db):
    if db is None:
        return None
    from tunelab.evals.store import Store

    return Store(db)
