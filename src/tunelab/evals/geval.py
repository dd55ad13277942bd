"""G-Eval (Liu et al. 2023, "NLG Evaluation using GPT-4 with Better Human Alignment").

A rubric with explicit evaluation steps, a form-filling answer that is only the
score, and the score taken as the probability-weighted sum over the score tokens,
Σ_s s·p(s) (their Eq. 1), read from the first score position's `top_logprobs`.
The expectation breaks the ties a plain 1–5 answer leaves and follows the judge's
uncertainty, which is what lifts its correlation with people.

Without logprobs (a provider that does not return them) we do what the paper did for
GPT-4: sample n answers at temperature 1 and average them; the verdict's `method`
says so, and so does the run's summary.

Verdicts are cached in the eval store's result cache, keyed by the judge's config,
`VERSION` and what it reads, like the other judges.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

from tunelab.evals.config import JudgeConfig
from tunelab.evals.judges import Verdict
from tunelab.evals.providers import Completion, ProviderError, openai_logprobs

VERSION = 1


@dataclass
class GEvalConfig:
    id: str
    base_url: str
    model: str
    criteria: str                       # e.g. "Naturalness: is the response what a person would naturally say?"
    steps: list[str]                    # the evaluation steps (the paper's auto-CoT, written out once)
    scale: tuple[int, int] = (1, 5)
    task: str = "an input and a response to it"
    api_key: str = "EMPTY"
    top_logprobs: int = 20              # OpenAI's maximum
    n_samples: int = 20                 # the fallback without logprobs (the paper's n = 20)
    concurrency: int = 8


@dataclass
class GEvalVerdict:
    score: float | None
    method: str                         # "logprobs" or "samples (n=20): no logprobs from the provider"
    probs: dict[str, float] = field(default_factory=dict)   # score -> probability (logprobs method)
    samples: list[int] = field(default_factory=list)        # parsed scores (samples method)
    error: str | None = None


def geval_messages(cfg: GEvalConfig, input_text: str, output: str, reference: Any | None = None) -> list[dict]:
    lo, hi = cfg.scale
    steps = "\n".join(f"{k}. {s}" for k, s in enumerate(cfg.steps, 1))
    name = cfg.criteria.split(":")[0].strip()
    parts = [f"You will be given {cfg.task}. Your task is to rate the response on one metric.\n"
             "Please make sure you read and understand these instructions carefully.",
             f"Evaluation Criteria:\n\n{cfg.criteria} ({lo}-{hi})", f"Evaluation Steps:\n\n{steps}",
             f"Input:\n\n{input_text}"]
    if reference is not None:
        refs = reference if isinstance(reference, list) else [reference]
        parts.append("Reference response(s):\n\n" + "\n".join(f"- {r}" for r in refs))
    parts += [f"Response:\n\n{output}", f"Evaluation Form (scores ONLY):\n\n- {name} ({lo}-{hi}):"]
    return [{"role": "user", "content": "\n\n".join(parts)}]


def score_from_top_logprobs(top: list[tuple[str, float]], scale: tuple[int, int]) -> tuple[float, dict[str, float]] | None:
    """Σ s·p(s) over the score tokens among (token, logprob) pairs, renormalised over those tokens."""
    lo, hi = scale
    mass: dict[int, float] = {}
    for token, logprob in top:
        t = token.strip()
        if t.isdigit() and lo <= int(t) <= hi:
            mass[int(t)] = mass.get(int(t), 0.0) + math.exp(logprob)   # " 3" and "3" are the same answer
    total = sum(mass.values())
    if total <= 0:
        return None
    probs = {str(s): p / total for s, p in sorted(mass.items())}
    return sum(int(s) * p for s, p in probs.items()), probs


def cache_key(cfg: GEvalConfig, input_text: str, output: str, reference: Any | None) -> str:
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("id", "api_key", "concurrency")}
    return hashlib.sha256(json.dumps(["geval", VERSION, conf, input_text, output, reference], sort_keys=True,
                                     default=str).encode()).hexdigest()


# ask(messages, params) -> the choices (Completions) of one call; params may carry `n`.
Ask = Callable[[list[dict], dict[str, Any]], Awaitable[list[Completion]]]


async def judge_geval(cfg: GEvalConfig, client, input_text: str, output: str,
                      reference: Any | None = None) -> GEvalVerdict:
    """One output's G-Eval score; `client` is an `openai.AsyncOpenAI`."""
    async def ask(messages: list[dict], params: dict[str, Any]) -> list[Completion]:
        resp = await client.chat.completions.create(model=cfg.model, messages=messages, **params)
        return [Completion(ch.message.content or "", None, None, 0.0, ch.finish_reason, openai_logprobs(ch))
                for ch in resp.choices]
    return await geval_verdict(cfg, ask, geval_messages(cfg, input_text, output, reference))


