"""Which sequences run this step, and how many of their tokens.

Continuous batching with chunked prefill, as in vLLM and nano-vllm. Every step decodes one token for every running
sequence whose prompt is done, and fills the rest of its token budget with prompt chunks: started prompts first,
then waiting requests, admitted in order while there is room. The model runner packs them all into one forward
pass, so no prompt is padded to another's length and a decode batch and the chunks beside it share one read of the
weights.

The budget: with nothing decoding, a step may take `max_num_batched_tokens` of prompt (a burst of requests is
prefilled in a few large steps). While sequences decode, prompt chunks are sized so that the step costs at most
`STALL_RATIO` times a decode-only step, so a long prompt is admitted a chunk at a time without slowing the running
streams beyond that. The decode-only step is measured (the recent ones with the same number of decodes, see
`StepCost`), and what chunks add is modelled as `e + c * tokens + g * attended`, where `e` is the fixed cost of a
step that carries any chunk and `attended` counts (query, key) pairs of the prompt chunks (a chunk of n tokens after
s cached ones attends to n * (s + n)), fitted by least squares to the recent steps' measured times (`record`): late
chunks of a long prompt cost more than early ones, and the budget knows it. `max_prefill_chunk` caps any one
sequence's chunk. Where the runner records steps that carry one chunk beside their decodes (`chunk_sizes`, CPUs
with tunelab's attention operator), a chunk beside decodes is rounded down to a recorded size.

A sequence is admitted (its KV blocks allocated for the whole prompt, minus what the prefix cache already holds) when
it starts its first chunk. Finished sequences leave, and free their blocks, as soon as their last token is sampled.
When decoding needs a block and none is free, the most recently admitted sequence is preempted: its blocks are freed
and it goes back to the front of the queue, to be recomputed from its prompt and the tokens generated so far (cheaper
than swapping on CPU, and exact). No request is admitted in a step that preempted one.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import torch

from tunelab.engine.block_manager import BlockManager
from tunelab.engine.sequence import Sequence, Status


STALL_RATIO = 1.7  # a step with prompt chunks costs at most this times a decode-only step (the target is 2)


@dataclass
class ScheduledStep:
    seqs: list[Sequence]  # the decoding sequences first, then the prompt chunks
    num_tokens: list[int]  # tokens each sequence computes this step (1 for decodes)
    num_decodes: int

    @property
    def prompt_tokens(self) -> int:
        return sum(self.num_tokens[self.num_decodes:])


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_prefill_chunk: int | None = None):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_chunk = max_prefill_chunk or max_num_batched_tokens
        self.cost = StepCost()
        # Prompt chunk sizes that a step with decodes can carry without running eagerly (the runner's recorded
        # mixed steps: ModelRunner.chunk_sizes); None when there are none.
        self.chunk_sizes: tuple[int, ...] | None = None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admitted: prefilling (part of the prompt computed) or decoding
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep:
        preemptions = self.num_preemptions
        decodes = self._decode_batch()
        budget = Budget(self.max_num_batched_tokens - len(decodes), self.max_prefill_chunk)
        if decodes and (self.waiting or any(s.num_new_tokens > 1 for s in self.running)):  # prompts to place
            seconds, budget.fit = self.cost.headroom(len(decodes), STALL_RATIO)
            if budget.fit is None:  # nothing measured yet: a modest chunk
                budget.tokens = min(budget.tokens, StepCost.DEFAULT_BUDGET)
            else:
                budget.seconds = seconds
            if self.chunk_sizes:
                budget.sizes = self.chunk_sizes
        chunks = self._prompt_chunks(budget, admit=self.num_preemptions == preemptions)
        seqs = decodes + chunks
        return ScheduledStep(seqs, [s.num_scheduled for s in seqs], len(decodes))

    def record(self, step: ScheduledStep, seconds: float) -> None:
        """The measured time of a step just run, for the budget of the next ones."""
        # Only prompt chunks count here: a decode row's attention is part of the decode-only baseline.
        attended = sum(n * (s.num_cached + n) for s, n in zip(step.seqs[step.num_decodes:],
                                                              step.num_tokens[step.num_decodes:]))
        self.cost.record(step.num_decodes, step.prompt_tokens, attended, seconds)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if reason != "error":
            self.blocks.commit(seq, seq.num_cached)  # the blocks its last decode steps filled
        self.blocks.release(seq, keep_cached=reason != "error")

    # ------------------------------------------------------------------ helpers
    def _prompt_chunks(self, budget: Budget, admit: bool) -> list[Sequence]:
        """One chunk each for started prompts, then for newly admitted requests, until the budget is used.
        Each chunk's full blocks are keyed as it is scheduled, so a request admitted after it in the same step
        already finds a shared prefix in the cache (the runner writes every chunk's K/V before any attends)."""
        scheduled: list[Sequence] = []

        def take(seq: Sequence) -> None:
            n = budget.take(seq.num_cached, seq.num_new_tokens)
            if n > 0:
                seq.num_scheduled = n
                self.blocks.commit(seq, seq.num_cached + n)
                scheduled.append(seq)

        for seq in [s for s in self.running if s.num_new_tokens > 1]:  # started prompts finish first
            take(seq)
        while admit and budget.left() and self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # +1: room for the token the last chunk samples, so the next decode step does not preempt at once.
            if not self.blocks.allocate(seq, len(seq) + 1):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            take(seq)
        return scheduled

    def _decode_batch(self) -> list[Sequence]:
        batch: list[Sequence] = []
        queue = [s for s in self.running if s.num_new_tokens == 1]
        while queue:
            seq = queue.pop(0)
            while not self.blocks.can_grow(seq, len(seq) + 1):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self.blocks.grow(seq, len(seq) + 1)
                # Key only blocks already in the paged cache: a decode token's K/V reach their paged slot after the
                # step (model_runner's DecodeSlots.flush), so a chunk of this step must not find its block shared.
                self.blocks.commit(seq, seq.num_cached)
                seq.num_scheduled = 1
                batch.append(seq)
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)


