"""G-Eval and structured judging on tunelab's own engine: a tiny random judge model, served by
`tunelab serve` on loopback and run in-process. The probability-weighted score must be the one
computed by hand from transformers' logits for the same prompt (the oracle)."""

from __future__ import annotations

import json

import pytest
import torch
from eval_helpers import serve_subprocess
from tiny_models import FAMILIES, VOCAB, make_tokenizer

from tunelab.evals.config import EvalConfig
from tunelab.evals.geval import config_for, geval_messages
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store

SCALE = (1, 5)
TOP = 20


@pytest.fixture(scope="module")
def scoring_judge(tmp_path_factory):
    """A tiny random llama whose output rows for '1'..'5' are scaled up, so score tokens reach the
    top 20 (a model that has learned to answer with a score); everything else is random."""
    import transformers

    path = tmp_path_factory.mktemp("scoring-judge")
    spec = {k: v for k, v in FAMILIES["llama"].items() if k not in ("template", "model_type")}
    # Judge prompts are long in a 384-token vocabulary: room for 4096 positions (RoPE, nothing learned).
    config = transformers.LlamaConfig(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                                      **dict(spec, max_position_embeddings=4096))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    tok = make_tokenizer(FAMILIES["llama"]["template"])
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(SCALE[0], SCALE[1] + 1)]
    with torch.no_grad():
        model.lm_head.weight[digits] *= 8
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _config(tmp_path, ckpt, judges, providers=()):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"topic": t, "reference": t.upper()}) + "\n"
                                                 for t in ("fox", "Paris", "LoRA")))
    return EvalConfig.from_dict({
        "dataset": "data.jsonl",
        "prompts": [{"id": "p", "template": "Tell me about {{ topic }}"}],
        "providers": [{"id": "local", "type": "tunelab", "model": str(ckpt), "params": {"max_tokens": 6}},
                      *providers],
        "metrics": ["length"],
        "judges": judges,
    }, source="eval.yaml", base_dir=tmp_path)


def _oracle_score(model, tok, messages):
    """Greedy decoding with transformers; at the first position whose top-20 holds a score token,
    Σ s·p(s) renormalised over the score tokens there (Liu et al. 2023, Eq. 1)."""
    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)
    for _ in range(5):
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        top = torch.topk(logprobs, TOP)
        mass = {}
        for lp, tid in zip(top.values.tolist(), top.indices.tolist()):
            text = tok.decode([tid]).strip()
            if text.isdigit() and SCALE[0] <= int(text) <= SCALE[1]:
                mass[int(text)] = mass.get(int(text), 0.0) + torch.tensor(lp).exp().item()
        if mass:
            return sum(s * p for s, p in mass.items()) / sum(mass.values())
        ids.append(int(top.indices[0]))
    raise AssertionError("no score token in the oracle's top 20")


def test_geval_through_tunelab_serve_and_in_process_equals_the_oracle(tmp_path, scoring_judge):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    geval = {"type": "geval", "rubric": "Relevance: does the answer address the topic?",
             "steps": ["Read the question.", "Read the answer.", "Rate relevance from 1 to 5."],
             "scale": list(SCALE), "variants": ["p@local"]}
    proc, base_url = serve_subprocess(scoring_judge)
    try:
        cfg = _config(tmp_path, scoring_judge,
                      [dict(geval, id="served", provider="http"), dict(geval, id="inproc", provider="local")],
                      [{"id": "http", "type": "openai", "base_url": base_url, "model": "tiny", "judge_only": True}])
        stats = run_eval(cfg, tmp_path / "r.db")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert stats.errors == 0 and stats.geval_methods == {"served": {"logprobs": 3}, "inproc": {"logprobs": 3}}
    with Store(tmp_path / "r.db") as store:
        rows = store.results(stats.run_id)
    model = AutoModelForCausalLM.from_pretrained(scoring_judge, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(scoring_judge)
    judge = cfg.judges[0]
    for row in rows:
        messages = geval_messages(config_for(judge, "tiny"), row.rendered[0]["content"], row.output, row.reference)
        expected = _oracle_score(model, tok, messages)
        assert row.judges["served"]["score"] == pytest.approx(expected, abs=1e-4)
        assert row.judges["inproc"]["score"] == pytest.approx(expected, abs=1e-4)


def test_in_process_rubric_judge_is_parseable_because_decoding_is_constrained(tmp_path, scoring_judge):
    ckpt = scoring_judge
    rubric = {"type": "rubric", "rubric": "Is it about the topic?", "scale": [1, 5],
              "params": {"temperature": 0, "max_tokens": 256}}
    structured = run_eval(_config(tmp_path, ckpt, [dict(rubric, id="q", provider="local")]), tmp_path / "a.db")
    assert structured.structured_judges == {"q": True}
    with Store(tmp_path / "a.db") as store:
        verdicts = [r.judges["q"] for r in store.results(structured.run_id)]
    assert [v["parse_error"] for v in verdicts] == [None] * 3
    for v in verdicts:   # the reply is the schema's JSON object, not a lucky 'Score: N'
        reply = json.loads(v["raw"][0])
        assert set(reply) == {"reasoning", "score"} and v["score"] == reply["score"] and 1 <= reply["score"] <= 5

    plain = _config(tmp_path, ckpt, [dict(rubric, id="q", provider="text")],
                    [{"id": "text", "type": "tunelab", "model": str(ckpt), "judge_only": True,
                      "structured_output": False}])
    unconstrained = run_eval(plain, tmp_path / "b.db")
    assert unconstrained.structured_judges == {"q": False}
    with Store(tmp_path / "b.db") as store:
        verdicts = [r.judges["q"] for r in store.results(unconstrained.run_id)]
    # The plain-text prompt and parse: a random model never writes 'Score: N', so every verdict fails to parse.
    assert all(v["parse_error"] for v in verdicts) and all(len(v["raw"]) == 2 for v in verdicts)
