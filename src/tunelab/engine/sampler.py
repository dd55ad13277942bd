"""The next token of each row: greedy, or temperature / top-k / top-p sampling with each request's own generator.

Greedy rows are one batched argmax. Sampled rows draw with `torch.multinomial` on their own row and their own
generator, so a seeded request draws the same numbers whatever shares its batch. Presence and frequency penalties
follow OpenAI's definition: logit -= presence * [count > 0] + frequency * count, over the tokens generated so far.
"""

from __future__ import annotations

import torch

from tunelab.engine.sequence import Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token id per row of `logits` [rows, vocab] (float32)."""
    logits = _penalized(logits, seqs)
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.greedy:
            out.append(greedy[i])
        else:
            out.append(_draw(logits[i], p.temperature, p.top_k, p.top_p, seq.generator))
    return out


def _penalized(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    rows = [i for i, s in enumerate(seqs) if (s.params.presence_penalty or s.params.frequency_penalty) and s.output_ids]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        s = seqs[i]
        counts = torch.bincount(torch.tensor(s.output_ids), minlength=logits.shape[-1])[: logits.shape[-1]]
        counts = counts.to(logits.device, logits.dtype)
        logits[i] -= s.params.presence_penalty * (counts > 0).to(logits.dtype) + s.params.frequency_penalty * counts
    return logits


def _draw(row: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
    row = row / temperature
    if top_k and top_k < row.shape[-1]:
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already cover top_p; the first always stays.
        drop = probs.cumsum(-1) - probs > top_p
        row = torch.full_like(row, float("-inf")).scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = row.softmax(-1)
    if generator is not None and probs.device.type != "cpu":
        probs = probs.cpu()  # the request's generator lives on the CPU
    return int(torch.multinomial(probs, 1, generator=generator))
