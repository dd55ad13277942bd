"""Metric values against the reference libraries called directly."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.evals.config import MetricConfig
from tunelab.evals.errors import EvalError
from tunelab.evals.metrics import Metric, MetricInput, check_metric, normalize

PAIRS = [
    ("The quick brown fox jumps over the lazy dog.", "A quick brown fox jumped over a lazy dog"),
    ("Paris is the capital of France", "The capital of France is Paris"),
    ("completely unrelated words here", "Paris"),
    ("", "empty output against a reference"),
]


def score(name: str, output: str, reference=None, **options) -> float | None:
    return Metric(MetricConfig(name=name, options=options)).score([MetricInput(output, reference, {})])[0]


@pytest.mark.parametrize("name,rtype", [("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")])
def test_rouge_equals_rouge_score(name, rtype):
    scorer = rouge_scorer.RougeScorer([rtype])
    for out, ref in PAIRS:
        assert score(name, out, ref) == scorer.score(ref, out)[rtype].fmeasure
    stem = rouge_scorer.RougeScorer([rtype], use_stemmer=True)
    out, ref = PAIRS[0]
    assert score(name, out, ref, use_stemmer=True) == stem.score(ref, out)[rtype].fmeasure


def test_bleu_and_chrf_equal_sacrebleu_sentence_scores():
    for out, ref in PAIRS:
        assert score("bleu", out, ref) == sacrebleu.sentence_bleu(out, [ref]).score
        assert score("chrf", out, ref) == sacrebleu.sentence_chrf(out, [ref]).score



def test_several_references_aggregate_by_mean_or_max():
    refs = ["The cat sat.", "A cat was sitting on the mat."]
    each = [sacrebleu.sentence_bleu("The cat sat.", [r]).score for r in refs]
    assert score("bleu", "The cat sat.", refs) == pytest.approx(sum(each) / 2)
    assert score("bleu", "The cat sat.", refs, multi_reference="max") == max(each)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rl = [scorer.score(r, "the cat sat")["rougeL"].fmeasure for r in refs]
    assert score("rouge_l", "the cat sat", refs) == pytest.approx(sum(rl) / 2)
    assert score("rouge_l", "the cat sat", refs, multi_reference="max") == max(rl)
    # A list of acceptable answers: any one matching is a match, unless told to average.
    assert score("exact_match", "rome", ["Roma", "Rome"]) == 1.0
    assert score("exact_match", "rome", ["Roma", "Rome"], multi_reference="mean") == 0.5
    m = Metric(MetricConfig(name="rouge_l", options={"multi_reference": "max"}))
    assert m.multi_reference == "max" and m.describe() == "rouge_l (refs: max)"
    assert Metric(MetricConfig(name="length")).multi_reference is None
    with pytest.raises(EvalError, match=r"m\[0\]\.multi_reference: expected 'mean' or 'max'"):
        check_metric(MetricConfig(name="bleu", options={"multi_reference": "median"}), where="m[0]")


def test_reference_metrics_skip_rows_without_reference():
    assert score("exact_match", "Paris", None) is None
    assert score("rouge_l", "Paris", None) is None and score("bleu", "Paris", None) is None


def test_exact_match_normalizes_case_whitespace_punctuation():
    assert normalize("  The  Eiffel-Tower!\n") == "the eiffel tower"
    assert score("exact_match", "paris.", "Paris") == 1.0
    assert score("exact_match", "Paris, France", "Paris") == 0.0
    assert score("exact_match", "rome", ["Roma", "Rome"]) == 1.0


def test_string_and_json_checks():
    assert score("contains", "It is Paris.", "Paris") == 1.0
    assert score("contains", "it is paris", "Paris") == 0.0
    assert score("contains", "it is paris", "Paris", ignore_case=True) == 1.0
    assert score("contains", "ok: yes", value=["yes", "no"]) == 1.0
    assert score("regex", "Paris", pattern=r"^[A-Z]\w+$") == 1.0 and score("regex", "paris", pattern="^[A-Z]") == 0.0
    assert score("json_valid", '{"a": 1}') == 1.0 and score("json_valid", "{a: 1}") == 0.0
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    assert score("json_schema", '{"city": "Paris"}', schema=schema) == 1.0
    assert score("json_schema", '{"city": 3}', schema=schema) == 0.0
    assert score("json_schema", "not json", schema=schema) == 0.0
    assert score("length", "two words") == 9.0 and score("length", "two words", unit="words") == 2.0


def test_call_metrics_read_the_call_record():
    x = MetricInput("out", None, {}, latency_s=0.25, prompt_tokens=10, completion_tokens=3, cost=1e-6)
    got = {n: Metric(MetricConfig(name=n)).score([x])[0] for n in ("latency", "prompt_tokens", "completion_tokens", "cost")}
    assert got == {"latency": 0.25, "prompt_tokens": 10.0, "completion_tokens": 3.0, "cost": 1e-6}


def test_embedding_cosine_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer, util

    from tunelab.evals.metrics import default_embedding_model_path

    model = SentenceTransformer(default_embedding_model_path(), device="cpu")
    out, ref = PAIRS[1]
    expected = float(util.cos_sim(model.encode(out), model.encode(ref))[0][0])
    assert score("embedding", out, ref) == pytest.approx(expected, abs=1e-5)
    assert score("embedding", out, ref) > score("embedding", PAIRS[2][0], PAIRS[2][1])


def test_metric_config_errors_name_the_field():
    with pytest.raises(EvalError, match=r"m\[0\]\.name: unknown metric 'bleurt'"):
        check_metric(MetricConfig(name="bleurt"), where="m[0]")
    with pytest.raises(EvalError, match=r"m\[0\]\.pattern: required"):
        check_metric(MetricConfig(name="regex"), where="m[0]")
    with pytest.raises(EvalError, match=r"m\[0\]\.path: expected 'file.py:function'"):
        check_metric(MetricConfig(name="python", options={"path": "x.py"}), where="m[0]")


def test_rouge_l_beta_and_whitespace_tokens_follow_the_coco_caption_formula():
    # coco-caption's ROUGE-L: LCS precision P and recall R on whitespace tokens, F = (1+b²)PR / (R + b²P), b = 1.2.
    out, ref = "i do n't think so , sadly", "i think so too , sadly ."
    c, r = out.split(), ref.split()
    lcs = 5  # i think so , sadly
    p, rec = lcs / len(c), lcs / len(r)
    expected = (1 + 1.44) * p * rec / (rec + 1.44 * p)
    assert score("rouge_l", out, ref, beta=1.2, tokenize="whitespace") == pytest.approx(expected)
    with pytest.raises(EvalError, match=r"m\[0\]\.tokenize: expected"):
        check_metric(MetricConfig(name="rouge_l", options={"tokenize": "nltk"}), where="m[0]")


def test_metrics_register_themselves_and_everything_reads_the_registry(monkeypatch):
    from tunelab.evals import metrics as registry

    # A metric registered from outside is checked, scored, cached and classed like the built-in ones.
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))

    @registry.metric("starts_upper", version=3, options={"strict": registry._one_of("yes", "no")}, binary=True)
    def _starts_upper(m):
        return lambda x: float(x.output[:1].isupper())

    check_metric(MetricConfig(name="starts_upper", options={"strict": "yes"}), where="m[0]")
    with pytest.raises(EvalError, match=r"m\[0\]\.strict: expected 'yes' or 'no', got 'maybe'"):
        check_metric(MetricConfig(name="starts_upper", options={"strict": "maybe"}), where="m[0]")
    assert score("starts_upper", "Paris") == 1.0 and score("starts_upper", "paris") == 0.0
    assert registry.is_binary("starts_upper") and not registry.is_reference_based("starts_upper")
    assert Metric(MetricConfig(name="starts_upper")).multi_reference is None


def test_cache_keys_are_name_options_version_and_extra():
    import hashlib
    import json

    # The result cache written by earlier versions stays valid: the key's recipe is fixed.
    m = Metric(MetricConfig(name="rouge_l", options={"beta": 1.2}))
    recipe = {"name": "rouge_l", "options": {"beta": 1.2}, "version": 2, "extra": ""}
    assert m.key == hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def test_metrics_do_not_import_the_config():
    import ast
    import inspect

    from tunelab.evals import metrics as registry

    # config.py checks metrics through the registry; the registry must not import config.py back
    # (a circle), neither at the top nor late inside a function. Type names under TYPE_CHECKING only.
    tree = ast.parse(inspect.getsource(registry))
    guarded = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in guarded}
    assert "tunelab.evals.config" not in imported