async def geval_verdict(cfg: GEvalConfig, ask: Ask, messages: list[dict]) -> GEvalVerdict:
    """Greedy answer with `top_logprobs` -> Σ s·p(s); without logprobs, the n-sample mean."""
    try:
        (choice,) = (await ask(messages, {"max_tokens": 5, "temperature": 0, "logprobs": True,
                                          "top_logprobs": cfg.top_logprobs}))[:1]
    except Exception as exc:  # noqa: BLE001 - one failed call is recorded on its item, never fatal
        return GEvalVerdict(None, "error", error=f"judge call failed: {exc}")
    for position in choice.logprobs or []:   # the first position that offers a score token is the form's answer
        got = score_from_top_logprobs(position, cfg.scale)
        if got is not None:
            return GEvalVerdict(got[0], "logprobs", probs=got[1])
    return await _sampled(cfg, ask, messages)


async def _sampled(cfg: GEvalConfig, ask: Ask, messages: list[dict]) -> GEvalVerdict:
    lo, hi = cfg.scale
    found: list[int] = []
    tries = 0
    while len(found) < cfg.n_samples and tries < cfg.n_samples * 2:
        want = cfg.n_samples - len(found)
        try:
            choices = await ask(messages, {"max_tokens": 5, "temperature": 1.0, "n": want})
        except Exception as exc:  # noqa: BLE001
            return GEvalVerdict(None, "error", error=f"judge call failed: {exc}")
        tries += len(choices) or 1
        for ch in choices:
            m = re.search(r"\d+", ch.text or "")
            if m and lo <= int(m.group()) <= hi:
                found.append(int(m.group()))
    method = f"samples (n={len(found)}): the provider returned no logprobs"
    if not found:
        return GEvalVerdict(None, method, error="no score in any sampled answer")
    return GEvalVerdict(sum(found) / len(found), method, samples=found)


def score_all(cfg: GEvalConfig, rows: list[tuple[str, str, Any]], store=None) -> list[GEvalVerdict]:
    """G-Eval verdicts for (input, output, reference) rows, from the cache where `store` has them."""
    keys = [cache_key(cfg, *row) for row in rows]
    found = store.cache_get_results(keys) if store is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in found]

    async def run() -> list[GEvalVerdict]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=2)
        gate = asyncio.Semaphore(cfg.concurrency)

        async def one(i: int) -> GEvalVerdict:
            async with gate:
                return await judge_geval(cfg, client, *rows[i])
        try:
            return await asyncio.gather(*(one(i) for i in todo))
        finally:
            await client.close()

    fresh = asyncio.run(run()) if todo else []
    new = {keys[i]: asdict(v) for i, v in zip(todo, fresh) if v.error is None}
    if store is not None and new:
        store.cache_put_results(new)
    by_key = {**{k: GEvalVerdict(**v) for k, v in found.items()}, **{keys[i]: v for i, v in zip(todo, fresh)}}
    return [by_key[k] for k in keys]


def methods_used(verdicts: list[GEvalVerdict]) -> str:
    """One line for the run summary: how the scores were obtained."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.method] = counts.get(v.method, 0) + 1
    return "; ".join(f"{n} × {m}" for m, n in sorted(counts.items()))


# ---- as an eval judge (`judges: - type: geval` in eval YAML) ---------------

def config_for(judge: JudgeConfig, model: str) -> GEvalConfig:
    """The eval YAML's geval judge: `rubric` is the criterion, `steps` the evaluation steps."""
    return GEvalConfig(id=judge.id, base_url="", model=model, criteria=judge.rubric, steps=list(judge.steps or []),
                       scale=tuple(judge.scale), task="a question and an assistant's answer to it",
                       top_logprobs=judge.top_logprobs, n_samples=judge.n_samples)


async def judge_eval_output(judge: JudgeConfig, model: str, complete: Callable[..., Awaitable[Completion]],
                            question: str, answer: str, reference: Any | None) -> Verdict:
    """One eval output's G-Eval verdict through a provider's `complete(messages, params)` (one choice per
    call, so the fallback's n samples are n calls)."""
    cfg = config_for(judge, model)
    spent: list[Completion] = []

    async def ask(messages: list[dict], params: dict[str, Any]) -> list[Completion]:
        n = params.pop("n", 1)
        got = list(await asyncio.gather(*(complete(messages, dict(params)) for _ in range(n))))
        spent.extend(got)
        return got
    g = await geval_verdict(cfg, ask, geval_messages(cfg, question, answer, reference))
    if g.method == "error":
        raise ProviderError(g.error or "judge call failed")
    v = Verdict(score=g.score, reasoning=_explained(g), raw=[c.text for c in spent],
                prompt_tokens=sum(c.prompt_tokens or 0 for c in spent),
                completion_tokens=sum(c.completion_tokens or 0 for c in spent))
    if g.score is None:
        v.parse_error = g.error or "no score token in the judge's answer"
    elif judge.threshold is not None:
        v.passed = g.score >= judge.threshold
    return v


def _explained(g: GEvalVerdict) -> str:
    if g.probs:
        return f"{g.method}: " + ", ".join(f"p({s})={p:.3f}" for s, p in g.probs.items())
    if g.samples:
        return f"{g.method}: " + " ".join(map(str, g.samples))
    return g.method
