"""GGUF in: tunelab's loader against transformers' own GGUF loading of the same file.

Each test writes a tiny GGUF with gguf.GGUFWriter (tests/gguf_files.py). The oracle is
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` and `AutoTokenizer` on the
same file: logits within 1e-4 in float32, identical token ids, identical chat strings.
"""

from __future__ import annotations

import json

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf_files import RAW_SCALE_OFFSETS, hf_model, write_gguf

from tunelab.models import ModelError, convert_gguf, load_pretrained

SAMPLE = "Hello  world!\n\n\tcafé naïve 東京 🙂 def f(x):\n    return x**2   # 12345 and 3.14\n\n\n  end"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo, 1 + 1?"}]
# gguf.quants.quantize writes these; the K-quants, IQ types and NVFP4 it only reads, so those are
# written as random blocks with sane scales (RAW_SCALE_OFFSETS). Together: every type it dequantises.
QUANTISABLE = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.TQ1_0, Q.TQ2_0, Q.MXFP4]


def _transformers(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _logits(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return getattr(out, "logits", out)


def _assert_same_model(path):
    model, tok = load_pretrained(path)
    ref, ref_tok = _transformers(path)
    ids = ref_tok(SAMPLE).input_ids
    assert tok.encode(SAMPLE) == ids
    assert (_logits(model, ids) - _logits(ref, ids)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("qtype", QUANTISABLE + sorted(RAW_SCALE_OFFSETS), ids=lambda q: q.name)
def test_every_tensor_type_gives_transformers_logits(tmp_path, qtype):
    _assert_same_model(write_gguf(tmp_path / f"tiny-{qtype.name}.gguf", "llama", qtype))


def test_the_tests_cover_every_type_the_package_dequantises():
    from gguf.quants import _type_traits  # the package's registry of block types

    assert {Q.F32, Q.F16, *_type_traits} == set(QUANTISABLE) | set(RAW_SCALE_OFFSETS)


@pytest.mark.parametrize(
    "family, qtype, tokenizer, tie",
    [("llama", Q.Q8_0, "gpt2:llama-bpe", False), ("mistral", Q.Q4_0, "llama", False), ("qwen2", Q.Q8_0, "gpt2:qwen2", True)],
)
def test_families(tmp_path, family, qtype, tokenizer, tie):
    path = write_gguf(tmp_path / f"{family}.gguf", family, qtype, tokenizer, tie=tie, name=f"tiny {family}")
    _assert_same_model(path)
    model, _ = load_pretrained(path)
    assert model.config.model_type == family and model.config.tie_word_embeddings is tie


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 6.0,
                  "original_max_position_embeddings": 128}  # fmt: skip


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 2.0}, LLAMA3_SCALING], ids=["linear", "llama3"])
def test_llama_rows_and_rope_scaling_match_the_hf_model(tmp_path, scaling):
    # F32 round trip: the model the GGUF was written from is the oracle (transformers' GGUF loader
    # reads no RoPE scaling). Llama 3's scaling arrives as llama.cpp's rope_freqs tensor.
    path = write_gguf(tmp_path / "f32.gguf", "llama", Q.F32, tie=False, rope_scaling=scaling)
    model, tok = load_pretrained(path)
    original = hf_model("llama", tok.vocab_size, tie=False, seed=0, rope_scaling=scaling)
    assert model.config.rope_scaling["rope_type"] == scaling["rope_type"]
    ids = tok.encode(SAMPLE * 4)
    assert len(ids) > 128  # past the original length, where the scaling matters
    assert (_logits(model, ids) - _logits(original, ids)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("tokenizer", ["gpt2:default", "gpt2:smollm", "gpt2:llama-bpe", "gpt2:qwen2", "llama"])
def test_tokenizer_and_chat_template_match_transformers(tmp_path, tokenizer):
    path = write_gguf(tmp_path / "tok.gguf", "llama", Q.Q8_0, tokenizer)
    _, tok = load_pretrained(path)
    _, ref = _transformers(path)
    for text in (SAMPLE, " leading space", "<|im_start|>user\nhi<|im_end|>", ""):
        assert tok.encode(text) == ref(text).input_ids, text
        assert tok.decode(tok.encode(text)) == ref.decode(ref(text).input_ids, skip_special_tokens=True)
    assert tok.apply_chat_template(MESSAGES) == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert (tok.bos_token_id, tok.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_writes_a_directory_transformers_loads(tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_gguf(tmp_path / "m.gguf", "llama", Q.Q4_1, "gpt2:smollm")
    out = convert_gguf(path, tmp_path / "hf", dtype=dtype)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    ref, ref_tok = _transformers(path)
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    assert hf.dtype == getattr(torch, dtype)
    ids = ref_tok(SAMPLE).input_ids
    assert hf_tok(SAMPLE).input_ids == ids
    assert hf_tok.apply_chat_template(MESSAGES, tokenize=False) == ref_tok.apply_chat_template(MESSAGES, tokenize=False)
    tol = 1e-4 if dtype == "float32" else 0.5
    assert (_logits(hf.float(), ids) - _logits(ref, ids)).abs().max().item() <= tol
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_convert_refuses_a_non_empty_output_directory(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        convert_gguf(path, tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------- bad input
def test_a_truncated_file_is_a_clear_error(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    for keep in (0.005, 0.5, 0.999):
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(whole[: int(len(whole) * keep)])
        with pytest.raises(ModelError, match=rf"cut-{keep}\.gguf: truncated or corrupt GGUF file"):
            load_pretrained(cut)


def test_a_missing_gguf_file_is_not_taken_for_a_hub_id():
    with pytest.raises(ModelError, match=r"models/x\.gguf: no such file"):
        load_pretrained("models/x.gguf")


def test_a_file_that_is_not_gguf(tmp_path):
    (tmp_path / "x.gguf").write_text("hello")
    with pytest.raises(ModelError, match=r"x\.gguf: not a GGUF file"):
        load_pretrained(tmp_path / "x.gguf")


def test_an_unknown_architecture_lists_the_supported_ones(tmp_path):
    path = write_gguf(tmp_path / "falcon.gguf", arch="falcon")
    with pytest.raises(ModelError, match=r"falcon\.gguf: architecture 'falcon'.*llama, mistral, qwen2"):
        load_pretrained(path)


def test_an_unsupported_tensor_type_names_the_tensor(tmp_path):
    import numpy as np

    f64 = np.zeros((256, 256), dtype=np.float64)  # GGUF has F64, gguf.quants cannot dequantise it
    path = write_gguf(tmp_path / "f64.gguf", replace={"blk.1.ffn_up.weight": f64})
    with pytest.raises(ModelError, match=r"f64\.gguf: tensor 'blk\.1\.ffn_up\.weight' has type F64"):
        load_pretrained(path)


@pytest.mark.parametrize("key, tokenizer", [("tokenizer.ggml.tokens", "llama"), ("tokenizer.ggml.merges", "gpt2:smollm")])
def test_a_missing_tokenizer_key_is_named(tmp_path, key, tokenizer):
    path = write_gguf(tmp_path / "notok.gguf", tokenizer=tokenizer, omit=(key,))
    with pytest.raises(ModelError, match=rf"notok\.gguf: missing metadata key '{key}'"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["notok.gguf"]
