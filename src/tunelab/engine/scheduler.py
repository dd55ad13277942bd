"""Which sequences run this step, and how many of their tokens.

Continuous batching with chunked prefill, as in vLLM and nano-vllm. Every step decodes one token for every running
sequence whose prompt is done, and fills the rest of its token budget with prompt chunks: started prompts first,
then waiting requests, admitted in order while there is room. The model runner packs them all into one forward
pass, so no prompt is padded to another's length and a decode batch and the chunks beside it share one read of the
weights.

The budget: with nothing decoding, a step may take `max_num_batched_tokens` of prompt (a burst of requests is
prefilled in a few large steps). While sequences decode, prompt chunks are sized so that the step costs at most
`STALL_RATIO` times a decode-only step, so a long prompt is admitted a chunk at a time without slowing the running
streams beyond that. Step cost is modelled as `a + c * tokens`, fitted (least squares) to the recent steps' measured
times (`record`); `max_prefill_chunk` caps any one sequence's chunk.

A sequence is admitted (its KV blocks allocated for the whole prompt, minus what the prefix cache already holds) when
it starts its first chunk. Finished sequences leave, and free their blocks, as soon as their last token is sampled.
When decoding needs a block and none is free, the most recently admitted sequence is preempted: its blocks are freed
and it goes back to the front of the queue, to be recomputed from its prompt and the tokens generated so far (cheaper
than swapping on CPU, and exact). No request is admitted in a step that preempted one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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
        budget = self.max_num_batched_tokens - len(decodes)
        if decodes:
            budget = min(budget, self.cost.prompt_budget(len(decodes), STALL_RATIO))
        chunks = self._prompt_chunks(budget, admit=self.num_preemptions == preemptions)
        seqs = decodes + chunks
        return ScheduledStep(seqs, [s.num_scheduled for s in seqs], len(decodes))

    def record(self, step: ScheduledStep, seconds: float) -> None:
        """The measured time of a step just run, for the budget of the next ones."""
        self.cost.record(sum(step.num_tokens), seconds)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq, keep_cached=reason != "error")

    # ------------------------------------------------------------------ helpers
    def _prompt_chunks(self, budget: int, admit: bool) -> list[Sequence]:
        """One chunk each for started prompts, then for newly admitted requests, until `budget` tokens are used.
        Each chunk's full blocks are keyed as it is scheduled, so a request admitted after it in the same step
        already finds a shared prefix in the cache (the runner writes every chunk's K/V before any attends)."""
        scheduled: list[Sequence] = []

        def take(seq: Sequence) -> int:
            n = min(seq.num_new_tokens, self.max_prefill_chunk, budget)
            if n > 0:
                seq.num_scheduled = n
                self.blocks.commit(seq, seq.num_cached + n)
                scheduled.append(seq)
            return n

        for seq in [s for s in self.running if s.num_new_tokens > 1]:  # started prompts finish first
            budget -= take(seq)
        while admit and budget > 0 and self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # +1: room for the token the last chunk samples, so the next decode step does not preempt at once.
            if not self.blocks.allocate(seq, len(seq) + 1):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            budget -= take(seq)
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
                self.blocks.commit(seq, len(seq))
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


class StepCost:
    """A step's seconds as `a + c * tokens`, fitted by least squares to the last `window` steps run."""

    DEFAULT_BUDGET = 64  # prompt tokens per step until there is a fit

    def __init__(self, window: int = 64):
        self.steps: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None

    def record(self, tokens: int, seconds: float) -> None:
        self.steps.append((tokens, seconds))
        self._fit = None

    def prompt_budget(self, decodes: int, ratio: float) -> int:
        """Prompt tokens that keep a step with `decodes` decode rows under `ratio` times a decode-only one."""
        fit = self._fit or self._solve()
        if fit is None:
            return self.DEFAULT_BUDGET
        a, c = fit
        return max(1, int((ratio - 1) * (a / c + decodes)))

    def _solve(self) -> tuple[float, float] | None:
        n = len(self.steps)
        if n < 4:
            return None
        xs, ys = zip(*self.steps)
        mean_x, mean_y = sum(xs) / n, sum(ys) / n
        var = sum((x - mean_x) ** 2 for x in xs)
        if var == 0:
            return None
        c = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var
        a = mean_y - c * mean_x
        if c <= 0 or a < 0:  # noise: the fit is meaningless; keep the default until it is not
            return None
        self._fit = (a, c)
        return self._fit
