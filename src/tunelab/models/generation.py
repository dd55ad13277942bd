"""Simple, correct generation with a contiguous KV cache: prefill once, then one
token per step. The engine (tunelab.engine) is the fast, batched path; this one is
the reference it is tested against and what `tunelab generate` uses.

Both paths share one inference vocabulary: the EOS set (`eos_token_ids`), the
engine's sampler (temperature / top-k / top-p draws) and the engine's incremental
detokenizer (the one stop-string search)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tunelab.models.config import ModelError
from tunelab.models.transformer import KVCache, Transformer


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | None = field(default=None)  # the stop string that ended it, if any


def generate(
    model: Transformer,
    tokenizer,
    prompt: str | list[int],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: list[str] | None = None,
) -> Generation:
    """Generate a completion for one prompt (text, or token ids used as given)."""
    from tunelab.engine.detokenizer import IncrementalDetokenizer

    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    eos = eos_token_ids(model, tokenizer)
    detok = IncrementalDetokenizer(tokenizer, [s for s in (stop or []) if s])
    out: list[int] = []
    finish = "length"
    for token in stream_token_ids(model, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed, eos):
        if token in eos:
            finish = "stop"
            break
        out.append(token)
        detok.add(token)
        if detok.stop_hit is not None:
            return Generation(detok.text, out, "stop", len(prompt_ids), len(out), detok.stop_hit)
    return Generation(detok.final_text(), out, finish, len(prompt_ids), len(out))


def eos_token_ids(model: Transformer, tokenizer) -> set[int]:
    """The tokens that end a generation: the config's EOS ids and the tokenizer's EOS (chat models often differ)."""
    eos = set(model.config.eos_token_ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return eos


@torch.inference_mode()
def stream_token_ids(model, prompt_ids, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=None, eos=()):
    """Yield new token ids one at a time (EOS included, then stop)."""
    if not prompt_ids:
        raise ModelError("empty prompt: at least one token is needed")
    limit = model.config.max_position_embeddings
    if len(prompt_ids) >= limit:
        raise ModelError(f"prompt has {len(prompt_ids)} tokens; the model's context is {limit}")
    max_new_tokens = min(max_new_tokens, limit - len(prompt_ids))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = _generator(seed, device)
    cache = KVCache(model.config, 1, len(prompt_ids) + max_new_tokens, dtype=dtype, device=device)
    ids = torch.tensor([prompt_ids], device=device)
    logits = model(ids, cache=cache)[:, -1]
    for _ in range(max_new_tokens):
        token = int(sample(logits, temperature, top_p, top_k, generator)[0])
        yield token
        if token in eos:
            return
        logits = model(torch.tensor([[token]], device=device), cache=cache)[:, -1]


def sample(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0, generator=None) -> torch.Tensor:
    """One token per row of `logits` [batch, vocab]. temperature 0 = greedy. The draw is the engine's own."""
    if temperature <= 0:
        return logits.argmax(-1)
    from tunelab.engine.sampler import _draw

    rows = logits.float().reshape(-1, logits.shape[-1])
    return torch.tensor([_draw(row, temperature, top_k, top_p, generator) for row in rows], device=logits.device)


def _generator(seed, device):
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@torch.inference_mode()
def perplexity(model: Transformer, token_ids: list[int], window: int = 512) -> float:
    """exp(mean next-token negative log-likelihood) of `token_ids`, scored in non-overlapping windows (each window
    sees only itself). The check that a cheaper dtype or a quantised build still models text as well."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = torch.tensor([token_ids[start : start + window + 1]], device=device)
        if chunk.shape[1] < 2:
            break
        logits = model(chunk[:, :-1]).float()
        nll += float(torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    if count == 0:
        raise ModelError("perplexity needs at least two tokens")
    return math.exp(nll / count)
