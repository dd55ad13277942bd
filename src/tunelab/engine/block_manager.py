"""Which KV-cache blocks each sequence owns.

The cache is `num_blocks` fixed-size blocks of `block_size` token slots; a sequence's block table lists its blocks
in order, so token position p lives in slot `table[p // block_size] * block_size + p % block_size`. Blocks are
handed out from a free list and returned the moment a sequence finishes, is aborted or is preempted. There is no
prefix sharing, so a block has exactly one owner.
"""

from __future__ import annotations

from collections import deque

from tunelab.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free: deque[int] = deque(range(num_blocks))

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `seq` can hold `num_tokens` tokens in total after allocating what it lacks."""
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.blocks_needed(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self.free.popleft())

    def release(self, seq: Sequence) -> None:
        self.free.extend(seq.block_table)
        seq.block_table = []
        seq.num_cached = 0
