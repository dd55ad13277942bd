"""Turning one scheduled step into tensors for tunelab's Transformer, and attention over the paged KV cache.

A step is a padded batch [rows, width]: a prefill step feeds each admitted sequence's uncached tokens, a decode step
one token per running sequence. The model calls `PagedStep.update` in every attention layer: the new keys and values
are scattered into their slots, then each row's whole context is gathered from its block table into a dense
[rows, kv_heads, context, head_dim] view that SDPA reads under a boolean mask (causal, padding and, for Mistral-style
layers, the sliding window). Only the last real position of each row goes through lm_head.

Two CPU-minded shortcuts: a prefill of whole sequences attends to its own new keys (nothing to gather), and while
the decode batch stays the same a `DecodeBuffer` keeps its K/V dense, appending one column per step instead of
gathering every block again.
"""

from __future__ import annotations

import contextlib

import torch

from tunelab.engine.sequence import Sequence
from tunelab.models.transformer import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int, has_adapters: bool = False,
                 compile: bool = False, fuse: bool = True):
        self.model = model
        self.block_size = block_size
        self.has_adapters = has_adapters
        cfg = model.config
        param = next(model.parameters())
        self.device = param.device
        # The cache dtype: on CPU always float32, whatever the weights. CPU attention kernels are fp32-first (SDPA
        # over a bf16 cache measured ~4x slower per decode step than over fp32), and on a small model the cache is
        # small next to the weights. On GPU the cache follows the weights.
        self.dtype = torch.float32 if self.device.type == "cpu" else param.dtype
        # Token-major slots [slot, heads, dim]: a block is one contiguous chunk, and gathering whole blocks along
        # the first dimension is a few large copies (index_select along a later dimension measured ~5x slower).
        shape = (cfg.num_layers, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        # Zeros, not empty: masked slots still enter SDPA's weighted sum (with weight 0), and 0 * NaN is NaN.
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.windows = sorted({layer.self_attn.sliding_window for layer in model.layers}, key=lambda w: w or 0)
        if fuse and not has_adapters:
            model.fuse_projections()
        if self.device.type == "cpu" and param.dtype == torch.float16:
            upcast_fp16_matmuls(model)
        if self.device.type == "cpu" and param.dtype == torch.float32:
            # 16-bit weights stay [out, in]: oneDNN's bf16/fp16 matrix-vector kernels want that layout (measured
            # ~2.7x fp32 there, and ~10x slower than fp32 when stored [in, out]).
            store_weights_transposed(model)
        self._buffer: DecodeBuffer | None = None
        self._hidden = model.hidden_states
        if compile:  # GPU: fuse the small decode kernels; shapes vary, so compile dynamically.
            self._hidden = torch.compile(model.hidden_states, dynamic=True)

    @staticmethod
    def bytes_per_token(model: Transformer) -> int:
        cfg = model.config
        param = next(model.parameters())
        element = 4 if param.device.type == "cpu" else param.element_size()
        return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * element

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], num_tokens: list[int] | None = None) -> torch.Tensor:
        """Compute the K/V of the next `num_tokens[i]` tokens of each sequence (default: what the scheduler set in
        `num_scheduled`, else all it lacks); logits [rows, vocab] (float32) at the last of them."""
        num_tokens = num_tokens or [s.num_scheduled or s.num_new_tokens for s in seqs]
        step = self._prepare(seqs, num_tokens)
        adapters = [s.adapter for s in seqs]
        ctx = contextlib.nullcontext()
        if self.has_adapters:
            from tunelab.lora import per_row_adapters  # one forward pass, each row through its own adapter

            ctx = per_row_adapters(self.model, adapters)
        with ctx:
            hidden = self._hidden(step.input_ids, position_ids=step.position_ids, cache=step, attn_mask=step.masks)
            last = hidden[torch.arange(len(seqs), device=self.device), step.last_index]
            logits = self.model.lm_head(last)
        for seq, n in zip(seqs, num_tokens):  # only on success: a failed step can be retried row by row
            seq.num_cached += n
            seq.num_scheduled = 0
        return logits.float()

    # ------------------------------------------------------------------ helpers
    def _prepare(self, seqs: list[Sequence], news: list[int]) -> "PagedStep":
        dev = self.device
        width = max(news)
        rows = len(seqs)
        ids = torch.zeros(rows, width, dtype=torch.long)
        starts = torch.tensor([s.num_cached for s in seqs])
        lengths = torch.tensor(news)
        for i, s in enumerate(seqs):
            ids[i, : news[i]] = torch.tensor(s.token_ids[s.num_cached : s.num_cached + news[i]])
        t = torch.arange(width)
        valid = t[None, :] < lengths[:, None]  # [rows, width]
        positions = torch.where(valid, starts[:, None] + t[None, :], 0)
        longest = max(s.num_cached + n for s, n in zip(seqs, news))  # context this step attends to
        tables = torch.zeros(rows, -(-longest // self.block_size), dtype=torch.long)
        for i, s in enumerate(seqs):
            tables[i, : len(s.block_table)] = torch.tensor(s.block_table[: tables.shape[1]])
        pos = torch.arange(longest)
        slot_of = tables[:, pos // self.block_size] * self.block_size + pos % self.block_size  # [rows, longest]
        write_rows, write_cols = valid.nonzero(as_tuple=True)
        slots = slot_of[write_rows, positions[write_rows, write_cols]]
        # Nothing cached yet (a prefill of whole sequences): the new keys are the whole context, no gather needed.
        # Otherwise whole blocks are gathered (few, large copies), so the context is padded to a block multiple.
        fresh = bool((starts == 0).all()) and longest == width
        context = longest if fresh else tables.shape[1] * self.block_size
        dense = self._decode_buffer(seqs, starts, longest) if width == 1 and not fresh else None
        if width != 1:
            self._buffer = None  # a prefill changes the batch (and may recompute a preempted sequence)
        if dense is not None:
            context = longest
        k = torch.arange(context)
        total = starts + lengths
        base = (k[None, None, :] <= positions[:, :, None]) & (k[None, None, :] < total[:, None, None])
        masks = {}
        for w in self.windows:
            m = base if w is None else base & (k[None, None, :] > positions[:, :, None] - w)
            masks[w] = m[:, None].to(dev)
        return PagedStep(
            self, ids.to(dev), positions.to(dev), masks, slots.to(dev), (write_rows * width + write_cols).to(dev),
            tables.reshape(-1).to(dev), (lengths - 1).to(dev), rows, context, fresh, dense, starts.to(dev),
        )

    def _decode_buffer(self, seqs: list[Sequence], starts: torch.Tensor, longest: int):
        """(buffer, build) for a decode step, or None when a dense buffer would outgrow the paged cache."""
        key = tuple(s.seq_id for s in seqs)
        buf = self._buffer
        if buf is None or buf.key != key or buf.lengths != starts.tolist() or longest > buf.capacity:
            cfg = self.model.config
            capacity = -(-(longest + 64) // self.block_size) * self.block_size
            shape = (cfg.num_layers, len(seqs), cfg.num_kv_heads, capacity, cfg.head_dim)
            if 2 * torch.Size(shape).numel() > 2 * self.k_cache.numel():
                self._buffer = None
                return None
            self._buffer = None  # free the old one before allocating
            # Zeros: columns past a short row's length are read (under a False mask) and must not hold NaN.
            buf = self._buffer = DecodeBuffer(key, torch.zeros(shape, dtype=self.dtype, device=self.device),
                                              torch.zeros(shape, dtype=self.dtype, device=self.device), capacity)
            build = True
        else:
            build = False
        buf.lengths = (starts + 1).tolist()
        return buf, build


class DecodeBuffer:
    """The running batch's K/V, dense [layers, rows, heads, capacity, dim], kept across decode steps while the batch
    stays the same: each step appends one column instead of gathering every row's blocks again. It is rebuilt (one
    gather) whenever the batch changes, and is a cache of the paged blocks, which stay the source of truth."""

    def __init__(self, key, k, v, capacity):
        self.key, self.k, self.v, self.capacity = key, k, v, capacity
        self.lengths: list[int] = []


def store_weights_transposed(model: torch.nn.Module) -> None:
    """Keep every Linear weight as a transposed view of an [in, out] contiguous tensor. Same values, same module
    API; but on CPU the one-row matrix-vector products of decoding run ~1.3-1.8x faster in this layout (measured with
    MKL/oneDNN sgemv: the [out, in] layout reads the weight at about half the memory bandwidth). Tied embedding
    weights are left alone: the embedding lookup wants rows contiguous."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in tied and module.weight.is_contiguous():
            weight = module.weight.detach().t().contiguous().t()
            module.weight = torch.nn.Parameter(weight, requires_grad=module.weight.requires_grad)


def upcast_fp16_matmuls(model: torch.nn.Module) -> None:
    """CPU, float16 weights: one-row products (decoding one sequence) stay in fp16, the fastest matrix-vector kernel
    on AVX2 (~2x fp32); products of several rows (prefill, batched decoding) convert the weight to fp32 first,
    because without AVX-512 FP16 there is no fast fp16 matrix-matrix kernel (measured 3.5x slower than fp32 at 32
    rows). fp16 -> fp32 is exact, so both paths compute the same products. LoRA layers are left alone."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = _Fp16CpuLinear


class _Fp16CpuLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.linear(x.float(), self.weight.float(), bias).to(x.dtype)


class PagedStep:
    """The cache object the model sees for one step (`update`, `offset`, `advance`)."""

    offset = 0  # unused: the engine passes explicit position_ids and masks

    def __init__(self, runner, input_ids, position_ids, masks, slots, write_index, gather, last_index, rows, context,
                 fresh=False, dense=None, starts=None):
        self.runner = runner
        self.fresh = fresh
        self.dense, self.starts = dense, starts
        self.row_index = torch.arange(rows, device=input_ids.device)
        self.input_ids, self.position_ids, self.masks = input_ids, position_ids, masks
        self.slots, self.write_index, self.gather = slots, write_index, gather
        self.last_index = last_index
        self.rows, self.context = rows, context
        self._index = None

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        k_cache, v_cache = self.runner.k_cache[layer_idx], self.runner.v_cache[layer_idx]
        heads, dim = k.shape[1], k.shape[3]
        # [rows, heads, width, dim] -> one row per token, padding dropped.
        k_new = k.transpose(1, 2).reshape(-1, heads, dim).index_select(0, self.write_index)
        v_new = v.transpose(1, 2).reshape(-1, heads, dim).index_select(0, self.write_index)
        k_cache.index_copy_(0, self.slots, k_new.to(k_cache.dtype))
        v_cache.index_copy_(0, self.slots, v_new.to(v_cache.dtype))
        if self.fresh:
            return k.to(k_cache.dtype), v.to(v_cache.dtype)
        if self.dense is not None:
            buf, build = self.dense
            kb, vb = buf.k[layer_idx], buf.v[layer_idx]  # [rows, heads, capacity, dim]
            if build:
                kb[:, :, : self.context].copy_(self._gather(k_cache, heads, dim)[:, :, : self.context])
                vb[:, :, : self.context].copy_(self._gather(v_cache, heads, dim)[:, :, : self.context])
            else:  # one flat index_copy per tensor: advanced-index assignment costs ~3x more per layer
                index = self._append_index(buf, heads)
                kb.view(-1, dim).index_copy_(0, index, k[:, :, 0].reshape(-1, dim).to(kb.dtype))
                vb.view(-1, dim).index_copy_(0, index, v[:, :, 0].reshape(-1, dim).to(vb.dtype))
            return kb[:, :, : self.context], vb[:, :, : self.context]
        return self._gather(k_cache, heads, dim), self._gather(v_cache, heads, dim)

    def _append_index(self, buf, heads: int) -> torch.Tensor:
        """Flat row of [rows * heads * capacity] where each (row, head) appends this step's column; computed once
        per step, shared by every layer."""
        if self._index is None:
            heads_index = torch.arange(heads, device=self.starts.device)
            self._index = ((self.row_index[:, None] * heads + heads_index[None, :]) * buf.capacity
                           + self.starts[:, None]).reshape(-1)
        return self._index

    def _gather(self, cache: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
        """[rows, heads, blocks * block_size, dim]: every row's blocks, in order."""
        bs = self.runner.block_size
        blocks = cache.view(-1, bs, heads, dim).index_select(0, self.gather)
        return blocks.view(self.rows, -1, heads, dim).transpose(1, 2)

    def advance(self, n: int) -> None:
        pass
