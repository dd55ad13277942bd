"""Seeded sampling is batch-invariant; stop strings end the text and are left out; penalties change the choice."""

import pytest

from tunelab.engine import LLM, EngineError, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(tiny_checkpoint("qwen2"), block_size=8)


def test_same_seed_same_text_alone_or_in_a_batch(llm):
    p = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, top_k=50, seed=11)
    (alone,) = llm.generate(["Paris is the capital of"], p)
    others = [SamplingParams(max_tokens=24, temperature=1.0, seed=s) for s in (1, 2)]
    batch = llm.generate(["Hello, how are", "Paris is the capital of", "The quick brown fox jumps"],
                         [others[0], p, others[1]])
    assert batch[1].token_ids == alone.token_ids and batch[1].text == alone.text
    (other_seed,) = llm.generate(["Paris is the capital of"], SamplingParams(max_tokens=24, temperature=1.0, seed=12))
    # The seed matters (so the equality above is not greedy decoding in disguise).
    assert alone.token_ids != other_seed.token_ids


def test_stop_string_cuts_text_and_is_excluded(llm):
    (full,) = llm.generate(["The quick brown fox"], SamplingParams(max_tokens=30))
    assert len(full.text) > 6
    stop = full.text[3:6]
    (cut,) = llm.generate(["The quick brown fox"], SamplingParams(max_tokens=30, stop=[stop, "never-there"]))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text


def test_streamed_deltas_concatenate_to_the_text(llm):
    (full,) = llm.generate(["Hello, how are"], SamplingParams(max_tokens=25))
    stop = full.text[5:8]
    seq = llm.make_sequence("Hello, how are", SamplingParams(max_tokens=25, stop=[stop]))
    llm.add_sequence(seq)
    deltas, last = [], None
    while llm.has_work():
        for out in llm.step():
            deltas.append(out.delta)
            last = out
    assert "".join(deltas) == last.text == full.text[: full.text.find(stop)]


def test_frequency_penalty_discourages_repeats(llm):
    plain = llm.generate(["The"], SamplingParams(max_tokens=40))[0].token_ids
    penalized = llm.generate(["The"], SamplingParams(max_tokens=40, frequency_penalty=2.0, presence_penalty=2.0))
    assert len(set(penalized[0].token_ids)) / len(penalized[0].token_ids) >= len(set(plain)) / len(plain)
    assert penalized[0].token_ids != plain


def test_utf8_split_across_tokens_streams_whole_characters(llm):
    # Byte-level BPE: these characters take several tokens; no delta may carry a broken character.
    from tunelab.engine.detokenizer import IncrementalDetokenizer

    text = "Ünïcödé 東京 🙂 café"
    ids = llm.tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(llm.tokenizer)
    deltas = []
    for t in ids:
        detok.add(t)
        deltas.append(detok.delta(final=False))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_bad_requests_name_the_field(llm):
    with pytest.raises(EngineError, match="temperature"):
        SamplingParams(temperature=3.0)
    with pytest.raises(EngineError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(EngineError, match="max_model_len"):
        llm.generate([[5] * 300])
    with pytest.raises(EngineError, match="adapter"):
        llm.generate(["hi"], adapter="nope")
