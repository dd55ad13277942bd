"""Decode steps as CUDA graphs: one graph per batch size bucket, replayed with new inputs.

On a GPU a decode step of a small model is bound by kernel launches, not by the GPU: measured on an H200 with a
random TinyLlama-1.1B-shaped model in bf16, one token launches ~730 kernels, which the GPU runs in 1.9 ms while the
CPU takes 8.9 ms to launch them (docs/benchmarks.md). A CUDA graph records the launches once and replays them as one
(vLLM's and gpt-fast's answer); that needs every shape and address fixed, which the ordinary decode step (attending
to exactly each row's context) does not give. So the graphed step is a *static* step over `DecodeSlots`' dense rows:
  - the batch is padded to a bucket (1, 2, 4, 8, then multiples of 8); padding rows decode a dummy token in rows
    nobody holds (rows are packed 0..n-1, so rows n.. are free) and their outputs are dropped;
  - attention reads every column of the dense buffer, masked to each row's length: the mask, the columns this
    step's K/V go to and the RoPE positions are all computed inside the graph from one input, the rows' lengths;
  - grouped-query heads are folded into the query length ([rows, kv_heads, group, dim] against [rows, kv_heads,
    capacity, dim]), so one fused SDPA kernel serves GQA with a mask.
A graph holds the buffer's addresses, so when `DecodeSlots` reallocates (more rows, more columns) the graphs are
dropped and captured again on demand (rare: the buffer grows ahead). The step after the graph (copying the new
tokens' K/V to their paged slots, sampling) is the ordinary one.

With `capture=False` the same static step runs eagerly, which is how the CPU test suite checks it against the
ordinary decode path (CI has no GPU); capture and replay themselves are checked on a GPU by
`scripts/gpu-check.sh`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F


class DecodeGraphs:
    def __init__(self, runner, max_rows: int, capture: bool):
        self.runner = runner
        self.capture = capture
        self.buckets = _buckets(max_rows)
        self.max_rows = self.buckets[-1]
        dev = runner.device
        # The graphs' inputs: token ids and lengths (= positions = the column each row appends to), one H2D copy.
        self.inputs = torch.zeros(2, self.max_rows, dtype=torch.long, device=dev)
        self.graphs: dict[int, tuple] = {}  # bucket -> (graph or None, logits [bucket, vocab])
        self.pool = None
        self._buffer = None  # the DecodeSlots buffer the graphs were captured on
        self.replays = 0
        self.padding = 0  # padding rows run so far
        self.failure: str | None = None  # why capturing failed, after which every step runs eagerly

    def bucket(self, rows: int) -> int | None:
        return next((b for b in self.buckets if b >= rows), None)

    def run(self, step) -> torch.Tensor | None:
        """Logits [rows, vocab] of the step's decode rows (a decode-only step, rows <= max_rows); None when no
        graph can serve it (capturing failed once), and the caller runs the step eagerly."""
        if self.failure is not None:
            return None
        plan, slots = step.decode, self.runner.slots
        n = plan.rows
        b = self.bucket(n)
        if self._buffer is not slots.k:  # reallocated since capture: the graphs point at freed memory
            self.graphs.clear()
            # and a new memory pool: capturing into the pool of graphs that are gone fails inside torch's allocator
            # (an internal assert on an H200, torch 2.11)
            self.pool = None
            self._buffer = slots.k
        values = torch.zeros(2, b, dtype=torch.long)
        values[0, :n] = torch.tensor(step.token_ids[:n])
        values[1, :n] = torch.tensor(slots.length[:n])
        self.inputs[:, :b].copy_(values, non_blocking=False)
        entry = self.graphs.get(b)
        if entry is None:
            try:
                entry = self.graphs[b] = self._make(b)
            except RuntimeError as exc:  # an optimisation failing must not fail the requests: run eagerly
                self.failure = f"{type(exc).__name__}: {exc}"
                _log.warning("CUDA graph capture failed; decoding without graphs from now on: %s", self.failure)
                return None
        graph, logits = entry
        if graph is None:  # eager (CPU): the static step itself
            logits = self._forward(b)
        else:
            graph.replay()
        self.replays += 1
        self.padding += b - n
        return logits[:n]

    def _make(self, b: int):
        if not self.capture:
            return None, None
        with torch.cuda.device(self.runner.device):  # streams and pools of the model's GPU, not the current one
            # Warm up on a side stream (kernel choice, lazily created tensors), then record. The warm-up computes the
            # real step: its K/V writes are the ones the replay makes again.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(b)
            torch.cuda.current_stream().wait_stream(stream)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()  # one memory pool: graphs never run at the same time
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = self._forward(b)
        return graph, logits

    def _forward(self, b: int) -> torch.Tensor:
        runner = self.runner
        step = StaticDecode(runner, self.inputs[0, :b], self.inputs[1, :b])
        hidden = runner.model.hidden_states(step.input_ids, position_ids=step.positions, cache=step)
        return runner.model.lm_head(hidden[0])


class StaticDecode:
    """The cache object (`Transformer.hidden_states(cache=...)`) of one padded decode step over the dense rows."""

    def __init__(self, runner, ids: torch.Tensor, lengths: torch.Tensor):
        slots = runner.slots
        self.dtype = runner.dtype
        self.slots = slots
        rows, cap = ids.shape[0], slots.capacity
        self.rows = rows
        self.input_ids, self.positions = ids[None], lengths[None]
        cols = torch.arange(cap, device=ids.device)
        seen = cols[None, :] <= lengths[:, None]
        self.masks = {w: (seen if w is None else seen & (cols[None, :] > lengths[:, None] - w))[:, None, None, :]
                      for w in set(runner.windows)}
        self.windows = runner.windows
        heads = torch.arange(slots.heads, device=ids.device)[:, None]
        row = torch.arange(rows, device=ids.device)[None, :]
        # (head, row) order, as a step's k [1, kv_heads, rows, dim] flattens
        self.append = ((row * slots.heads + heads) * cap + lengths[None, :]).reshape(-1)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        slots, rows = self.slots, self.rows
        dim = slots.dim
        slots.k_flat[layer_idx].index_copy_(0, self.append, k.reshape(-1, dim))
        slots.v_flat[layer_idx].index_copy_(0, self.append, v.reshape(-1, dim))
        kv, heads = slots.heads, q.shape[1]
        group = heads // kv
        # q [1, heads, rows, dim] -> [rows, kv, group, dim]: the group's queries share their kv head's keys.
        folded = q[0].view(kv, group, rows, dim).permute(2, 0, 1, 3)
        keys, values = slots.k[layer_idx, :rows], slots.v[layer_idx, :rows]
        out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=self.masks[self.windows[layer_idx]])
        return out.permute(1, 2, 0, 3).reshape(1, heads, rows, dim)


_log = logging.getLogger("tunelab.engine")


def _buckets(max_rows: int) -> list[int]:
    small = [b for b in (1, 2, 4) if b < max_rows]
    return small + list(range(8, max_rows, 8)) + [max_rows] if max_rows >= 8 else small + [max_rows]
