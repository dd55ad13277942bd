"""Decode steps as recorded graphs, one per batch size bucket (on a CPU also per prompt chunk size), replayed with
new inputs: CUDA graphs on a GPU, TorchScript traces on a CPU.

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
Where Triton is available (it ships with CUDA builds of torch), the step records tunelab's GPU operators instead
(engine/gpu_kernels.py): attention with RoPE and the append over each row's own length (no mask), RMSNorm with the
residual addition, SwiGLU; a TinyLlama-1.1B-shaped step went 524 -> 252 kernels, 1.59 -> 1.13 ms on an H200.
A graph holds the buffer's addresses, so when `DecodeSlots` reallocates (more rows, more columns) the graphs are
dropped and captured again on demand (the buffer grows ahead; with the Triton attention it takes the whole context
at once). The step after the graph (copying the new tokens' K/V to their paged slots, sampling) is the ordinary one.

On a CPU the same static step is recorded with `torch.jit.trace`: the ~1,600 operations of a 30-layer decode step
then run from TorchScript's interpreter instead of Python, which on the project's 2-core Xeon took a bfloat16
batch-1 step of the built-in model from 26.0 to 19.7 ms (same outputs, bit for bit). Where tunelab's CPU operators
could be built (engine/native.py), the step's attention is one of them per layer (`_attend_fused`: split, RoPE,
append and attention over each row's own length, no mask, in place of ~25 operations), and with 16-bit weights its
RMSNorms are too (engine/cpu_kernels.py). `torch.jit.trace` is deprecated in favour of `torch.compile`, which is
what failed on this step on CPU (docs/serving.md); if a trace fails (or a later torch drops it) the engine logs why
and decodes eagerly.

With that operator a CPU also records steps that decode *and* carry one prompt chunk (a long prompt admitted beside
running streams), one recording per (bucket, chunk size in CHUNK_SIZES). The chunk's sequence takes a dense row of
its own; the chunk's tokens are queries of that row at consecutive columns (padded to the chunk size into columns
its next chunk overwrites), and the operator appends every query's K/V before any attends, so they see each other
causally. Run eagerly, such a step cost ~25-30 ms more than a recorded decode step of the built-in model, and
admitting a 2,000-token prompt stalled 4 streams 3.2x; recorded, ~1.9x (docs/benchmarks.md). Products of more than
eight rows read oneDNN's blocked weight copies, which a trace holds only as inputs (`packed_weights`).

Modes: "cuda" (capture and replay), "trace" (CPU), "eager" (the static step run as Python, which is how the tests
check it against the ordinary decode path: CI has no GPU); capture and replay are checked on a GPU by
`scripts/gpu-check.sh`.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F

from tunelab.engine.cpu_kernels import packed_weights


class DecodeGraphs:
    def __init__(self, runner, max_rows: int, mode: str):
        if mode not in ("cuda", "trace", "eager"):
            raise ValueError(f"mode: cuda, trace or eager, not {mode!r}")
        self.runner = runner
        self.mode = mode
        self.buckets = _buckets(max_rows)
        self.max_rows = self.buckets[-1]
        dev = runner.device
        # The graphs' inputs, one H2D copy: per query, its token id, its length (= position = the column it appends
        # to) and its dense row; then the queries whose logits are kept (steps with a prompt chunk).
        self.inputs = torch.zeros(4, self.max_rows + CHUNK_SIZES[-1], dtype=torch.long, device=dev)
        # (bucket, chunk size) -> a function replaying its recorded step (logits [bucket (+ 1), vocab])
        self.graphs: dict = {}
        self.pool = None
        self._buffer = None  # the DecodeSlots buffer the graphs were captured on
        self.replays = 0
        self.padding = 0  # padding rows run so far
        self.mixed = 0  # replays that carried a prompt chunk
        self.failure: str | None = None  # why capturing failed, after which every step runs eagerly

    def bucket(self, rows: int) -> int | None:
        return next((b for b in self.buckets if b >= rows), None)

    def run(self, step) -> torch.Tensor | None:
        """Logits [rows, vocab] of the step's decode rows (rows <= max_rows), then, for a step that carries a prompt
        chunk (CPU), of the chunk's last token; None when no graph can serve it (capturing failed once), and the
        caller runs the step eagerly."""
        if self.failure is not None:
            return None
        plan, slots = step.decode, self.runner.slots
        n = plan.rows
        b = self.bucket(n)
        chunk = plan.chunk
        if chunk is not None and self.mode == "cuda":
            return None  # CUDA graphs record decode-only steps (the runner does not ask; the step runs eagerly)
        c = 0 if chunk is None else chunk_size(chunk.length)
        if self._buffer is not slots.k and self.mode == "cuda":
            # reallocated since capture: the graphs point at freed memory. (A trace takes the buffers as inputs and
            # records their sizes as sizes, so it serves the new buffer as it is.) And a new memory pool: capturing
            # into the pool of graphs that are gone fails inside torch's allocator (an internal assert on an H200,
            # torch 2.11).
            self.graphs.clear()
            self.pool = None
        self._buffer = slots.k
        values = torch.zeros(4, b + c, dtype=torch.long)
        values[0, :n] = torch.tensor(step.token_ids[:n])
        if chunk is None:
            values[1, :n] = torch.tensor(slots.length[:n])
        else:
            # Decode rows (wherever the chunk's row sits), padding rows in rows nobody holds, then the chunk's
            # queries, all in its row: padding past its real tokens appends to columns its next chunk overwrites.
            values[1, :n] = torch.tensor(plan.lengths)
            values[2, :n] = torch.tensor(plan.query_rows)
            values[2, n:b] = torch.arange(len(slots.length), len(slots.length) + b - n)
            values[0, b : b + chunk.length] = torch.tensor(step.token_ids[n:])
            values[1, b : b + c] = torch.arange(chunk.start, chunk.start + c)
            values[2, b : b + c] = chunk.row
            values[3, :b] = torch.arange(b)
            values[3, b] = b + chunk.length - 1
        self.inputs[:, : b + c].copy_(values, non_blocking=False)
        replay = self.graphs.get((b, c))
        if replay is None:
            try:
                replay = self.graphs[(b, c)] = self._record(b, c)
            except Exception as exc:  # noqa: BLE001 - an optimisation failing must not fail the requests: run eagerly
                self.failure = f"{type(exc).__name__}: {exc}"
                _log.warning("recording a decode graph (%s) failed; decoding without graphs from now on: %s",
                             self.mode, self.failure)
                return None
        logits = replay()
        self.replays += 1
        self.padding += b - n
        if chunk is not None:
            self.mixed += 1
            return torch.cat([logits[:n], logits[b:]])  # the decode rows', then the chunk's last token's
        return logits[:n]

    def _record(self, b: int, c: int = 0):
        """A function that runs the static step for bucket `b` (and a prompt chunk of `c` tokens) on the current
        `inputs` and returns its logits."""
        slots = self.runner.slots
        packed = packed_weights(self.runner.model) if self.mode == "trace" else []
        inputs = self.inputs[:, : b + c]
        picks = b + 1 if c else 0

        def forward(inputs, k, v, *packed):  # (a trace takes a function, not a functools.partial)
            return self._forward(inputs, k, v, packed, picks)

        args = (inputs, slots.k, slots.v, *packed)
        if self.mode == "eager":  # (the buffers as they are at each replay: they grow)
            return lambda: forward(inputs, slots.k, slots.v, *packed)
        if self.mode == "trace":
            # Tracing runs the step once (its K/V writes are the ones every replay makes again). The tracer warns
            # where Python turns a size into a number (the hidden size, whether a product has one row): constants of a
            # bucket by design. The buffers' sizes stay sizes, so one trace serves them as they grow. The weights'
            # blocked copies are inputs too: the only way a trace holds them.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(forward, args, check_trace=False)
            return lambda: traced(inputs, slots.k, slots.v, *packed)
        with torch.cuda.device(self.runner.device):  # streams and pools of the model's GPU, not the current one
            # Warm up on a side stream (kernel choice, lazily created tensors), then record. The warm-up computes the
            # real step: its K/V writes are the ones the replay makes again.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                forward(*args)
            torch.cuda.current_stream().wait_stream(stream)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()  # one memory pool: graphs never run at the same time
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = forward(*args)

        def replay():
            graph.replay()
            return logits

        return replay

    def _forward(self, inputs: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: list,
                 picks: int = 0) -> torch.Tensor:
        """The static step; logits of every query, or of the first `picks` listed in `inputs[3]` (a step with a
        chunk: the decode rows and the chunk's last token). `packed` only reaches the trace as inputs."""
        runner = self.runner
        rows = inputs[2] if picks else None  # decode-only: query r is row r
        step = StaticDecode(runner, inputs[0], inputs[1], k, v, rows)
        hidden = runner.model.hidden_states(step.input_ids, position_ids=step.positions, cache=step)[0]
        if picks:
            hidden = hidden.index_select(0, inputs[3, :picks])
        return runner.model.lm_head(hidden)


class StaticDecode:
    """The cache object (`Transformer.hidden_states(cache=...)`) of one padded decode step over the dense rows
    `k`, `v` ([layers, rows, kv_heads, capacity, dim], `DecodeSlots`' buffers). They are arguments, not read from
    `DecodeSlots`, so that a TorchScript trace takes them as inputs and writes the new K/V into them: a tensor a
    trace finds elsewhere becomes a private constant, and the writes would go to that copy."""

    def __init__(self, runner, ids: torch.Tensor, lengths: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 rows: torch.Tensor | None = None):
        self.dtype = runner.dtype
        self.query_rows = rows  # each query's dense row (None: query r is row r); only with the fused operator
        self.k, self.v = k, v
        rows, kv, cap = ids.shape[0], k.shape[2], k.shape[3]
        self.rows = rows
        self.input_ids, self.positions = ids[None], lengths[None]
        self.windows = runner.windows
        self.swiglu, self.rms_norm = runner.swiglu_op, runner.norm_op  # fused operators Block looks for
        if runner.decode_op is not None:
            # tunelab's operator (engine/csrc/decode_ops.cpp on CPU, engine/gpu_kernels.py on GPU): Attention hands it
            # the q/k/v projection, and it splits, rotates, appends and attends each row over its own length: no
            # mask, no capacity-wide SDPA.
            self.attend_qkv = self._attend_fused
            self.decode_op = runner.decode_op
            self.lengths = lengths
            self.k_layers, self.v_layers = k.unbind(0), v.unbind(0)
            self.scale = runner.model.config.head_dim ** -0.5  # a number, not a traced size
            return
        cols = torch.arange(cap, device=ids.device)
        seen = cols[None, :] <= lengths[:, None]
        self.masks = {w: (seen if w is None else seen & (cols[None, :] > lengths[:, None] - w))[:, None, None, :]
                      for w in set(runner.windows)}
        heads = torch.arange(kv, device=ids.device)[:, None]
        row = torch.arange(rows, device=ids.device)[None, :]
        # (head, row) order, as a step's k [1, kv_heads, rows, dim] flattens
        self.append = ((row * kv + heads) * cap + lengths[None, :]).reshape(-1)

    attend_qkv = None  # set per step when a fused operator serves it

    def _attend_fused(self, layer_idx: int, qkv: torch.Tensor, rope, heads: int) -> torch.Tensor:
        cos, sin = rope if rope is not None else (None, None)
        args = (qkv, cos, sin, self.k_layers[layer_idx], self.v_layers[layer_idx], self.lengths, heads,
                self.windows[layer_idx] or 0, self.scale)
        return self.decode_op(*args) if self.query_rows is None else self.decode_op(*args, self.query_rows)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        rows, dim = self.rows, k.shape[-1]
        keys, values = self.k[layer_idx], self.v[layer_idx]  # [all rows, kv_heads, capacity, dim]
        keys.view(-1, dim).index_copy_(0, self.append, k.reshape(-1, dim))
        values.view(-1, dim).index_copy_(0, self.append, v.reshape(-1, dim))
        kv, heads = keys.shape[1], q.shape[1]
        group = heads // kv
        # q [1, heads, rows, dim] -> [rows, kv, group, dim]: the group's queries share their kv head's keys.
        folded = q[0].view(kv, group, rows, dim).permute(2, 0, 1, 3)
        out = F.scaled_dot_product_attention(folded, keys[:rows], values[:rows],
                                             attn_mask=self.masks[self.windows[layer_idx]])
        return out.permute(1, 2, 0, 3).reshape(1, heads, rows, dim)


_log = logging.getLogger("tunelab.engine")


# Prompt chunk sizes a recorded step takes beside decode rows (the scheduler rounds chunks down to one of these; a
# prompt's last chunk is padded up to one).
CHUNK_SIZES = (4, 8, 16, 32, 64)


def chunk_size(tokens: int) -> int:
    return next(c for c in CHUNK_SIZES if c >= tokens)


def _buckets(max_rows: int) -> list[int]:
    small = [b for b in (1, 2, 4) if b < max_rows]
    return small + list(range(8, max_rows, 8)) + [max_rows] if max_rows >= 8 else small + [max_rows]
