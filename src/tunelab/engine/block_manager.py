"""Which KV-cache blocks each sequence owns, and which full blocks sequences share (prefix caching).

The cache is `num_blocks` fixed-size blocks of `block_size` token slots; a sequence's block table lists its blocks
in order, so token position p lives in slot `table[p // block_size] * block_size + p % block_size`.

Prefix caching, as in vLLM: a *full* block is keyed by a hash chain (the previous block's key, the adapter, its
token ids), so two sequences with the same first k blocks of tokens under the same adapter have the same k keys.
Admission reuses every leading block whose key is cached (reference-counted: a block returns to the free list only
when no sequence holds it) and computes only the rest. A freed block keeps its key and contents until it is handed
out again: the free list is ordered least-recently-freed first, so eviction is LRU. A block is keyed as soon as it is
full and the step being scheduled computes its K/V (`commit`); a sequence admitted later, even in the next step,
can share it. The block holding a
sequence's last prompt token is never reused from the cache: that token must run through the model anyway to give
the logits of the first new token, and a shared block is never written.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from tunelab.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU first
        self.refs = [0] * num_blocks
        self.key_of: dict[int, bytes] = {}  # block -> key, for full blocks whose contents are known
        self.block_of: dict[bytes, int] = {}  # key -> block
        self._keys: dict[int, list[bytes]] = {}  # seq_id -> keys of its leading full blocks
        self.queried_tokens = 0  # prompt tokens looked up at admission
        self.hit_tokens = 0  # of those, found in the cache (not computed)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Admit `seq` with room for `num_tokens`: reuse its cached leading blocks, take the rest from the free list.
        False (and nothing changed) when the free list cannot cover it."""
        hits = self._cached_prefix(seq)
        reclaimed = sum(1 for b in hits if self.refs[b] == 0)
        if self.blocks_needed(num_tokens) - len(hits) > len(self.free) - reclaimed:
            return False
        for b in hits:
            if self.refs[b] == 0:
                del self.free[b]
            self.refs[b] += 1
        seq.block_table = list(hits)
        seq.num_cached = len(hits) * self.block_size
        self._keys[seq.seq_id] = [self.key_of[b] for b in hits]
        self.queried_tokens += len(seq)
        self.hit_tokens += seq.num_cached
        self.grow(seq, num_tokens)
        return True

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `seq` can hold `num_tokens` tokens in total after allocating what it lacks."""
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.blocks_needed(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take())

    def commit(self, seq: Sequence, computed: int) -> None:
        """The step being scheduled computes the K/V of `seq`'s first `computed` tokens: key its full blocks."""
        if self.prefix_caching:
            self._register_full_blocks(seq, computed)

    def release(self, seq: Sequence, keep_cached: bool = True) -> None:
        """Free `seq`'s blocks. `keep_cached=False` after a failed step: blocks keyed when that step was scheduled
        may hold K/V that were never written, so the ones no one else holds lose their keys."""
        # Reversed: a sequence's last blocks are the least likely to be shared, so they are evicted first.
        for b in reversed(seq.block_table):
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self.free[b] = None
                if not keep_cached and b in self.key_of:
                    del self.block_of[self.key_of.pop(b)]
        seq.block_table = []
        seq.num_cached = 0
        self._keys.pop(seq.seq_id, None)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    # ------------------------------------------------------------------ helpers
    def _cached_prefix(self, seq: Sequence) -> list[int]:
        if not self.prefix_caching:
            return []
        hits, key = [], b""
        tokens = seq.token_ids
        for i in range((len(tokens) - 1) // self.block_size):  # never the block holding the last token
            key = _chain(key, seq.adapter, tokens[i * self.block_size : (i + 1) * self.block_size])
            block = self.block_of.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def _register_full_blocks(self, seq: Sequence, computed: int) -> None:
        keys = self._keys.setdefault(seq.seq_id, [])
        tokens = seq.token_ids
        for i in range(len(keys), computed // self.block_size):
            key = _chain(keys[-1] if keys else b"", seq.adapter, tokens[i * self.block_size : (i + 1) * self.block_size])
            keys.append(key)
            block = seq.block_table[i]
            if key not in self.block_of and block not in self.key_of:
                self.block_of[key] = block
                self.key_of[block] = key

    def _take(self) -> int:
        block, _ = self.free.popitem(last=False)
        key = self.key_of.pop(block, None)  # evicting: its contents are about to be overwritten
        if key is not None:
            del self.block_of[key]
        self.refs[block] = 1
        return block


def _chain(parent: bytes, adapter: str | None, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update((adapter or "").encode() + b"\0")
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()
