"""The eval config: dataclasses that mirror the YAML key for key.

`load_config(path)` reads YAML; `EvalConfig.from_dict(data, source=...)` builds
the same objects from a dict; `to_dict()` goes back. Every error names the file
and the field path (`providers[1].base_url`) and says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.evals.errors import EvalError
from tunelab.evals.metrics import check_metric


@dataclass
class PromptConfig:
    """Exactly one of `template` (Jinja text), `messages` ([{role, content}], each
    content Jinja) or `file` (a prompt file, relative to the config)."""

    id: str
    template: str | None = None
    messages: list[dict[str, str]] | None = None
    file: str | None = None
    # Sampling params this prompt needs (stop sequences, max_tokens, ...). They override the
    # provider's, and a prompt file's own `params:` sit between the two (see effective_params).
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Price:
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0


@dataclass
class ProviderConfig:
    """`type: openai` (any OpenAI-compatible endpoint) or `type: tunelab` (in process)."""

    id: str
    type: str = "openai"
    model: str = ""
    base_url: str | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    price: Price | None = None
    adapter: str | None = None
    dtype: str | None = None  # type: tunelab: float32 | bfloat16 | float16 (default: as stored)
    # type: tunelab: keyword options of tunelab.engine.LLM (enable_prefix_caching, max_num_seqs, ...)
    engine: dict[str, Any] = field(default_factory=dict)
    # A provider used only by judges is not itself evaluated.
    judge_only: bool = False
    # None: chat (the model's chat template / chat completions) when the model has one.
    # False: completion style, the prompt text exactly as rendered (base models;
    # OpenAI's /v1/completions). True: chat, and an error if there is no template.
    chat: bool | None = None
    # Ask judges on this provider for JSON-schema structured output (`response_format`).
    # None: on for `openai` endpoints, and for `tunelab` when its engine supports it.
    structured_output: bool | None = None


@dataclass
class MetricConfig:
    """A metric by name with its options (`pattern`, `schema`, `path`, ...).
    `id` defaults to the name; give one when the same metric appears twice."""

    name: str
    id: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = self.id or self.name


@dataclass
class JudgeConfig:
    id: str
    type: str                        # rubric | pairwise | geval
    provider: str
    rubric: str = "Is the answer correct, complete and concise?"
    scale: tuple[int, int] = (1, 10)
    threshold: float | None = None
    compare: list[str] | None = None  # pairwise: two prompt ids, provider ids or variant ids
    params: dict[str, Any] = field(default_factory=lambda: {"temperature": 0, "max_tokens": 512})
    variants: list[str] | None = None  # glob patterns over variant ids ("*@lora"); None: every variant
    # More unparseable verdicts than this share flags the judge loudly (CLI, report, ladder).
    max_parse_failure_rate: float = 0.2
    # geval (Liu et al. 2023): `rubric` is the criterion, these the evaluation steps; the score is
    # Σ s·p(s) over the top_logprobs at the score position, or the mean of n_samples without logprobs.
    steps: list[str] | None = None
    top_logprobs: int = 20
    n_samples: int = 20


@dataclass
class RetryConfig:
    """Failed calls (timeout, 5xx, 429, connection refused) are retried
    `max_retries` times, sleeping backoff_s * 2**attempt between tries."""

    max_retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 60.0


@dataclass
class EvalConfig:
    dataset: str | list[dict[str, Any]]
    prompts: list[PromptConfig]
    providers: list[ProviderConfig]
    metrics: list[MetricConfig] = field(default_factory=list)
    judges: list[JudgeConfig] = field(default_factory=list)
    # Which prompt @ provider pairs run: glob patterns over variant ids; None runs every pair.
    variants: list[str] | None = None
    description: str = ""
    repeat: int = 1
    concurrency: int = 8
    retry: RetryConfig = field(default_factory=RetryConfig)
    # Where relative paths (dataset, prompt files, python metrics) are resolved.
    base_dir: str = "."
    source: str = "<config>"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<config>", base_dir: str | Path = ".") -> "EvalConfig":
        return _parse(data, source, str(base_dir))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "description": self.description, "dataset": self.dataset,
            "prompts": [_drop_none({"id": p.id, "template": p.template, "messages": p.messages, "file": p.file,
                                    "params": p.params or None}) for p in self.prompts],
            "variants": self.variants,
            "providers": [], "metrics": [], "judges": [],
            "repeat": self.repeat, "concurrency": self.concurrency,
            "retry": {"max_retries": self.retry.max_retries, "backoff_s": self.retry.backoff_s,
                      "timeout_s": self.retry.timeout_s},
        }
        for p in self.providers:
            d = {"id": p.id, "type": p.type, "model": p.model, "base_url": p.base_url, "api_key_env": p.api_key_env,
                 "params": p.params, "adapter": p.adapter, "judge_only": p.judge_only or None, "chat": p.chat,
                 "structured_output": p.structured_output, "dtype": p.dtype, "engine": p.engine or None,
                 "price": None if p.price is None else {"input_per_1m": p.price.input_per_1m,
                                                        "output_per_1m": p.price.output_per_1m}}
            out["providers"].append(_drop_none(d))
        for m in self.metrics:
            out["metrics"].append(dict({"name": m.name, **({"id": m.id} if m.id != m.name else {})}, **m.options))
        for j in self.judges:
            out["judges"].append(_drop_none({"id": j.id, "type": j.type, "provider": j.provider, "rubric": j.rubric,
                                             "scale": list(j.scale), "threshold": j.threshold, "compare": j.compare,
                                             "params": j.params, "variants": j.variants,
                                             "max_parse_failure_rate": j.max_parse_failure_rate,
                                             **({"steps": j.steps, "top_logprobs": j.top_logprobs,
                                                 "n_samples": j.n_samples} if j.type == "geval" else {})}))
        return _drop_none(out)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def all_variants(self) -> list[str]:
        """Every prompt @ evaluated provider, prompt-major."""
        return [variant_id(pr.id, pv.id) for pr in self.prompts for pv in self.providers if not pv.judge_only]

    def selected_variants(self) -> list[str]:
        """The variants this eval runs (`variants:` patterns, else all)."""
        from tunelab.evals.selection import matching  # late: selection is a leaf, but keep config import-light

        return matching(self.variants, self.all_variants(), f"{self.source}: variants")

    def prompt(self, prompt_id: str) -> PromptConfig:
        return next(p for p in self.prompts if p.id == prompt_id)

    def provider(self, provider_id: str) -> ProviderConfig:
        for p in self.providers:
            if p.id == provider_id:
                return p
        raise EvalError(f"{self.source}: no provider with id {provider_id!r}")


def variant_id(prompt_id: str, provider_id: str) -> str:
    return f"{prompt_id}@{provider_id}"


def load_config(path: str | Path) -> EvalConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EvalError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise EvalError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return EvalConfig.from_dict(data, source=str(path), base_dir=path.parent)


# ---- parsing ---------------------------------------------------------------

_TOP_KEYS = {"description", "dataset", "prompts", "providers", "metrics", "judges", "repeat", "concurrency", "retry",
             "variants"}


def _parse(data: Any, src: str, base_dir: str) -> EvalConfig:
    if not isinstance(data, dict):
        raise EvalError(f"{src}: the config must be a mapping with keys dataset, prompts, providers, ...")
    _no_unknown(data, _TOP_KEYS, src, "")
    dataset = data.get("dataset")
    if not isinstance(dataset, (str, list)) or not dataset:
        raise EvalError(f"{src}: field 'dataset': expected a path to a .jsonl or .csv file (or a list of rows)")
    prompts = [_prompt(p, src, f"prompts[{i}]") for i, p in enumerate(_list(data, "prompts", src, required=True))]
    providers = [_provider(p, src, f"providers[{i}]") for i, p in enumerate(_list(data, "providers", src, True))]
    for p in providers:
        if p.type == "tunelab":  # local checkpoints and adapters, like the dataset, are relative to the config
            p.model = _local_path(p.model, base_dir)
            p.adapter = _local_path(p.adapter, base_dir) if p.adapter else p.adapter
    metrics = [_metric(m, src, f"metrics[{i}]") for i, m in enumerate(_list(data, "metrics", src))]
    judges = [_judge(j, src, f"judges[{i}]") for i, j in enumerate(_list(data, "judges", src))]
    retry_data = data.get("retry") or {}
    if not isinstance(retry_data, dict):
        raise EvalError(f"{src}: field 'retry': expected a mapping (max_retries, backoff_s, timeout_s)")
    _no_unknown(retry_data, {"max_retries", "backoff_s", "timeout_s"}, src, "retry.")
    retry = RetryConfig(**{k: _number(retry_data, k, src, "retry.") for k in retry_data})
    retry.max_retries = int(retry.max_retries)
    cfg = EvalConfig(
        dataset=dataset, prompts=prompts, providers=providers, metrics=metrics, judges=judges,
        variants=_patterns(data, "variants", src, ""),
        description=str(data.get("description") or ""), repeat=int(_number(data, "repeat", src, "", 1)),
        concurrency=int(_number(data, "concurrency", src, "", 8)), retry=retry, base_dir=base_dir, source=src,
    )
    validate(cfg)
    return cfg


def _local_path(value: str, base_dir: str) -> str:
    # A relative path that exists next to the config wins; anything else (an absolute
    # path, a hub id, a path relative to the working directory) is left as written.
    candidate = Path(base_dir) / value
    return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value


def validate(cfg: EvalConfig) -> None:
    """Cross-field checks shared by YAML and Python-built configs."""
    src = cfg.source
    for kind, ids in (("prompts", [p.id for p in cfg.prompts]), ("providers", [p.id for p in cfg.providers]),
                      ("metrics", [m.id for m in cfg.metrics]), ("judges", [j.id for j in cfg.judges])):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            hint = " (give each an `id:`)" if kind == "metrics" else ""
            raise EvalError(f"{src}: {kind}: duplicate id {dupes[0]!r}{hint}")
    if not cfg.prompts:
        raise EvalError(f"{src}: field 'prompts': at least one prompt is required")
    if not [p for p in cfg.providers if not p.judge_only]:
        raise EvalError(f"{src}: field 'providers': at least one provider to evaluate is required")
    if cfg.repeat < 1 or cfg.concurrency < 1:
        raise EvalError(f"{src}: fields 'repeat' and 'concurrency' must be >= 1")
    provider_ids = {p.id for p in cfg.providers}
    for i, j in enumerate(cfg.judges):
        if j.provider not in provider_ids:
            raise EvalError(f"{src}: judges[{i}].provider: {j.provider!r} is not a provider id "
                            f"(have: {', '.join(sorted(provider_ids))})")
        if j.type == "pairwise":
            names = {p.id for p in cfg.prompts} | provider_ids
            if not j.compare or len(j.compare) != 2:
                raise EvalError(f"{src}: judges[{i}].compare: expected two prompt or provider ids")
            for name in j.compare:
                if name not in names and "@" not in name:
                    raise EvalError(f"{src}: judges[{i}].compare: {name!r} is neither a prompt nor a provider id")
        elif j.type == "geval":
            if not j.steps:
                raise EvalError(f"{src}: judges[{i}].steps: a geval judge needs its evaluation steps (a list)")
            if not 1 <= j.top_logprobs <= 20 or j.n_samples < 1:
                raise EvalError(f"{src}: judges[{i}]: top_logprobs must be in [1, 20] and n_samples >= 1")
        elif j.type != "rubric":
            raise EvalError(f"{src}: judges[{i}].type: expected 'rubric', 'pairwise' or 'geval', got {j.type!r}")
    selected = cfg.selected_variants()
    for i, j in enumerate(cfg.judges):
        if j.variants is not None:
            from tunelab.evals.selection import matching

            matching(j.variants, selected, f"{src}: judges[{i}].variants")
        if not 0 <= j.max_parse_failure_rate <= 1:
            raise EvalError(f"{src}: judges[{i}].max_parse_failure_rate: expected a share between 0 and 1")
    for i, m in enumerate(cfg.metrics):
        check_metric(m, where=f"{src}: metrics[{i}]")


def _prompt(d: Any, src: str, where: str) -> PromptConfig:
    d = _mapping(d, src, where, "{id, template | messages | file}")
    _no_unknown(d, {"id", "template", "messages", "file", "params"}, src, where + ".")
    given = [k for k in ("template", "messages", "file") if d.get(k) is not None]
    if len(given) != 1:
        raise EvalError(f"{src}: {where}: give exactly one of template, messages, file (got {given or 'none'})")
    messages = d.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                                       for m in messages):
            raise EvalError(f"{src}: {where}.messages: expected a list of {{role, content}} mappings")
    params = d.get("params") or {}
    if not isinstance(params, dict):
        raise EvalError(f"{src}: {where}.params: expected a mapping (temperature, max_tokens, stop, ...)")
    return PromptConfig(id=str(_required(d, "id", src, where)), template=d.get("template"), messages=messages,
                        file=d.get("file"), params=params)


def _provider(d: Any, src: str, where: str) -> ProviderConfig:
    d = _mapping(d, src, where, "{id, type, model, ...}")
    _no_unknown(d, {"id", "type", "model", "base_url", "api_key_env", "params", "price", "adapter", "judge_only", "chat",
                    "structured_output", "dtype", "engine"}, src, where + ".")
    ptype = d.get("type", "openai")
    if ptype not in ("openai", "tunelab"):
        raise EvalError(f"{src}: {where}.type: expected 'openai' or 'tunelab', got {ptype!r}")
    if ptype == "openai" and not d.get("base_url"):
        raise EvalError(f"{src}: {where}.base_url: required for type openai (e.g. http://127.0.0.1:8000/v1)")
    params = d.get("params") or {}
    if not isinstance(params, dict):
        raise EvalError(f"{src}: {where}.params: expected a mapping (temperature, max_tokens, stop, ...)")
    price = None
    if d.get("price") is not None:
        pd = _mapping(d["price"], src, where + ".price", "{input_per_1m, output_per_1m}")
        _no_unknown(pd, {"input_per_1m", "output_per_1m"}, src, where + ".price.")
        price = Price(**{k: _number(pd, k, src, where + ".price.") for k in pd})
    return ProviderConfig(id=str(_required(d, "id", src, where)), type=ptype, model=str(_required(d, "model", src, where)),
                          base_url=d.get("base_url"), api_key_env=d.get("api_key_env"), params=params, price=price,
                          adapter=d.get("adapter"), judge_only=bool(d.get("judge_only", False)),
                          chat=_optional_bool(d, "chat", src, where),
                          structured_output=_optional_bool(d, "structured_output", src, where),
                          dtype=_dtype(d, ptype, src, where), engine=_engine_options(d, ptype, src, where))


ENGINE_OPTIONS = {"enable_prefix_caching": bool, "max_num_seqs": int, "max_model_len": int, "kv_cache_memory": int,
                  "block_size": int, "max_num_batched_tokens": int, "max_prefill_chunk": int}


def _dtype(d: dict[str, Any], ptype: str, src: str, where: str) -> str | None:
    value = d.get("dtype")
    if value is None:
        return None
    if ptype != "tunelab":
        raise EvalError(f"{src}: {where}.dtype: only for type tunelab (an endpoint chooses its own precision)")
    if value not in ("float32", "bfloat16", "float16"):
        raise EvalError(f"{src}: {where}.dtype: expected float32, bfloat16 or float16, got {value!r}")
    return value


def _engine_options(d: dict[str, Any], ptype: str, src: str, where: str) -> dict[str, Any]:
    """`engine:` of a tunelab provider: options of tunelab.engine.LLM, each checked by name and type."""
    if d.get("engine") is None:
        return {}
    if ptype != "tunelab":
        raise EvalError(f"{src}: {where}.engine: only for type tunelab (the in-process engine's options)")
    options = _mapping(d["engine"], src, where + ".engine", "{enable_prefix_caching, max_num_seqs, ...}")
    _no_unknown(options, set(ENGINE_OPTIONS), src, where + ".engine.")
    for key, value in options.items():
        kind = ENGINE_OPTIONS[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
            expected = "true or false" if kind is bool else "a positive integer"
            raise EvalError(f"{src}: {where}.engine.{key}: expected {expected}, got {value!r}")
    return dict(options)


def _optional_bool(d: dict[str, Any], key: str, src: str, where: str) -> bool | None:
    value = d.get(key)
    if value is not None and not isinstance(value, bool):
        raise EvalError(f"{src}: {where}.{key}: expected true or false, got {value!r}")
    return value


def _metric(d: Any, src: str, where: str) -> MetricConfig:
    if isinstance(d, str):
        return MetricConfig(name=d)
    d = _mapping(d, src, where, "a metric name or {name, ...options}")
    name = str(_required(d, "name", src, where))
    return MetricConfig(name=name, id=str(d.get("id") or name),
                        options={k: v for k, v in d.items() if k not in ("name", "id")})


def _judge(d: Any, src: str, where: str) -> JudgeConfig:
    d = _mapping(d, src, where, "{id, type, provider, ...}")
    _no_unknown(d, {"id", "type", "provider", "rubric", "scale", "threshold", "compare", "params", "variants",
                    "max_parse_failure_rate", "steps", "top_logprobs", "n_samples"}, src, where + ".")
    j = JudgeConfig(id=str(_required(d, "id", src, where)), type=str(_required(d, "type", src, where)),
                    provider=str(_required(d, "provider", src, where)))
    if "rubric" in d:
        j.rubric = str(d["rubric"])
    if "scale" in d:
        s = d["scale"]
        if not (isinstance(s, list) and len(s) == 2 and all(isinstance(x, int) for x in s) and s[0] < s[1]):
            raise EvalError(f"{src}: {where}.scale: expected [low, high] integers, got {s!r}")
        j.scale = (s[0], s[1])
    if d.get("threshold") is not None:
        j.threshold = _number(d, "threshold", src, where + ".")
    if "compare" in d:
        j.compare = [str(x) for x in d["compare"]] if isinstance(d["compare"], list) else None
    if "params" in d:
        j.params = dict(_mapping(d["params"], src, where + ".params", "a mapping"))
    j.variants = _patterns(d, "variants", src, where + ".")
    if d.get("max_parse_failure_rate") is not None:
        j.max_parse_failure_rate = float(_number(d, "max_parse_failure_rate", src, where + "."))
    if "steps" in d:
        if not (isinstance(d["steps"], list) and all(isinstance(x, str) for x in d["steps"])):
            raise EvalError(f"{src}: {where}.steps: expected a list of strings, got {d['steps']!r}")
        j.steps = list(d["steps"])
    for key in ("top_logprobs", "n_samples"):
        if key in d:
            if not isinstance(d[key], int) or isinstance(d[key], bool):
                raise EvalError(f"{src}: {where}.{key}: expected an integer, got {d[key]!r}")
            setattr(j, key, d[key])
    return j


def _patterns(d: dict[str, Any], key: str, src: str, prefix: str) -> list[str] | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
        raise EvalError(f"{src}: {prefix}{key}: expected a list of variant patterns like \"*@lora\" or \"few-shot@*\"")
    return value


def _list(d: dict[str, Any], key: str, src: str, required: bool = False) -> list[Any]:
    value = d.get(key)
    if value is None:
        if required:
            raise EvalError(f"{src}: field {key!r} is required")
        return []
    if not isinstance(value, list):
        raise EvalError(f"{src}: field {key!r}: expected a list")
    return value


def _mapping(d: Any, src: str, where: str, expected: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise EvalError(f"{src}: {where}: expected {expected}, got {d!r}")
    return d


def _required(d: dict[str, Any], key: str, src: str, where: str) -> Any:
    if d.get(key) in (None, ""):
        raise EvalError(f"{src}: {where}.{key}: required")
    return d[key]


def _number(d: dict[str, Any], key: str, src: str, prefix: str, default: float | None = None) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EvalError(f"{src}: {prefix}{key}: expected a number, got {value!r}")
    return value


def _no_unknown(d: dict[str, Any], allowed: set[str], src: str, prefix: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise EvalError(f"{src}: {prefix}{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
