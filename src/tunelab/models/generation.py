"""Simple, correct generation with a contiguous KV cache: prefill once, then one
token per step. The engine (tunelab.engine) is the fast, batched path; this one is
the reference it is tested against and what `tunelab generate` uses."""

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
    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    eos = set(model.config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    stop = [s for s in (stop or []) if s]
    out: list[int] = []
    finish, stop_hit = "length", None
    for token in stream_token_ids(model, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed, eos):
        if token in eos:
            finish = "stop"
            break
        out.append(token)
        if stop:
            text = tokenizer.decode(out)
            hit = _first_stop(text, stop)
            if hit is not None:
                cut, stop_hit = hit
                return Generation(text[:cut], out, "stop", len(prompt_ids), len(out), stop_hit)
    return Generation(tokenizer.decode(out), out, finish, len(prompt_ids), len(out))


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


@torch.inference_mode()
def generate_batch_ids(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_ids: list[int] | None = None,
    pad_token_id: int = 0,
) -> list[list[int]]:
    """Greedy generation for a left-padded batch; each row stops at its own EOS."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, device=device)
    mask = torch.zeros((len(prompts), width + max_new_tokens), dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) : width] = 1
    eos = set(eos_token_ids or [])
    cache = KVCache(model.config, len(prompts), width + max_new_tokens, dtype=dtype, device=device)
    logits = model(ids, attention_mask=mask[:, :width], cache=cache)[:, -1]
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        for row, t in enumerate(tokens.tolist()):
            if not done[row]:
                outs[row].append(t)
                done[row] = t in eos
        if all(done):
            break
        mask[:, width + step] = 1
        logits = model(tokens[:, None], attention_mask=mask[:, : width + step + 1], cache=cache)[:, -1]
    return outs


def sample(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0, generator=None) -> torch.Tensor:
    """One token per row of `logits` [batch, vocab]. temperature 0 = greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already cover top_p; the first always stays.
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generator(seed, device):
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _first_stop(text: str, stops: list[str]):
    best = None
    for s in stops:
        i = text.find(s)
        if i != -1 and (best is None or i < best[0]):
            best = (i, s)
    return best


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