class Budget:
    """What the prompt chunks of one step may still take: tokens, and (while sequences decode) seconds of
    predicted cost."""

    # Prompt tokens a step with a time limit takes at least (one block): the fit is noisy over the narrow range of
    # chunk sizes it sees, and a slope it overstates must not starve a prompt.
    MIN_TOKENS = 16

    def __init__(self, tokens: int, max_chunk: int):
        self.tokens, self.max_chunk = tokens, max_chunk
        self.seconds: float | None = None  # None: no time limit (nothing is decoding)
        self.fit: tuple[float, float] | None = None  # StepCost's (c, g)
        self.floor = self.MIN_TOKENS
        self._sizes: tuple[int, ...] | None = None

    @property
    def sizes(self) -> tuple[int, ...] | None:
        return self._sizes

    @sizes.setter
    def sizes(self, sizes: tuple[int, ...]) -> None:
        """Chunk sizes a recorded step carries: a chunk is rounded down to one (a prompt's last may be shorter), at
        most the largest. Such a step has no eager fixed cost to amortise, so the floor is the smallest size."""
        self._sizes = sizes
        self.max_chunk = min(self.max_chunk, sizes[-1])
        self.floor = sizes[0]

    def left(self) -> bool:
        return self.tokens > 0 and (self.seconds is None or self.seconds > 0)

    def take(self, cached: int, wanted: int) -> int:
        """Tokens of a prompt with `cached` tokens computed that fit, at most `wanted`; the budget is charged."""
        n = min(wanted, self.max_chunk, self.tokens)
        if self.seconds is not None:  # the largest n with c*n + g*n*(cached + n) within the seconds left
            c, g = self.fit
            b = c + g * cached
            most = self.seconds / b if g == 0 else (-b + math.sqrt(b * b + 4 * g * self.seconds)) / (2 * g)
            n = min(n, max(self.floor, int(most)))
            if self._sizes and n < wanted:
                n = max((s for s in self._sizes if s <= n), default=n)
            self.floor = max(0, self.floor - n)
            self.seconds -= c * n + g * n * (cached + n)
            if n == 0 or self.seconds <= 0:
                self.seconds = 0.0
        self.tokens -= n
        return n


