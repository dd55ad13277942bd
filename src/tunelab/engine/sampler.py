"""The next token of each row: greedy, or temperature / top-k / top-p sampling with each request's own generator.

Each row is chosen on its own, and a row that fails (NaN logits, a grammar with no way forward) comes back as its
exception, so one request's failure never touches the others in the batch. Greedy rows without adjustments share
one batched argmax. Sampled rows draw with `torch.multinomial` on their own row and their own generator, so a seeded
request draws the same numbers whatever shares its batch. Adjustments, in order: logit_bias (OpenAI: added to the
logit), presence and frequency penalties (OpenAI: logit -= presence * [count > 0] + frequency * count over the
tokens generated so far), then the grammar mask. Reported logprobs are the log-softmax of the model's own logits,
before any of these, as OpenAI and vLLM report them.
"""

from __future__ import annotations

import math

import torch

from tunelab.engine.errors import EngineError
from tunelab.engine.sequence import Sequence, TokenLogprob


def next_tokens(run, seqs: list[Sequence], samples: list[bool] | None = None) -> list[int | Exception | None]:
    """`run(seqs)` -> logits, then `sample` the rows marked in `samples` (default: all; the others get None); when
    the batched forward pass raises, each row is run again alone so that only the rows that fail alone fail (their
    K/V writes are idempotent and `num_cached` moves only on success, so a retried row computes the same thing)."""
    samples = [True] * len(seqs) if samples is None else samples
    try:
        logits = run(seqs)
    except Exception as exc:  # noqa: BLE001
        if len(seqs) == 1:
            return [exc]
        return [token for seq, s in zip(seqs, samples) for token in next_tokens(run, [seq], [s])]
    rows = [i for i, s in enumerate(samples) if s]
    if not rows:
        return [None] * len(seqs)
    drawn = iter(sample(logits if len(rows) == len(seqs) else logits[rows], [seqs[i] for i in rows]))
    return [next(drawn) if s else None for s in samples]


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int | Exception]:
    """One token id per row of `logits` [rows, vocab] (float32), or the exception that row alone raised."""
    best, greedy = logits.max(-1)
    finite = torch.isfinite(best).tolist()  # one device sync for the whole batch, not one per row
    greedy = greedy.tolist()
    out: list[int | Exception] = []
    for i, seq in enumerate(seqs):
        try:
            out.append(_sample_row(logits[i], seq, greedy[i], finite[i]))
        except Exception as exc:  # noqa: BLE001 - isolate the row: its request fails, the batch goes on
            out.append(exc)
    return out


def _sample_row(row: torch.Tensor, seq: Sequence, argmax: int, finite: bool) -> int:
    p = seq.params
    raw = row
    adjusted = bool(p.logit_bias) or seq.constraint is not None or (
        (p.presence_penalty or p.frequency_penalty) and bool(seq.output_ids))
    if adjusted:
        row = _adjusted(row, seq)
        argmax = int(row.argmax())
    token = argmax if p.greedy else _draw(row, p.temperature, p.top_k, p.top_p, seq.generator)
    if not finite or ((adjusted or not p.greedy) and not math.isfinite(float(row[token]))):
        raise EngineError(f"sampling: the model's logits are not finite for this request (token {token})")
    if seq.logprobs is not None:
        seq.logprobs.append(_logprob(raw, token, p.logprobs))
    if seq.constraint is not None:
        seq.constraint.advance(token)
    return token


def _adjusted(row: torch.Tensor, seq: Sequence) -> torch.Tensor:
    p = seq.params
    row = row.clone()
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), device=row.device)
        row[ids] += torch.tensor(list(p.logit_bias.values()), dtype=row.dtype, device=row.device)
    if (p.presence_penalty or p.frequency_penalty) and seq.output_ids:
        counts = torch.bincount(torch.tensor(seq.output_ids), minlength=row.shape[-1])[: row.shape[-1]]
        counts = counts.to(row.device, row.dtype)
        row -= p.presence_penalty * (counts > 0).to(row.dtype) + p.frequency_penalty * counts
    if seq.constraint is not None:
        row = seq.constraint.mask(row)
    return row


def _logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logprobs = logits.log_softmax(-1)
    best = torch.topk(logprobs, top) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return TokenLogprob(token, float(logprobs[token]), pairs)


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
