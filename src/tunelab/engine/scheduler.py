"""Which sequences run this step, and how many of their tokens.

Continuous batching, as in vLLM and nano-vllm, with chunked prefill. A step is either a *prefill* step, one chunk of
one sequence's uncomputed tokens (so no prompt is ever padded to another's length), or a *decode* step, one token for
every running sequence whose prompt is done. While sequences are decoding, prefill and decode steps alternate and a
prefill chunk is sized to cost about half a decode step (`prefill_budget`, which the engine sets from measured
step times), so a long prompt is admitted a chunk at a time between the running streams' tokens. (Chunks do not
yet share a forward pass with the decodes, so the streams still slow down more than that: docs/benchmarks.md.) With nothing
decoding, a chunk may take `max_num_batched_tokens`.

A sequence is admitted (its KV blocks allocated for the whole prompt, minus what the prefix cache already holds) when
it starts its first chunk. Finished sequences leave, and free their blocks, as soon as their last token is sampled.
When decoding needs a block and none is free, the most recently admitted sequence is preempted: its blocks are freed
and it goes back to the front of the queue, to be recomputed from its prompt and the tokens generated so far (cheaper
than swapping on CPU, and exact).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tunelab.engine.block_manager import BlockManager
from tunelab.engine.sequence import Sequence, Status


@dataclass
class ScheduledStep:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens each sequence computes this step (1 for decodes)
    is_prefill: bool


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_prefill_chunk: int | None = None):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_chunk = max_prefill_chunk or max_num_batched_tokens
        self.prefill_budget = self.max_prefill_chunk  # tokens per chunk while others decode; the engine tunes it
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admitted: prefilling (part of the prompt computed) or decoding
        self.num_preemptions = 0
        self._prefill_turn = True

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledStep:
        decoding = [s for s in self.running if s.num_new_tokens == 1]
        if not decoding or self._prefill_turn:
            step = self._prefill(budget=self.prefill_budget if decoding else self.max_prefill_chunk)
            if step is not None:
                self._prefill_turn = False
                return step
        self._prefill_turn = True
        batch = self._decode_batch()
        return ScheduledStep(batch, [1] * len(batch), False)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq, keep_cached=reason != "error")

    # ------------------------------------------------------------------ helpers
    def _prefill(self, budget: int) -> ScheduledStep | None:
        seq = next((s for s in self.running if s.num_new_tokens > 1), None)  # finish a started prompt first
        if seq is None and self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # +1: room for the token the last chunk samples, so the next decode step does not preempt at once.
            if not self.blocks.allocate(seq, len(seq) + 1):
                return None
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
        if seq is None:
            return None
        chunk = seq.num_scheduled = min(seq.num_new_tokens, max(1, budget))
        self.blocks.commit(seq, seq.num_cached + chunk)
        return ScheduledStep([seq], [chunk], True)

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
