"""Running an eval: render every row first (bad rows stop the run before any
call), then call providers concurrently, then score with metrics and judges.

Durability: every provider output and every judge verdict is committed (with its
cache entry) as it arrives: results that complete in the same turn of the event
loop share one transaction, written before the loop takes the next network
event, so a crash or SIGKILL loses only the calls in flight. Every phase consults the store before doing work: `--resume RUN_ID`
skips what that run already has, and the caches skip what any earlier run
computed, so neither a resumed run nor an unchanged rerun makes a call whose
result is stored, and a changed metric recomputes only itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelab.evals import geval
from tunelab.evals.cache import response_key
from tunelab.evals.config import EvalConfig, JudgeConfig, load_config, validate, variant_id
from tunelab.evals.dataset import Row, load_dataset
from tunelab.evals.errors import EvalError
from tunelab.evals.judges import Verdict, judge_key, judge_pairwise, judge_rubric
from tunelab.evals.liveness import HEARTBEAT_S
from tunelab.evals.metrics import Metric, MetricInput
from tunelab.evals.providers import (Completion, Provider, ProviderError, StructuredOutputRefused, cost,
                                     make_provider)
from tunelab.evals.selection import matching
from tunelab.evals.store import Store
from tunelab.evals.templates import CompiledPrompt, compile_prompts, effective_params, render_all

Progress = Callable[[str, int, int], None]   # (phase, done, total)

__all__ = ["RunStats", "run_eval", "variant_id"]


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
    verdicts_resumed: dict[str, int] = field(default_factory=dict)
    structured_judges: dict[str, bool] = field(default_factory=dict)   # judge id -> asked for JSON schema output
    geval_methods: dict[str, dict[str, int]] = field(default_factory=dict)  # judge id -> how its scores were had
    warnings: list[str] = field(default_factory=list)
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


class _Run:
    def __init__(self, cfg: EvalConfig, store: Store, use_cache: bool, progress: Progress | None) -> None:
        validate(cfg)
        self.cfg, self.store, self.use_cache = cfg, store, use_cache
        self.progress = progress or (lambda phase, done, total: None)
        self.sem = asyncio.Semaphore(cfg.concurrency)
        self.providers: dict[str, Provider] = {}
        self.arrived: tuple[list[Any], list[Any], list[Any], dict[str, Any]] = ([], [], [], {})
        self.flush_scheduled = False

    async def execute(self, resume: str | None) -> RunStats:
        cfg, store = self.cfg, self.store
        dataset = cfg.dataset if isinstance(cfg.dataset, list) else str(cfg.resolve(cfg.dataset))
        rows = load_dataset(dataset)
        prompts = {p.id: p for p in compile_prompts(cfg)}
        rendered = render_all(list(prompts.values()), rows)   # raises on a bad row: nothing called yet
        metrics = [Metric(m, cfg.base_dir) for m in cfg.metrics]
        self.variants = cfg.selected_variants()
        self.params = {v: effective_params(cfg.provider(v.split("@", 1)[1]).params, prompts[v.split("@", 1)[0]])
                       for v in self.variants}
        # The run's metadata shows the params each variant was really called with.
        config_json = dict(cfg.to_dict(), effective_params=self.params)
        start = time.perf_counter()

        if resume:
            run_id = store.resolve_run(resume)
            store.claim_run(run_id, config_json)
        else:
            run_id = store.create_run(config_json, description=cfg.description or None, config_path=cfg.source)
        self.stats = RunStats(run_id=run_id, items=len(rows))
        self.stats.warnings += _dropped_model_params(cfg, prompts)
        self.run_id = run_id
        store.put_items(run_id, [(r.id, r.line, r.vars, r.reference) for r in rows])
        beat = asyncio.create_task(self._heartbeat())
        try:
            await self._outputs(rows, rendered)
            outputs = store.existing_outputs(run_id)
            self.stats.outputs = len(outputs)
            self.stats.errors = sum(1 for o in outputs.values() if o["error"] is not None)
            self._metrics(metrics, rows, outputs)
            await self._judges(rows, outputs)
        except (KeyboardInterrupt, asyncio.CancelledError):
            store.set_run_status(run_id, "interrupted")
            raise
        except BaseException:
            store.set_run_status(run_id, "failed")
            raise
        finally:
            self._flush()
            beat.cancel()
            for p in self.providers.values():
                await p.aclose()
        store.set_run_status(run_id, "complete")
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    async def _heartbeat(self) -> None:
        # Lets `tunelab runs` on another host tell a live run from a dead one (same host: the pid decides).
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.store.heartbeat(self.run_id)

    # ---- outputs -----------------------------------------------------------

    async def _outputs(self, rows: list[Row], rendered: dict[tuple[str, str], list[dict[str, str]]]) -> None:
        cfg, stats = self.cfg, self.stats
        done_before = self.store.existing_outputs(self.run_id)
        todo = []
        for row in rows:
            for variant in self.variants:
                prompt_id, provider_id = variant.split("@", 1)
                for rep in range(cfg.repeat):
                    prev = done_before.get((row.id, variant, rep))
                    if prev is not None and prev["error"] is None:
                        stats.resumed += 1
                        continue
                    todo.append((row, prompt_id, cfg.provider(provider_id), rep, rendered[(row.id, prompt_id)]))
        total, done = len(todo), 0
        self.progress("outputs", 0, total)
        calls = []
        for row, prompt_id, prov, rep, messages in todo:
            params = self.params[variant_id(prompt_id, prov.id)]
            key = response_key(prov, params, messages, rep)
            record = dict(item_id=row.id, variant=variant_id(prompt_id, prov.id), prompt_id=prompt_id,
                          provider_id=prov.id, repeat=rep, rendered_json=_json(messages))
            hit = self.store.cache_get_response(key) if self.use_cache else None
            if hit is not None:
                stats.cached_responses += 1
                self._record_output(record, Completion(hit["output"], hit["prompt_tokens"], hit["completion_tokens"],
                                                       hit["latency_s"], hit["finish_reason"]), prov, cached=True)
                done += 1
            else:
                calls.append((record, prov, messages, key, params))
        self.progress("outputs", done, total)

        async def one(record: dict[str, Any], prov: Any, messages: list[dict[str, str]], key: str,
                      params: dict[str, Any]) -> None:
            nonlocal done
            provider = self._provider(prov.id)
            async with self.sem:
                stats.provider_calls += 1
                try:
                    c = await provider.complete(messages, params)
                except ProviderError as exc:
                    self._record_output(record, None, prov, error=str(exc))
                else:
                    self._record_output(record, c, prov, cache_key=key)
            done += 1
            self.progress("outputs", done, total)

        await asyncio.gather(*(one(*c) for c in calls))
        self._flush()

    def _arrive(self, output: dict[str, Any] | None = None, response: tuple[Any, ...] | None = None,
                verdict: dict[str, Any] | None = None, result: tuple[str, Any] | None = None) -> None:
        """Queue a result for the commit at the end of this turn of the event loop."""
        outputs, responses, verdicts, results = self.arrived
        for item, queue in ((output, outputs), (response, responses), (verdict, verdicts)):
            if item is not None:
                queue.append(item)
        if result is not None:
            results[result[0]] = result[1]
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if any(self.arrived):
            arrived, self.arrived = self.arrived, ([], [], [], {})
            self.store.put_arrivals(self.run_id, *arrived)

    def _record_output(self, record: dict[str, Any], c: Completion | None, prov: Any, *, error: str | None = None,
                       cached: bool = False, cache_key: str | None = None) -> None:
        """Commit one output as it arrives, with its response-cache entry: a kill loses only calls in flight."""
        output = dict(
            record, output=None if c is None else c.text, error=error,
            prompt_tokens=c and c.prompt_tokens, completion_tokens=c and c.completion_tokens,
            latency_s=c and c.latency_s, cost=None if c is None else cost(prov, c.prompt_tokens, c.completion_tokens),
            cached=int(cached))
        cache_row = None
        if cache_key is not None and c is not None and self.use_cache:
            cache_row = (cache_key, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s, c.finish_reason)
        self._arrive(output=output, response=cache_row)

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
            structured = self._structured(judge)
            self.stats.structured_judges[judge.id] = structured
            for counter in (self.stats.verdicts_computed, self.stats.verdicts_cached, self.stats.verdicts_resumed):
                counter[judge.id] = 0
            for pair in self._judge_targets(judge):
                for (item_id, variant, rep), o in outputs.items():
                    if variant != pair[0] or item_id not in by_id or o["error"] is not None:
                        continue
                    row, other = by_id[item_id], None
                    if judge.type == "pairwise":
                        other = outputs.get((item_id, pair[1], rep))
                        if other is None or other["error"] is not None:
                            continue
                    question = _question(o["rendered_json"])
                    texts = (o["output"], row.reference) if other is None else (o["output"], other["output"],
                                                                               row.reference)
                    key = judge_key(judge, question, *texts, structured=structured)
                    if have.get((judge.id, item_id, variant, pair[1], rep), "") == key:
                        self.stats.verdicts_resumed[judge.id] += 1
                        continue
                    jobs.append((judge, row, variant, pair[1], rep, o, other, question, texts))
        total, done = len(jobs), 0

        async def one(judge: JudgeConfig, row: Row, variant: str, other_variant: str, rep: int,
                      o: Any, other: Any, question: str, texts: tuple[Any, ...]) -> None:
            nonlocal done
            structured = self._structured(judge)
            key = judge_key(judge, question, *texts, structured=structured)
            cached = self.store.cache_get_results([key]).get(key) if self.use_cache else None
            error = None
            if cached is not None:
                self.stats.verdicts_cached[judge.id] += 1
                v = Verdict(**cached)
            else:
                try:
                    try:
                        v = await self._verdict(judge, question, o, other, row, structured)
                    except StructuredOutputRefused:   # asked in the JSON form: ask again in the plain-text one
                        structured = self.stats.structured_judges[judge.id] = False
                        key = judge_key(judge, question, *texts, structured=False)
                        v = await self._verdict(judge, question, o, other, row, False)
                except ProviderError as exc:
                    v, error = Verdict(), f"judge call failed: {exc}"
                self.stats.verdicts_computed[judge.id] += 1
                if judge.type == "geval" and error is None:
                    method = (v.reasoning or "no score").split(":")[0]
                    counts = self.stats.geval_methods.setdefault(judge.id, {})
                    counts[method] = counts.get(method, 0) + 1
            winner = {"A": variant, "B": other_variant, "tie": "tie", None: None}[v.winner]
            verdict = dict(judge_id=judge.id, kind=judge.type, item_id=row.id, variant=variant,
                           other_variant=other_variant, repeat=rep, score=v.score,
                           passed=None if v.passed is None else int(v.passed), winner=winner,
                           reasoning=v.reasoning, raw=_json(v.raw), parse_error=v.parse_error, error=error, key=key,
                           prompt_tokens=v.prompt_tokens, completion_tokens=v.completion_tokens,
                           cost=cost(self.cfg.provider(judge.provider), v.prompt_tokens, v.completion_tokens))
            # Committed as it arrives, with its cache entry: a kill loses only the verdicts still being judged.
            fresh = cached is None and error is None and v.parse_error is None and self.use_cache
            self._arrive(verdict=verdict, result=(key, v.to_dict()) if fresh else None)
            done += 1
            self.progress("judges", done, total)

        self.progress("judges", 0, total)
        await asyncio.gather(*(one(*j) for j in jobs))
        self._flush()
        for judge_id, methods in self.stats.geval_methods.items():
            sampled = sum(n for m, n in methods.items() if m.startswith("samples"))
            if sampled:   # Liu et al.'s fallback, said in the run: a mean of n samples is coarser than Σ s·p(s)
                self.stats.warnings.append(f"judge {judge_id!r}: {sampled} of {sum(methods.values())} G-Eval "
                                           "scores are means of sampled answers: the provider returned no logprobs")

    async def _verdict(self, judge: JudgeConfig, question: str, o: Any, other: Any, row: Row,
                       structured: bool) -> Verdict:
        if judge.type == "geval":
            return await geval.judge_eval_output(judge, self.cfg.provider(judge.provider).model,
                                                 self._geval_complete(judge), question, o["output"], row.reference)
        call = self._judge_call(judge)
        if judge.type == "rubric":
            return await judge_rubric(judge, call, question, o["output"], row.reference, structured=structured)
        return await judge_pairwise(judge, call, question, o["output"], other["output"], row.reference,
                                    structured=structured)

    def _judge_targets(self, judge: JudgeConfig) -> list[tuple[str, str]]:
        """(variant, other variant) pairs; other is '' for rubric judges. `variants:` patterns
        restrict a rubric judge to the matching variants and a pairwise one to pairs whose
        two variants both match."""
        chosen = set(matching(judge.variants, self.variants, f"{self.cfg.source}: judges {judge.id!r}.variants"))
        if judge.type in ("rubric", "geval"):
            return [(v, "") for v in self.variants if v in chosen]
        evaluated = [p.id for p in self.cfg.providers if not p.judge_only]
        prompts = [p.id for p in self.cfg.prompts]
        a, b = judge.compare or ["", ""]
        if a in prompts and b in prompts:
            pairs = [(variant_id(a, pv), variant_id(b, pv)) for pv in evaluated]
        elif a in evaluated and b in evaluated:
            pairs = [(variant_id(pr, a), variant_id(pr, b)) for pr in prompts]
        elif "@" in a and "@" in b:
            pairs = [(a, b)]
        else:
            raise EvalError(f"{self.cfg.source}: judges {judge.id!r}.compare: {judge.compare} must be two prompt ids, "
                            "two evaluated provider ids, or two variant ids 'prompt@provider'")
        return [(x, y) for x, y in pairs if x in chosen and y in chosen]

    def _structured(self, judge: JudgeConfig) -> bool:
        # G-Eval reads the score token's probabilities: a schema would only get in the way.
        return judge.type != "geval" and self._provider(judge.provider).structured_output

    def _geval_complete(self, judge: JudgeConfig) -> Callable[..., Any]:
        """G-Eval's calls: not through the response cache, which keeps text but not logprobs (its
        verdicts are cached whole, like every judge's)."""
        async def complete(messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
            async with self.sem:
                self.stats.judge_calls += 1
                return await self._provider(judge.provider).complete(messages, {**judge.params, **params})
        return complete

    def _judge_call(self, judge: JudgeConfig) -> Callable[..., Any]:
        prov_cfg = self.cfg.provider(judge.provider)

        async def call(messages: list[dict[str, str]], response_format: dict[str, Any] | None = None) -> Completion:
            params = judge.params if response_format is None else {**judge.params, "response_format": response_format}
            key = response_key(prov_cfg, params, messages, 0)
            hit = self.store.cache_get_response(key) if self.use_cache else None
            if hit is not None:
                return Completion(hit["output"], hit["prompt_tokens"], hit["completion_tokens"], hit["latency_s"],
                                  hit["finish_reason"])
            async with self.sem:
                self.stats.judge_calls += 1
                c = await self._provider(judge.provider).complete(messages, params)
            if self.use_cache:  # each judge reply is kept as it arrives: a resumed pairwise verdict reuses its first order
                self._arrive(response=(key, c.text, c.prompt_tokens, c.completion_tokens, c.latency_s,
                                       c.finish_reason))
            return c
        return call


def _dropped_model_params(cfg: EvalConfig, prompts: dict[str, CompiledPrompt]) -> list[str]:
    out = []
    for p in prompts.values():
        pf = p.prompt_file
        if pf is not None and (pf.params or {}).get("model"):
            out.append(f"prompt {p.id!r} ({p.source}): params.model {pf.params['model']!r} is ignored; "
                       "the provider decides the model")
    return out


def _question(rendered_json: str) -> str:
    messages = json.loads(rendered_json)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
