"""A `tokenizers` tokenizer rebuilt from a GGUF file's metadata.

A GGUF stores its vocabulary under llama.cpp's keys: `tokenizer.ggml.model` says which
algorithm (`gpt2`: byte-level BPE with merges; `llama`: SentencePiece-style BPE over
`▁`-marked pieces, ranked by score, with `<0xNN>` byte fallback), `tokenizer.ggml.pre`
names the pre-tokenizer regex llama.cpp uses for byte-level vocabularies, and
`token_type` marks control tokens (which must be matched whole, never split). We rebuild
the same tokenizer as a `tokenizers.Tokenizer`, so the rest of tunelab is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

from tunelab.models.config import ModelError
from tunelab.models.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tunelab.models.gguf_convert import GGUFFile

# llama.cpp's token types (llama_token_type): only these two change how text is split.
_CONTROL, _USER_DEFINED = 3, 4
# llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre` (llama-vocab.cpp). GPT-2's own regex is
# what `ByteLevel(use_regex=True)` applies; the others go through a Split first.
_GPT2 = None
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Digits one at a time, then GPT-2's regex (starcoder, smollm and friends).
_DIGITS_THEN_GPT2 = "digits"
PRE_TOKENIZERS = {
    "default": _GPT2, "gpt-2": _GPT2, "gpt2": _GPT2, "mpt": _GPT2, "olmo": _GPT2,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3, "dbrx": _LLAMA3,
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2,
    "smollm": _DIGITS_THEN_GPT2, "starcoder": _DIGITS_THEN_GPT2, "refact": _DIGITS_THEN_GPT2,
    "command-r": _DIGITS_THEN_GPT2, "codeshell": _DIGITS_THEN_GPT2,
}  # fmt: skip
TOKENIZER_MODELS = ("gpt2", "llama")
_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def tokenizer_from_gguf(f: GGUFFile) -> Tokenizer:
    kind = f.get("tokenizer.ggml.model")
    if kind not in TOKENIZER_MODELS:
        raise ModelError(
            f"{f.path}: tokenizer.ggml.model {kind!r} is not supported; tunelab reads: {', '.join(TOKENIZER_MODELS)}"
        )
    tokens: list[str] = f.get("tokenizer.ggml.tokens")
    types: list[int] = f.get("tokenizer.ggml.token_type", None) or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ModelError(f"{f.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")

    config: dict[str, Any] = {}
    for name, key in _SPECIAL_IDS.items():
        token_id = f.get(key, None)
        if token_id is not None:
            if not 0 <= token_id < len(tokens):
                raise ModelError(f"{f.path}: {key} = {token_id} is outside the vocabulary of {len(tokens)} tokens")
            config[name] = tokens[token_id]
    # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise, never to byte-level ones.
    config["add_bos_token"] = bool(f.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    config["add_eos_token"] = bool(f.get("tokenizer.ggml.add_eos_token", False))
    config["model_max_length"] = int(f.arch("context_length", 0)) or None
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = f.get("tokenizer.chat_template", None)
    if template is not None:
        config["chat_template"] = template

    if kind == "gpt2":
        backend = _byte_level(f, tokens)
    else:
        backend = _sentencepiece(f, tokens, config.get("unk_token"))
    _add_special_tokens(backend, tokens, types)
    if (post := _post_processor(config, tokens)) is not None:
        backend.post_processor = post
    return Tokenizer(backend, config, template)


def _byte_level(f: GGUFFile, tokens: list[str]) -> _HFTokenizer:
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges")]
    pre = f.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ModelError(
            f"{f.path}: tokenizer.ggml.pre {pre!r} is not supported; tunelab reads: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = _HFTokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    regex = PRE_TOKENIZERS[pre]
    if regex is _GPT2:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif regex == _DIGITS_THEN_GPT2:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(f: GGUFFile, tokens: list[str], unk: str | None) -> _HFTokenizer:
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if "tokenizer.ggml.merges" in f.metadata:
        merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges")]
    else:
        merges = _merges_from_scores(tokens, f.get("tokenizer.ggml.scores"))
    backend = _HFTokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    # SentencePiece marks word starts with ▁ and (add_space_prefix, on by default) prefixes the text with one.
    prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the pair whose joined piece scores highest; a `tokenizers` BPE model
    merges by rank. So every split of a vocabulary piece into two vocabulary pieces becomes a merge,
    ranked by the joined piece's score."""
    ids = {tok: i for i, tok in enumerate(tokens)}
    ranked = []
    for tok, score in zip(tokens, scores):
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                ranked.append((-score, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(backend: _HFTokenizer, tokens: list[str], types: list[int]) -> None:
    # Control tokens (<|im_start|>, <s>) are matched whole and skipped when decoding; user-defined
    # ones (<think>) are matched whole but kept. They are already in the vocabulary, so ids do not move.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])


def _post_processor(config: dict[str, Any], tokens: list[str]):
    ids = {tok: i for i, tok in enumerate(tokens)}
    single = ["$A"]
    special = []
    for key, flag, at_start in (("bos_token", "add_bos_token", True), ("eos_token", "add_eos_token", False)):
        tok = config.get(key)
        if config[flag] and tok is not None:
            single = [tok, *single] if at_start else [*single, tok]
            if (tok, ids[tok]) not in special:
                special.append((tok, ids[tok]))
    if not special:
        return None
    pair = single + [s if s != "$A" else "$B" for s in single]
    return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair), special_tokens=special)
