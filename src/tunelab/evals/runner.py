"""Running an eval: render every row first (bad rows stop the run before any
call), then call providers concurrently, then score with metrics and judges.

Every phase consults the store before doing work: `--resume RUN_ID` skips what
that run already has, and the caches skip what any earlier run computed, so an
unchanged rerun makes zero provider calls and a changed metric recomputes only
itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelab.evals.cache import response_key
from tunelab.evals.config import EvalConfig, JudgeConfig, load_config, validate
from tunelab.evals.dataset import Row, load_dataset
from tunelab.evals.errors import EvalError
from tunelab.evals.judges import Verdict, judge_key, judge_pairwise, judge_rubric
from tunelab.evals.metrics import Metric, MetricInput
from tunelab.evals.providers import Completion, Provider, ProviderError, cost, make_provider
from tunelab.evals.store import Store
from tunelab.evals.templates import compile_prompts, render_all

Progress = Callable[[str, int, int], None]   # (phase, done, total)


@dataclass
class RunStats:
    run_id: str
    items: int = 0
    outputs: int = 0
    provider_calls: int = 0          # eval calls that reached a provider (retries not counted)
    cached_responses: int = 0
    resumed: int = 0                 # outputs already present in the resumed run
    errors: int = 0                  # outputs recorded with an error
    metrics_computed: dict[str, int] = field(default_factory=dict)
    metrics_cached: dict[str, int] = field(default_factory=dict)
    metric_errors: list[str] = field(default_factory=list)
    judge_calls: int = 0
    verdicts_computed: dict[str, int] = field(default_factory=dict)
    verdicts_cached: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def run_eval(config: EvalConfig | str | Path, db: Store | str | Path = "tunelab.db", *, use_cache: bool = True,
             resume: str | None = None, progress: Progress | None = None) -> RunStats:
    """Run (or resume) an eval and record it in `db`. Returns counts and the run id."""
    cfg = config if isinstance(config, EvalConfig) else load_config(config)
    store = db if isinstance(db, Store) else Store(db)
    try:
        return asyncio.run(_Run(cfg, store, use_cache, progress).execute(resume))
    finally:
        if not isinstance(db, Store):
            store.close()


def variant_id(prompt_id: str, provider_id: str) -> str:
    return f"{prompt_id}@{provider_id}"


class _Run:
    FLUSH_EVERY = 64   # outputs per write transaction: few commits, little lost on a crash

    def __init__(self, cfg: EvalConfig, store: Store, use_cache: bool, progress: Progress | None) -> None:
        validate(cfg)
        self.cfg, self.store, self.use_cache = cfg, store, use_cache
        self.progress = progress or (lambda phase, done, total: None)
        self.sem = asyncio.Semaphore(cfg.concurrency)
        self.providers: dict[str, Provider] = {}
        self.pending_outputs: list[dict[str, Any]] = []
        self.pending_cache: list[tuple[str, str, int | None, int | None, float | None, str | None]] = []

    async def execute(self, resume: str | None) -> RunStats:
        cfg, store = self.cfg, self.store
        dataset = cfg.dataset if isinstance(cfg.dataset, list) else str(cfg.resolve(cfg.dataset))
        rows = load_dataset(dataset)
        rendered = render_all(compile_prompts(cfg), rows)   # raises on a bad row: nothing called yet
        metrics = [Metric(m, cfg.base_dir) for m in cfg.metrics]
        start = time.perf_counter()

        if resume:
            run_id = store.resolve_run(resume)
            store.set_run_status(run_id, "running", cfg.to_dict())
        else:
            run_id = store.create_run(cfg.to_dict(), description=cfg.description or None, config_path=cfg.source)
        self.stats = RunStats(run_id=run_id, items=len(rows))
        self.run_id = run_id
        store.put_items(run_id, [(r.id, r.line, r.vars, r.reference) for r in rows])
        try:
            await self._outputs(rows, rendered)
            outputs = store.existing_outputs(run_id)
            self.stats.outputs = len(outputs)
            self.stats.errors = sum(1 for o in outputs.values() if o["error"] is not None)
            self._metrics(metrics, rows, outputs)
            await self._judges(rows, outputs)
        except BaseException:
            self._flush()
            store.set_run_status(run_id, "failed")
            raise
        finally:
            for p in self.providers.values():
                await p.aclose()
        store.set_run_status(run_id, "complete")
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    # ---- outputs -----------------------------------------------------------

    async def _outputs(self, rows: list[Row], rendered: dict[tuple[str, str], list[dict[str, str]]]) -> None:
        cfg, stats = self.cfg, self.stats
        done_before = self.store.existing_outputs(self.run_id)
        todo = []
        for row in rows:
            for prompt in cfg.prompts:
                for prov in cfg.providers:
                    if prov.judge_only:
                        continue
                    variant = variant_id(prompt.id, prov.id)
                    for rep in range(cfg.repeat):
                        prev = done_before.get((row.id, variant, rep))
                        if prev is not None and prev["error"] is None:
                            stats.resumed += 1
                            continue
                        todo.append((row, prompt.id, prov, rep, rendered[(row.id, prompt.id)]))
        total, done = len(todo), 0
        self.progress("outputs", 0, total)
        calls = []
        for row, prompt_id, prov, rep, messages in todo:
            key = response_key(prov, prov.params, messages, rep)
            record = dict(item_id=row.id, variant=variant_id(prompt_id, prov.id), prompt_id=prompt_id,
                          provider_id=prov.id, repeat=rep, rendered_json=_json(messages))
            hit = self.store.cache_get_response(key) if self.use_cache else None
            if hit is not None:
                stats.cached_responses += 1
                self._record_output(record, Completion(hit["output"], hit["prompt_tokens"], hit["completion_tokens"],
                                                       hit["latency_s"], hit["finish_reason"]), prov, cached=True)
                done += 1
            else:
                calls.append((record, prov, messages, key))
        self.progress("outputs", done, total)

        async def one(record: dict[str, Any], prov: Any, messages: list[dict[str, str]], key: str) -> None:
            nonlocal done
            provider = self._provider(prov.id)
            async with self.sem:
                stats.provider_calls += 1
                try:
                    c = await provider.complete(messages, prov.params)
                except ProviderError as exc:
                    self._record_output(record, None, prov, error=str(exc))
                else:
                    self._record_output(record, c, prov)
                    self.pending_cache.append((key, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s,
                                               c.finish_reason))
            done += 1
            self.progress("outputs", done, total)

        await asyncio.gather(*(one(*c) for c in calls))
        self._flush()

    def _record_output(self, record: dict[str, Any], c: Completion | None, prov: Any, *, error: str | None = None,
                       cached: bool = False) -> None:
        self.pending_outputs.append(dict(
            record, output=None if c is None else c.text, error=error,
            prompt_tokens=c and c.prompt_tokens, completion_tokens=c and c.completion_tokens,
            latency_s=c and c.latency_s, cost=None if c is None else cost(prov, c.prompt_tokens, c.completion_tokens),
            cached=int(cached)))
        if len(self.pending_outputs) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self.pending_outputs:
            self.store.put_outputs(self.run_id, self.pending_outputs)
            self.pending_outputs = []
        if self.pending_cache and self.use_cache:
            self.store.cache_put_responses(self.pending_cache)
        self.pending_cache = []

    def _provider(self, provider_id: str) -> Provider:
        if provider_id not in self.providers:
            self.providers[provider_id] = make_provider(self.cfg.provider(provider_id), self.cfg.retry)
        return self.providers[provider_id]

    # ---- metrics -----------------------------------------------------------

    def _metrics(self, metrics: list[Metric], rows: list[Row], outputs: dict[tuple[str, str, int], Any]) -> None:
        by_id = {r.id: r for r in rows}
        have = self.store.existing_scores(self.run_id)
        ok = [(k, o) for k, o in outputs.items() if o["error"] is None and k[0] in by_id]
        for n, metric in enumerate(metrics):
            self.progress("metrics", n, len(metrics))
            todo = [(k, o) for k, o in ok if (*k, metric.id) not in have]
            inputs = [MetricInput(o["output"], by_id[k[0]].reference, by_id[k[0]].vars, o["latency_s"],
                                  o["prompt_tokens"], o["completion_tokens"], o["cost"]) for k, o in todo]
            values: list[float | None]
            if metric.is_call_metric:
                values, computed, cached = metric.score(inputs), len(inputs), 0
            else:
                keys = [metric.input_key(x) for x in inputs]
                found = self.store.cache_get_results(keys) if self.use_cache else {}
                missing = [i for i, key in enumerate(keys) if key not in found]
                fresh = self._score_safely(metric, [inputs[i] for i in missing], [todo[i][0] for i in missing])
                new = {keys[i]: v for i, v in zip(missing, fresh)}
                if self.use_cache:
                    self.store.cache_put_results(new)
                values = [found[key] if key in found else new[key] for key in keys]
                computed, cached = len(missing), len(keys) - len(missing)
            self.stats.metrics_computed[metric.id] = computed
            self.stats.metrics_cached[metric.id] = cached
            self.store.put_scores(self.run_id, [(*k, metric.id, v) for (k, _), v in zip(todo, values)])
        self.progress("metrics", len(metrics), len(metrics))

    def _score_safely(self, metric: Metric, inputs: list[MetricInput], keys: list[Any]) -> list[float | None]:
        if not inputs:
            return []
        try:
            return metric.score(inputs)
        except EvalError:
            raise
        except Exception:  # noqa: BLE001 - fall back to one by one to find the failing item
            pass
        out: list[float | None] = []
        for x, k in zip(inputs, keys):
            try:
                out.append(metric.score([x])[0])
            except Exception as exc:  # noqa: BLE001 - a user metric failing on one item must not end the run
                self.stats.metric_errors.append(f"metric {metric.id!r} on item {k[0]!r} ({k[1]}): "
                                                f"{type(exc).__name__}: {exc}")
                out.append(None)
        return out

    # ---- judges ------------------------------------------------------------

    async def _judges(self, rows: list[Row], outputs: dict[tuple[str, str, int], Any]) -> None:
        by_id = {r.id: r for r in rows}
        have = self.store.existing_verdicts(self.run_id)
        jobs = []
        for judge in self.cfg.judges:
            self.stats.verdicts_computed[judge.id] = self.stats.verdicts_cached[judge.id] = 0
            for pair in self._judge_targets(judge):
                for (item_id, variant, rep), o in outputs.items():
                    if variant != pair[0] or item_id not in by_id or o["error"] is not None:
                        continue
                    other = None
                    if judge.type == "pairwise":
                        other = outputs.get((item_id, pair[1], rep))
                        if other is None or other["error"] is not None:
                            continue
                    if (judge.id, item_id, variant, pair[1], rep) in have:
                        continue
                    jobs.append((judge, by_id[item_id], variant, pair[1], rep, o, other))
        total, done = len(jobs), 0
        results: list[dict[str, Any]] = []
        cache_new: dict[str, Any] = {}

        async def one(judge: JudgeConfig, row: Row, variant: str, other_variant: str, rep: int,
                      o: Any, other: Any) -> None:
            nonlocal done
            question = _question(o["rendered_json"])
            if judge.type == "rubric":
                key = judge_key(judge, question, o["output"], row.reference)
            else:
                key = judge_key(judge, question, o["output"], other["output"], row.reference)
            cached = self.store.cache_get_results([key]).get(key) if self.use_cache else None
            if cached is not None:
                self.stats.verdicts_cached[judge.id] += 1
                v = Verdict(**cached)
            else:
                call = self._judge_call(judge)
                try:
                    if judge.type == "rubric":
                        v = await judge_rubric(judge, call, question, o["output"], row.reference)
                    else:
                        v = await judge_pairwise(judge, call, question, o["output"], other["output"], row.reference)
                except ProviderError as exc:
                    v = Verdict(parse_error=f"judge call failed: {exc}")
                self.stats.verdicts_computed[judge.id] += 1
                if v.parse_error is None:
                    cache_new[key] = v.to_dict()
            winner = {"A": variant, "B": other_variant, "tie": "tie", None: None}[v.winner]
            results.append(dict(judge_id=judge.id, kind=judge.type, item_id=row.id, variant=variant,
                                other_variant=other_variant, repeat=rep, score=v.score,
                                passed=None if v.passed is None else int(v.passed), winner=winner,
                                reasoning=v.reasoning, raw=_json(v.raw), parse_error=v.parse_error,
                                prompt_tokens=v.prompt_tokens, completion_tokens=v.completion_tokens,
                                cost=cost(self.cfg.provider(judge.provider), v.prompt_tokens, v.completion_tokens)))
            done += 1
            self.progress("judges", done, total)

        self.progress("judges", 0, total)
        await asyncio.gather(*(one(*j) for j in jobs))
        self._flush()
        if self.use_cache:
            self.store.cache_put_results(cache_new)
        if results:
            self.store.put_verdicts(self.run_id, results)

    def _judge_targets(self, judge: JudgeConfig) -> list[tuple[str, str]]:
        """(variant, other variant) pairs; other is '' for rubric judges."""
        evaluated = [p.id for p in self.cfg.providers if not p.judge_only]
        prompts = [p.id for p in self.cfg.prompts]
        if judge.type == "rubric":
            return [(variant_id(pr, pv), "") for pr in prompts for pv in evaluated]
        a, b = judge.compare or ["", ""]
        if a in prompts and b in prompts:
            return [(variant_id(a, pv), variant_id(b, pv)) for pv in evaluated]
        if a in evaluated and b in evaluated:
            return [(variant_id(pr, a), variant_id(pr, b)) for pr in prompts]
        if "@" in a and "@" in b:
            return [(a, b)]
        raise EvalError(f"{self.cfg.source}: judges {judge.id!r}.compare: {judge.compare} must be two prompt ids, "
                        "two evaluated provider ids, or two variant ids 'prompt@provider'")

    def _judge_call(self, judge: JudgeConfig) -> Callable[[list[dict[str, str]]], Any]:
        prov_cfg = self.cfg.provider(judge.provider)

        async def call(messages: list[dict[str, str]]) -> Completion:
            key = response_key(prov_cfg, judge.params, messages, 0)
            hit = self.store.cache_get_response(key) if self.use_cache else None
            if hit is not None:
                return Completion(hit["output"], hit["prompt_tokens"], hit["completion_tokens"], hit["latency_s"],
                                  hit["finish_reason"])
            async with self.sem:
                self.stats.judge_calls += 1
                c = await self._provider(judge.provider).complete(messages, judge.params)
            self.pending_cache.append((key, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s,
                                       c.finish_reason))
            return c
        return call


def _question(rendered_json: str) -> str:
    messages = json.loads(rendered_json)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