class StepCost:
    """What a step costs, from the recent steps' measured times.

    - A decode-only step of d sequences (the baseline the stall ratio is relative to): the median of the recent ones
      with exactly d; for a d not seen lately, a line `a + b * d` fitted to the recent decode-only steps.
    - What prompt chunks add to a step that decodes: `e + c * tokens + g * attended`, fitted by least squares to the
      recent steps that had both, each less its baseline; `attended` counts the (query, key) pairs of the chunks, and
      `e` is what any step with a chunk costs beyond a decode-only one: where such a step runs eagerly (several
      chunks, a GPU, a CPU without tunelab's operators) ~25-30 ms more than a recorded decode step of the built-in
      model on a CPU; where one chunk rides in a recorded step (`chunk_sizes`), little. Without `e` the fit charged it
      to the tokens: chunks shrank, which made `e` look dearer per token, until a 2,000-token prompt went in a token
      or two per step.

    Steps that decode nothing stall no one and are left out (a burst prefilled at once says little about a small
    chunk beside a few decodes). Measuring the baseline per decode count keeps a past workload (32 streams, say)
    from skewing the budget of the present one (4)."""

    DEFAULT_BUDGET = 64  # prompt tokens per step until there is a fit
    # When `e` alone uses up the headroom, the chunks still get this share of it: a prompt must keep advancing, and
    # since every step with a chunk then breaks the ratio anyway, fewer and larger ones stall the streams less.
    MIN_SHARE = 0.25

    def __init__(self, window: int = 32):
        self.decode_only: deque[tuple[int, float]] = deque(maxlen=2 * window)  # (decodes, seconds)
        self.mixed: deque[tuple[int, int, float]] = deque(maxlen=window)  # (chunk tokens, attended, extra seconds)
        self._fit: tuple[float, float, float] | None = None  # (e, c, g)
        self._last: tuple[float, float, float] | None = None  # the last sound fit, while noise spoils a new one

    def record(self, decodes: int, tokens: int, attended: int, seconds: float) -> None:
        """A step that ran `decodes` decode rows and `tokens` prompt-chunk tokens in `seconds`."""
        if decodes == 0:
            return
        if tokens == 0:
            self.decode_only.append((decodes, seconds))
            return
        base = self.baseline(decodes)
        if base is not None:
            self.mixed.append((tokens, attended, seconds - base))
            self._fit = None

    def baseline(self, decodes: int) -> float | None:
        """Seconds of a decode-only step of `decodes` rows; None before any was measured."""
        same = [s for d, s in self.decode_only if d == decodes][-8:]
        if len(same) >= 2:
            return statistics.median(same)
        if len({d for d, _ in self.decode_only}) < 2:
            return same[0] if same else None
        x = torch.tensor([[1.0, d] for d, _ in self.decode_only], dtype=torch.float64)
        y = torch.tensor([[s] for _, s in self.decode_only], dtype=torch.float64)
        line = _least_squares(x, y)
        return None if line is None or line[0] + line[1] * decodes <= 0 else line[0] + line[1] * decodes

    def headroom(self, decodes: int, ratio: float) -> tuple[float, tuple | None]:
        """(seconds of `c * tokens + g * attended` that prompt chunks may add to a step of `decodes` decode rows
        while keeping it under `ratio` times the decode-only step, the fit (c, g)); (0, None) before there is a
        fit."""
        base = self.baseline(decodes)
        fit = self._fit or self._solve() or self._last
        if base is None or fit is None:
            return 0.0, None
        e, c, g = fit
        allowed = (ratio - 1) * base
        return max(allowed - e, self.MIN_SHARE * allowed), (c, g)

    def _solve(self) -> tuple[float, float, float] | None:
        """The first of (e, c, g), (c, g), (e, c), (c) that the recent steps determine with no negative term (a
        column that never varied, or noise, rules a form out). Without `e` before without `g`: when the fixed cost
        is nil, the full fit's `e` comes out as zero give or take rounding, and half the time just below it."""
        if len(self.mixed) < 2:
            return None
        rows = [(1.0, n, p) for n, p, _ in self.mixed]
        y = torch.tensor([[s] for _, _, s in self.mixed], dtype=torch.float64)
        for cols in ((0, 1, 2), (1, 2), (0, 1), (1,)):
            fit = _least_squares(torch.tensor([[r[i] for i in cols] for r in rows], dtype=torch.float64), y)
            if fit is None or min(fit) < 0 or fit[cols.index(1)] <= 0:
                continue
            full = dict(zip(cols, fit))
            self._fit = self._last = (full.get(0, 0.0), full[1], full.get(2, 0.0))
            return self._fit
        return None


def _least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[float, ...] | None:
    scale = x.abs().amax(0).clamp(min=1.0)  # columns differ by orders of magnitude
    scaled = x / scale
    if torch.linalg.matrix_rank(scaled) < x.shape[1]:  # a column never varied: nothing to fit it from
        return None
    return tuple(float(v) for v in torch.linalg.lstsq(scaled, y).solution[:, 0] / scale)
