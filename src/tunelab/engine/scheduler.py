"""Which sequences run this step.

Continuous batching, as in vLLM and nano-vllm: at every step, waiting requests are admitted first (a prefill step of
the tokens their cached prefix lacks, padded width x rows within `max_num_batched_tokens`, at most `max_num_seqs`
running); when none can be admitted the
running sequences decode one token each. Finished sequences leave (and free their blocks) as soon as their last
token is sampled. When decoding needs a block and none is free, the most recently admitted sequence is preempted:
its blocks are freed and it goes back to the front of the queue, to be recomputed from its prompt and the tokens
generated so far (cheaper than swapping on CPU, and exact).
"""

from __future__ import annotations

from collections import deque

from tunelab.engine.block_manager import BlockManager
from tunelab.engine.sequence import Sequence, Status


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """(sequences to run, is_prefill)."""
        prefill = self._admit()
        if prefill:
            return prefill, True
        return self._decode_batch(), False

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)

    # ------------------------------------------------------------------ helpers
    def _admit(self) -> list[Sequence]:
        batch: list[Sequence] = []
        width = 0
        while self.waiting and len(self.running) + len(batch) < self.max_num_seqs:
            seq = self.waiting[0]
            new_width = max(width, seq.num_new_tokens)
            if batch and new_width * (len(batch) + 1) > self.max_num_batched_tokens:
                break
            # +1: room for the token this step samples, so the next decode step does not preempt at once.
            if not self.blocks.allocate(seq, len(seq) + 1):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            batch.append(seq)
            width = new_width
        self.running.extend(batch)
        return batch

    def _decode_batch(self) -> list[Sequence]:
        batch: list[Sequence] = []
        queue = list(self.running)
        while queue:
            seq = queue.pop(0)
            while not self.blocks.can_grow(seq, len(seq) + 1):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self.blocks.grow(seq, len(seq) + 1)
                batch.append(seq)
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
