"""The incremental detokenizer against one-shot decoding (the `tokenizers` library's own `decode`)."""

import random

import pytest
from tiny_models import make_tokenizer

from tunelab.engine.detokenizer import IncrementalDetokenizer
from tunelab.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    make_tokenizer().save_pretrained(path)
    return Tokenizer.from_dir(path)


def test_streamed_text_equals_one_shot_decode_on_random_tokens(tok):
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        detok = IncrementalDetokenizer(tok)
        deltas = []
        for t in ids:
            detok.add(t)
            deltas.append(detok.delta(final=False))
        text = detok.final_text()
        deltas.append(detok.delta(final=True))
        assert text == "".join(deltas) == tok.decode(ids)


def test_stop_string_cut_and_never_half_streamed(tok):
    ids = tok.encode("Hello, how are you today? I am fine", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, stop=["you today", "zzz"])
    streamed = ""
    for t in ids:
        detok.add(t)
        streamed += detok.delta(final=False)
        assert "you" not in streamed
        if detok.stop_hit:
            break
    assert detok.stop_hit == "you today"
    assert streamed + detok.delta(final=True) == detok.final_text() == "Hello, how are "
