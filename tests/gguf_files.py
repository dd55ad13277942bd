"""Tiny GGUF files written with ggml-org's `gguf.GGUFWriter`, the way llama.cpp's
convert_hf_to_gguf writes them: a random transformers model, its tensors renamed with
gguf-py's own name map, Q/K rows permuted for the llama architecture, 2-D weights
quantised (norms stay F32), and the tokenizer stored as metadata.

`write_gguf(path, family, qtype, tokenizer)`; `family` is llama | mistral | qwen2,
`tokenizer` is "gpt2:<pre>" (byte-level BPE with merges) or "llama" (SentencePiece-style
with scores and byte fallback).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q

from tiny_models import CHATML, CORPUS

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Shapes divisible by 256 so every block size (32 for Q*_0/1, 256 for K-quants) fits.
DIMS = dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=50000.0)  # fmt: skip
# Types the gguf package dequantises but cannot quantise: written as random blocks whose fp16
# scales (at these byte offsets of ggml's block structs) are set to small finite values.
RAW_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
                     Q.IQ2_XXS: (0,), Q.IQ2_XS: (0,), Q.IQ2_S: (0,), Q.IQ3_XXS: (0,), Q.IQ3_S: (0,), Q.IQ1_S: (0,),
                     Q.IQ4_NL: (0,), Q.IQ4_XS: (0,), Q.IQ1_M: (), Q.NVFP4: ()}  # fmt: skip


def write_gguf(path: str | Path, family: str = "llama", qtype: Q = Q.F32, tokenizer: str = "gpt2:smollm",
               tie: bool = True, seed: int = 0, name: str | None = None, rope_scaling: dict | None = None,
               arch: str | None = None, omit: tuple[str, ...] = (), replace: dict | None = None) -> Path:  # fmt: skip
    """`arch` overrides general.architecture, `omit` leaves out tokenizer keys, `replace` swaps
    a tensor's data by GGUF name (for the error tests)."""
    path = Path(path)
    tok = gpt2_vocab(tokenizer.split(":", 1)[1]) if tokenizer.startswith("gpt2") else sentencepiece_vocab()
    model = hf_model(family, len(tok["tokens"]), tie, seed, rope_scaling)
    arch = arch or ("qwen2" if family == "qwen2" else "llama")  # llama.cpp writes Mistral as llama
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name or f"tiny {family}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if rope_scaling and rope_scaling["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_scaling["factor"])
    elif rope_scaling:  # llama3: llama.cpp stores each frequency's divisor as a tensor
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg.hidden_size // cfg.num_attention_heads,
                                                              cfg.rope_parameters["rope_theta"], rope_scaling))
    w.add_vocab_size(len(tok["tokens"]))
    w.add_file_type(int(qtype) if qtype in (Q.F32, Q.F16) else 7)
    write_tokenizer(w, tok, omit)
    for name_, data, raw in gguf_tensors(model, arch, qtype, seed):
        if replace and name_ in replace:
            data, raw = replace[name_], None
        w.add_tensor(name_, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_model(family: str, vocab: int, tie: bool, seed: int, rope_scaling: dict | None = None):
    import transformers

    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
    extra = {"sliding_window": None} if family == "mistral" else {}
    if rope_scaling:
        extra["rope_scaling"] = rope_scaling
    config = getattr(transformers, f"{cls}Config")(vocab_size=vocab, tie_word_embeddings=tie, **DIMS, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n else 0.08 * torch.randn_like(p))
    return model.eval()


def gguf_tensors(model, arch: str, qtype: Q, seed: int):
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA,
                                     model.config.num_hidden_layers)  # fmt: skip
    cfg = model.config
    rng = np.random.default_rng(seed)
    for hf_name, t in model.state_dict().items():
        if cfg.tie_word_embeddings and hf_name == "lm_head.weight":
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base) + "." + suffix
        data = t.float().numpy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            data = permute(data, cfg.num_attention_heads)
        elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            data = permute(data, cfg.num_key_value_heads)
        if data.ndim == 1 or qtype == Q.F32:
            yield name, data.astype(np.float32), None
        elif qtype == Q.F16:
            yield name, data.astype(np.float16), None
        elif qtype in RAW_SCALE_OFFSETS:
            yield name, random_blocks(data.shape, qtype, rng), qtype
        else:
            yield name, gguf.quants.quantize(data, qtype), qtype


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    # convert_hf_to_gguf's LlamaModel.generate_extra_tensors, from Meta's Llama 3.1 formula.
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    old_len, low, high = scaling["original_max_position_embeddings"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < old_len / high:
            factors.append(1.0)
        elif wavelen > old_len / low:
            factors.append(scaling["factor"])
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / scaling["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf's LlamaModel.permute: each head's two rotate-half halves interleaved row by row.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(shape: tuple[int, int], qtype: Q, rng) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // block, size), dtype=np.uint8)
    for offset in RAW_SCALE_OFFSETS[qtype]:
        scale = rng.uniform(2e-4, 1e-3, size=len(blocks)).astype(np.float16)
        blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    if qtype == Q.IQ1_M:  # its fp16 scale is spread over the top nibbles of the last four uint16s
        blocks[:, -1] = (blocks[:, -1] & 0x0F) | 0x10  # sign 0, small exponent
    if qtype == Q.NVFP4:  # four unsigned e4m3 sub-block scales first
        blocks[:, :4] = rng.integers(0x20, 0x38, size=(len(blocks), 4), dtype=np.uint8)
    return blocks.reshape(shape[0], -1)


# ---------------------------------------------------------------------------- tokenizers
@cache
def gpt2_vocab(pre: str) -> dict:
    """A byte-level BPE trained with the pre-tokenizer `pre` names, as its real vocabularies are."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from tunelab.models.gguf_tokenizer import PRE_TOKENIZERS

    tok = Tokenizer(models.BPE())
    regex = PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex is None or regex == "digits")
    if regex == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif regex is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return dict(model="gpt2", pre=pre, tokens=tokens, merges=merges, types=[3 if t in SPECIALS else 1 for t in tokens],
                bos=1, eos=2, pad=2, unk=0, add_bos=False)  # fmt: skip


@cache
def sentencepiece_vocab() -> dict:
    """A SentencePiece-style vocabulary as Llama 2's GGUF files have it: <unk> <s> </s>, the 256
    byte tokens, then ▁-marked pieces scored by merge order (earlier = higher)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=[]))
    import json

    model = json.loads(tok.to_str())["model"]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = specials + byte_tokens + [p for p in pieces if p not in specials]
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(tokens) - len(specials) - 256)]
    types = [2, 3, 3, 3, 3] + [6] * 256 + [1] * (len(tokens) - len(specials) - 256)
    return dict(model="llama", tokens=tokens, scores=scores, types=types, bos=1, eos=2, pad=None, unk=0, add_bos=True)


def write_tokenizer(w, tok: dict, omit: tuple[str, ...] = ()) -> None:
    w.add_tokenizer_model(tok["model"])
    if "pre" in tok:
        w.add_tokenizer_pre(tok["pre"])
    if "tokenizer.ggml.tokens" not in omit:
        w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if "merges" in tok and "tokenizer.ggml.merges" not in omit:
        w.add_token_merges(tok["merges"])
    if "scores" in tok:
        w.add_token_scores(tok["scores"])
    w.add_bos_token_id(tok["bos"])
    w.add_eos_token_id(tok["eos"])
    w.add_unk_token_id(tok["unk"])
    if tok["pad"] is not None:
        w.add_pad_token_id(tok["pad"])
    w.add_add_bos_token(tok["add_bos"])
    w.add_chat_template(CHATML)
