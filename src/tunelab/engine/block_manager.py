"""Which KV-cache blocks each sequence owns, and which blocks' contents sequences share (prefix caching).

The cache is `num_blocks` fixed-size blocks of `block_size` token slots; a sequence's block table lists its blocks
in order, so token position p lives in slot `table[p // block_size] * block_size + p % block_size`.

Prefix caching, as in vLLM: a *full* block is keyed by a hash chain (the previous block's key, the adapter, its
token ids), so two sequences with the same first k blocks of tokens under the same adapter have the same k keys.
Admission reuses every leading block whose key is cached (reference-counted: a block returns to the free list only
when no sequence holds it) and computes only the rest. A freed block keeps its key and contents until it is handed
out again: the free list is ordered least-recently-freed first, so eviction is LRU. A block is keyed as soon as it is
full and the step being scheduled computes its K/V (`commit`); a sequence admitted later, even in the same step,
can share it (the runner writes every chunk's K/V before any chunk attends).

Matching is token-granular, as SGLang's radix cache: after the shared full blocks, the next cached full block in
the chain whose first k tokens are the prompt's next k gives those k too (an index from (parent key, adapter, first
token) to such blocks makes this a lookup, not a scan). Its slots cannot be shared, since the sequence writes the
rest of that block, so the sequence gets a fresh block and its first chunk copies the k tokens' K/V into it
(`BlockCopy`, on the sequence; the runner copies per layer after the step's writes and in scheduling order, so a
source computed, or itself copied into, in the same step is complete). The source is pinned (held) from admission
until that step ran (`copied`, which the engine calls after every step, or `release`), so it is never evicted or
handed out in between; when the free list cannot spare it, the match stops at whole blocks. The prompt's last token
is never taken from the cache: it must run through the model anyway to give the logits of the first new token.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from tunelab.engine.sequence import Sequence


@dataclass(frozen=True)
class BlockCopy:
    """The first `length` tokens' K/V of block `src`, to be copied into block `dst` before the step attends."""

    src: int
    dst: int
    length: int


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU first
        self.refs = [0] * num_blocks
        self.key_of: dict[int, bytes] = {}  # block -> key, for full blocks whose contents are known
        self.block_of: dict[bytes, int] = {}  # key -> block
        # (parent key, adapter, first token) -> {block: its tokens}: the candidates for a partial match
        self.children: dict[tuple, dict[int, list[int]]] = {}
        self._child_of: dict[int, tuple] = {}  # block -> its entry in `children`
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
        hits, partial = self._cached_prefix(seq)
        new = self.blocks_needed(num_tokens) - len(hits)
        if partial and not self._room(hits + [partial[0]], new):
            partial = None  # no room to hold the copy's source as well: compute those few tokens instead
        held = hits + [partial[0]] if partial else hits
        if not self._room(held, new):
            return False
        for b in held:
            self._hold(b)
        seq.block_table = list(hits)
        seq.num_cached = len(hits) * self.block_size
        self._keys[seq.seq_id] = [self.key_of[b] for b in hits]
        if partial:
            seq.block_table.append(self._take())
            seq.prefix_copy = BlockCopy(partial[0], seq.block_table[-1], partial[1])
            seq.num_cached += partial[1]
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

    def copied(self, seq: Sequence) -> None:
        """A step with `seq` ran (its first chunk's copy is done, or the row failed): unpin the copy's source."""
        if seq.prefix_copy is not None:
            self._drop(seq.prefix_copy.src)
            seq.prefix_copy = None

    def release(self, seq: Sequence, keep_cached: bool = True) -> None:
        """Free `seq`'s blocks. `keep_cached=False` after a failed step: blocks keyed when that step was scheduled
        may hold K/V that were never written, so the ones no one else holds lose their keys."""
        self.copied(seq)
        # Reversed: a sequence's last blocks are the least likely to be shared, so they are evicted first.
        for b in reversed(seq.block_table):
            self._drop(b)
            if self.refs[b] == 0 and not keep_cached:
                self._forget(b)
        seq.block_table = []
        seq.num_cached = 0
        seq.stepped = False
        self._keys.pop(seq.seq_id, None)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    # ------------------------------------------------------------------ helpers
    def _cached_prefix(self, seq: Sequence) -> tuple[list[int], tuple[int, int] | None]:
        """The cached blocks of `seq`'s leading full blocks, then (a cached block, k) for the longest partial match
        of the next block: its first k tokens are `seq`'s next k."""
        if not self.prefix_caching:
            return [], None
        hits, key, bs = [], b"", self.block_size
        tokens = seq.token_ids
        last = len(tokens) - 1  # never cached: the last token runs through the model for the logits
        for i in range(last // bs):
            child = _chain(key, seq.adapter, tokens[i * bs : (i + 1) * bs])
            if child not in self.block_of:
                break
            hits.append(self.block_of[child])
            key = child
        wanted = tokens[len(hits) * bs : min(last, (len(hits) + 1) * bs)]
        if not wanted:
            return hits, None
        candidates = self.children.get((key, seq.adapter, wanted[0]), {})
        length, src = max(((_common_length(wanted, t), b) for b, t in candidates.items()), default=(0, None))
        return hits, (src, length) if length else None

    def _register_full_blocks(self, seq: Sequence, computed: int) -> None:
        keys = self._keys.setdefault(seq.seq_id, [])
        tokens = seq.token_ids
        for i in range(len(keys), computed // self.block_size):
            parent = keys[-1] if keys else b""
            block_tokens = tokens[i * self.block_size : (i + 1) * self.block_size]
            key = _chain(parent, seq.adapter, block_tokens)
            keys.append(key)
            block = seq.block_table[i]
            if key not in self.block_of and block not in self.key_of:
                self.block_of[key] = block
                self.key_of[block] = key
                entry = (parent, seq.adapter, block_tokens[0])
                self.children.setdefault(entry, {})[block] = block_tokens
                self._child_of[block] = entry

    def _room(self, held: list[int], new: int) -> bool:
        """Whether `new` blocks can be taken from the free list once the cached blocks `held` are out of it."""
        return new <= len(self.free) - sum(1 for b in held if self.refs[b] == 0)

    def _hold(self, block: int) -> None:
        if self.refs[block] == 0:
            del self.free[block]
        self.refs[block] += 1

    def _drop(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            self.free[block] = None

    def _take(self) -> int:
        block, _ = self.free.popitem(last=False)
        self._forget(block)  # evicting: its contents are about to be overwritten
        self.refs[block] = 1
        return block

    def _forget(self, block: int) -> None:
        key = self.key_of.pop(block, None)
        if key is not None:
            del self.block_of[key]
            entry = self._child_of.pop(block)
            del self.children[entry][block]
            if not self.children[entry]:
                del self.children[entry]


def _chain(parent: bytes, adapter: str | None, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update((adapter or "").encode() + b"\0")
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


def _common_length(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
