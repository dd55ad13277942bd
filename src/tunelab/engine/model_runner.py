"""Turning one scheduled step into tensors for tunelab's Transformer, and attention over the paged KV cache.

A step packs every scheduled token into one row [1, T], with no padding: first one token for each decoding sequence,
then the prompt chunks being prefilled. The projections and MLPs run once over all T tokens, so a decode batch and
the prompt chunks admitted beside it share one read of the weights; attention is the only per-sequence work, and the
model hands it to the step (`PagedAttention.attend`):
  - every new key and value reaches its paged-cache slot by the end of the step (the paged blocks are the source of
    truth, and what the prefix cache shares): prompt tokens in each layer, before any chunk attends; then a
    token-level prefix hit's K/V are copied into its sequence's own block (the source may be computed in this step);
  - decode tokens attend through `DecodeSlots`, a dense copy of the decoding sequences' K/V in which each sequence
    keeps its row while it decodes and appends one column per step: its blocks are gathered once, when it starts
    decoding, rather than at every step. Rows stay packed (a finished sequence's row is refilled by the last one),
    so one SDPA call covers the whole decode batch. A decode token is written to its row only, and the step's
    decode tokens are copied to their paged slots after the last layer, all layers at once (the scheduler keys a
    block for the prefix cache only once its K/V are there, so no chunk of the same step can read such a slot);
  - a prompt chunk with nothing cached before it attends to its own keys (causal); a later chunk, or a prompt whose
    prefix the prefix cache supplied, gathers its blocks;
  - except where a step that decodes carries a single chunk and a recording can serve it (a CPU with tunelab's
    attention operator, engine/decode_graphs.py): then the chunk's sequence takes a dense row too
    (`DecodeSlots.plan_mixed`), its tokens are appended there and attend there, and reach their paged slots with
    the decode tokens', after the step.
Only each sequence's last token goes through lm_head.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.engine.cpu_kernels import cache_dtype, choose_cpu_kernels, native_kernels
from tunelab.engine.sequence import Sequence
from tunelab.models.transformer import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int, has_adapters: bool = False,
                 compile: bool = False, fuse: bool = True, graphs: bool = False, max_decode_rows: int = 64,
                 max_model_len: int = 0):
        self.model = model
        self.block_size = block_size
        self.has_adapters = has_adapters
        cfg = model.config
        param = next(model.parameters())
        self.device = param.device
        self.dtype = cache_dtype(param)
        # Token-major slots [slot, heads, dim]: a block is one contiguous chunk, and gathering whole blocks along
        # the first dimension is a few large copies (index_select along a later dimension measured ~5x slower).
        shape = (cfg.num_layers, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        # Zeros, not empty: masked slots still enter SDPA's weighted sum (with weight 0), and 0 * NaN is NaN.
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Per-layer views made once: indexing the cache by layer in every layer of every step is an op each time.
        self.k_layers, self.v_layers = self.k_cache.unbind(0), self.v_cache.unbind(0)
        self.windows = [layer.self_attn.sliding_window for layer in model.layers]
        if fuse and not has_adapters:
            model.fuse_projections()
        # The recorded decode step's fused operators (split, RoPE, append, attend; on GPUs SwiGLU and RMSNorm with the
        # residual addition too), the attention one with one contract:
        # tunelab's CPU operators (engine/native.py) when they could be built, its Triton kernels on a GPU
        # (engine/gpu_kernels.py); None: the step runs those as separate torch operations.
        self.decode_op = self.swiglu_op = self.norm_op = None
        if self.device.type == "cpu":
            choose_cpu_kernels(model)
            if graphs and self.dtype == torch.float32 and native_kernels():
                self.decode_op = torch.ops.tunelab.decode_attention
        elif graphs:
            from tunelab.engine import gpu_kernels  # imports triton: only on GPUs

            if gpu_kernels.available(self.device, cfg.head_dim):
                self.decode_op, self.swiglu_op = gpu_kernels.decode_attention, gpu_kernels.silu_mul
                self.norm_op = gpu_kernels.rms_norm
        # The dense decode copy may take at most as much memory as the paged cache itself. Where CUDA graphs attend
        # with the Triton operator (which reads each row's own length, not the buffer's width) it takes the whole
        # context at once: a reallocation would drop the captured graphs (measured on an H200: batch 1, 256 tokens,
        # 284 -> 508 tok/s together with the fused norms). The masked SDPA reads every column, so not there.
        full = max_model_len + 1 if self.device.type == "cuda" and self.decode_op is not None else 0
        self.slots = DecodeSlots(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device,
                                 max_elements=self.k_cache.numel(), full_columns=full)
        self.decode_paths = {"dense": 0, "gathered": 0}  # decode tokens served by each attention path
        self._hidden = model.hidden_states
        if compile:  # GPU: fuse the small decode kernels; shapes vary, so compile dynamically.
            self._hidden = torch.compile(model.hidden_states, dynamic=True)
        # Decode-only steps replay recorded graphs (engine/decode_graphs.py): CUDA graphs on a GPU, TorchScript
        # traces on a CPU; not with adapters (per-token routing is a hook, which a recording would not see).
        self.graphs = None
        self.chunk_sizes: tuple[int, ...] | None = None  # prompt chunks a recorded step can carry (None: none)
        if graphs and not has_adapters:
            from tunelab.engine.decode_graphs import CHUNK_SIZES, DecodeGraphs

            model.requires_grad_(False)  # a recording keeps the weights as constants, which must not need gradients
            self.graphs = DecodeGraphs(self, max_decode_rows, "cuda" if self.device.type == "cuda" else "trace")
            # On a CPU with tunelab's attention operator, a step that decodes and carries one prompt chunk is recorded
            # too (the operator attends a chunk's queries causally in the chunk's dense row): otherwise such a step
            # runs eagerly, which cost ~25-30 ms more than a recorded decode step of the built-in model, and a long
            # prompt's admission stalled the running streams ~3x (docs/benchmarks.md).
            if self.device.type == "cpu" and self.decode_op is not None and hasattr(model.layers[0].self_attn,
                                                                                    "qkv_proj"):
                self.chunk_sizes = CHUNK_SIZES

    @staticmethod
    def bytes_per_token(model: Transformer) -> int:
        cfg = model.config
        param = next(model.parameters())
        return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * cache_dtype(param).itemsize

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], num_tokens: list[int] | None = None) -> torch.Tensor:
        """Compute the K/V of the next `num_tokens[i]` tokens of each sequence (default: what the scheduler set in
        `num_scheduled`, else all it lacks); logits [rows, vocab] (float32) at the last of them, in `seqs` order."""
        num_tokens = num_tokens or [s.num_scheduled or s.num_new_tokens for s in seqs]
        step = self._prepare(seqs, num_tokens)
        logits = self.graphs.run(step) if step.graphed else None
        if logits is None and step.decode is not None and step.decode.chunk is not None:
            step = self._prepare(seqs, num_tokens, mixed=False)  # no recording for it after all: run it eagerly
        if logits is not None:  # decode rows (and a chunk's last token): `last_index` maps them
            logits = logits[step.last_index]
        else:
            with self._routing(step), self._attention_kernels():
                hidden = self._hidden(step.input_ids, position_ids=step.position_ids, cache=step)
                logits = self.model.lm_head(hidden[0, step.last_index])
        self.slots.flush(step.decode, self, step.decode_slots)
        for seq, n in zip(seqs, num_tokens):  # only on success: a failed step can be retried row by row
            seq.num_cached += n
            seq.num_scheduled = 0
            seq.stepped = True
        self.slots.commit(step.decode)
        return logits.float()

    # ------------------------------------------------------------------ helpers
    def _prepare(self, seqs: list[Sequence], news: list[int], mixed: bool = True) -> PagedAttention:
        # A decode is the next token of a sequence past its prompt. A one-token prompt chunk is not: neither the last
        # of a long prompt's chunks, nor a first chunk whose rest the prefix cache supplied (also for a preempted
        # sequence coming back), where the dense copy would read cached K/V before this step writes them (a block
        # computed beside it, a token-level copy).
        is_decode = [n == 1 and seq.stepped and bool(seq.output_ids) for seq, n in zip(seqs, news)]
        decoding = [i for i, d in enumerate(is_decode) if d]
        prompts = [i for i, d in enumerate(is_decode) if not d]
        # A decode-only step can replay a recorded graph: its dense rows must then cover the padded batch. So can a
        # step with one prompt chunk beside its decodes (`chunk_sizes`), where the chunk's sequence takes a dense row
        # too (the chunk's tokens are appended to it, and attend in it).
        graphed = self.graphs is not None and 0 < len(decoding) <= self.graphs.max_rows
        mixed = (graphed and mixed and bool(self.chunk_sizes) and len(prompts) == 1
                 and news[prompts[0]] <= self.chunk_sizes[-1] and seqs[prompts[0]].prefix_copy is None)
        graphed = graphed and (not prompts or mixed)
        min_rows = self.graphs.bucket(len(decoding)) + mixed if graphed else 0
        decode = None
        if mixed:
            decode = self.slots.plan_mixed([seqs[i] for i in decoding], seqs[prompts[0]], news[prompts[0]], self,
                                           min_rows)
            graphed = decode is not None
        if decode is None and decoding:
            decode = self.slots.plan([seqs[i] for i in decoding], self, min_rows if graphed else 0)
        if decode is None and decoding:  # no room for the dense copy: these tokens gather their blocks instead
            prompts, decoding = decoding + prompts, []
        if decode is not None:  # decode tokens go first, in the order of their rows
            decoding = [decoding[j] for j in decode.order]
            self.decode_paths["dense"] += len(decoding)
            if decode.chunk is not None:  # then the chunk the recorded step carries
                decoding.append(prompts.pop())
        else:  # (the dense buffer stays: allocating it again costs more than holding it; stale rows are refilled)
            self.decode_paths["gathered"] += sum(1 for i in prompts if news[i] == 1)
        order = decoding + prompts
        is_prompt = set(prompts)
        ids, positions, slots, last = [], [], [], [0] * len(seqs)
        chunks, copies = [], []
        for i in order:
            seq, n = seqs[i], news[i]
            start = seq.num_cached
            if i in is_prompt:
                chunks.append(self._chunk(seq, len(ids), start, n))
            if seq.prefix_copy is not None:
                c, bs = seq.prefix_copy, self.block_size
                copies.append((slice(c.src * bs, c.src * bs + c.length), slice(c.dst * bs, c.dst * bs + c.length)))
            ids += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            slots += [self._slot(seq, p) for p in range(start, start + n)]
            last[i] = len(ids) - 1
        if decode is not None and decode.chunk is not None:  # the recorded step's logits: decode rows, then the chunk
            last[decoding[-1]] = decode.rows
        dev = self.device
        return PagedAttention(
            self, torch.tensor([ids], device=dev), torch.tensor([positions], device=dev),
            torch.tensor(slots, device=dev), torch.tensor(last, device=dev), decode, chunks,
            adapters=[seqs[i].adapter for i in order], lengths=[news[i] for i in order], copies=copies,
            token_ids=ids, graphed=graphed and decode is not None,
        )

    def _slot(self, seq: Sequence, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _chunk(self, seq: Sequence, offset: int, start: int, n: int) -> PromptChunk:
        """Where one prompt chunk sits in the packed row, and what it attends to."""
        end = start + n
        windows = set(self.windows)
        if start == 0 and all(w is None or w >= end for w in windows):
            return PromptChunk(offset, n, None, None)  # attends to its own keys: plain causal
        blocks = None
        context = n
        if start > 0:
            count = -(-end // self.block_size)
            table = seq.block_table[:count]
            if table == list(range(table[0], table[0] + count)):  # consecutive blocks: read them in place
                first = table[0] * self.block_size
                blocks, context = slice(first, first + end), end
            else:
                blocks, context = torch.tensor(table, device=self.device), count * self.block_size
        q_pos = torch.arange(start, end)[:, None]
        k_pos = torch.arange(context)[None, :]  # absolute positions: the gathered blocks start at 0
        allowed = k_pos <= q_pos
        masks = {w: (allowed if w is None else allowed & (k_pos > q_pos - w))[None, None].to(self.device)
                 for w in windows}
        return PromptChunk(offset, n, blocks, masks)

    def _attention_kernels(self):
        """The SDPA kernels an eager step may use. On GPUs not cuDNN's: it builds an execution plan for every new
        shape, and an eager step's shapes are new nearly every time (a prompt chunk's context grows by the chunk):
        measured on an H200, ~2 ms of CPU per call, 44 calls in a step of a 22-layer model with 4 streams and a
        chunk, which made such a step ~95 ms instead of ~12. FlashAttention and memory-efficient attention do not
        plan per shape."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def _routing(self, step: PagedAttention):
        if not self.has_adapters:
            return contextlib.nullcontext()
        # Each token through its sequence's adapter; names were checked once, in LLM.make_sequence.
        from tunelab.lora import Routing, routed

        if len(set(step.adapters)) == 1:
            return routed(self.model, Routing.uniform(step.adapters[0]))
        names = sorted({a for a in step.adapters if a is not None})
        per_seq = [-1 if a is None else names.index(a) for a in step.adapters]
        index = torch.repeat_interleave(torch.tensor(per_seq), torch.tensor(step.lengths))
        return routed(self.model, Routing.per_token_index(names, index.to(self.device)))


@dataclass
class PromptChunk:
    offset: int  # first token's index in the packed row
    length: int
    blocks: torch.Tensor | slice | None  # its blocks (a slot range when consecutive); None: attend to its own keys
    masks: dict | None  # {sliding window: bool [1, 1, length, context]}; None: plain causal


@dataclass
class DecodePlan:
    order: list[int]  # decode sequences (indices into the list given to `plan`) by row
    seq_ids: list[int]
    rows: int  # the decode tokens are rows 0..rows-1
    context: int  # columns SDPA reads this step
    masks: dict  # {sliding window: bool [rows, 1, 1, context], or None when every row sees every column}
    append_index: torch.Tensor  # flat [heads * rows]: the column of each (head, row) in a layer's [rows*heads*cap, dim]
    k_views: tuple  # per layer, the [rows, heads, context, dim] SDPA reads this step
    v_views: tuple
    chunk: MixedChunk | None = None  # a prompt chunk in a dense row beside the decode rows (recorded steps only)
    lengths: list[int] | None = None  # with a chunk: each decode row's length, and its row
    query_rows: list[int] | None = None

    @property
    def queries(self) -> int:
        """Tokens whose K/V this step appends to dense rows: the decode rows', and the chunk's."""
        return self.rows + (self.chunk.length if self.chunk is not None else 0)


@dataclass
class MixedChunk:
    seq_id: int
    row: int  # its dense row
    start: int  # its first token's position (= column)
    length: int


class DecodeSlots:
    """The decoding sequences' K/V, dense [layers, rows, heads, capacity, dim], kept across steps: a sequence gets a
    row (its blocks gathered once) when it starts decoding and appends one column per step. A cache of the paged
    blocks, which stay the source of truth; rows are packed 0..n-1 so one SDPA call covers the decode batch."""

    def __init__(self, layers, heads, dim, dtype, device, max_elements, full_columns: int = 0):
        self.layers, self.heads, self.dim, self.dtype, self.device = layers, heads, dim, dtype, device
        self.max_elements = max_elements
        self.full_columns = full_columns  # columns to reserve at once where that fits (GPUs: the context length)
        self.k = self.v = self.k_flat = self.v_flat = None
        self.row_of: dict[int, int] = {}  # seq_id -> row
        self.length: list[int] = []  # tokens held per row

    def plan(self, seqs: list[Sequence], runner: ModelRunner, min_rows: int = 0) -> DecodePlan | None:
        """Rows for this step's decode sequences (filling the new ones), or None when the copy would not fit; the
        buffer keeps at least `min_rows` rows (a recorded graph's padded batch)."""
        self._retain(seqs)
        if not self._reserve(max(len(seqs), min_rows), max(s.num_cached for s in seqs) + 1):
            return None
        for seq in seqs:
            if seq.seq_id not in self.row_of:
                self._fill(seq, runner)
        order = sorted(range(len(seqs)), key=lambda j: self.row_of[seqs[j].seq_id])
        lengths = [seqs[j].num_cached for j in order]
        n, context = len(seqs), max(lengths) + 1
        uniform = min(lengths) == context - 1
        masks = {}
        for w in set(runner.windows):
            if uniform and (w is None or w >= context):
                masks[w] = None  # every row attends to all `context` columns: SDPA needs no mask
                continue
            cached = torch.tensor(lengths)[:, None]
            k = torch.arange(context)[None, :]
            allowed = k <= cached if w is None else (k <= cached) & (k > cached - w)
            masks[w] = allowed[:, None, None].to(self.device)
        # Head-major (head, row) order, the order of a step's k[:, :, :rows] flattened: no reshuffle before the copy.
        heads = torch.arange(self.heads)[:, None]
        append = ((torch.arange(n)[None, :] * self.heads + heads) * self.capacity
                  + torch.tensor(lengths)[None, :]).reshape(-1).to(self.device)
        views = (self.k[:, :n, :, :context].unbind(0), self.v[:, :n, :, :context].unbind(0))
        return DecodePlan(order, [seqs[j].seq_id for j in order], n, context, masks, append, *views)

    def plan_mixed(self, seqs: list[Sequence], prompt: Sequence, n: int, runner: ModelRunner,
                   min_rows: int) -> DecodePlan | None:
        """Rows for a recorded step that decodes `seqs` and computes the next `n` prompt tokens of `prompt`, in a
        row of its own (filled from its blocks when it first gets one; columns reserved for the chunk padded to
        its recorded size); None when that does not fit. Only for tunelab's attention operator, which reads each
        query's row and length: no masks, no views."""
        from tunelab.engine.decode_graphs import chunk_size

        everyone = [*seqs, prompt]
        self._retain(everyone)
        start = prompt.num_cached
        # Columns for the whole prompt at once (its last chunk padded), and no more: growing the buffer copies every
        # row, and a 2,000-token prompt would otherwise grow it several times while it is admitted; every row gets
        # the columns, and on the project's VM first touching fresh memory costs ~30 us a page.
        columns = max(max(s.num_cached for s in seqs) + 1, len(prompt) + chunk_size(n))
        if not self._reserve(max(len(everyone), min_rows), columns, ahead=False):
            return None
        for seq in everyone:
            if seq.seq_id not in self.row_of:
                self._fill(seq, runner)
        order = sorted(range(len(seqs)), key=lambda j: self.row_of[seqs[j].seq_id])
        rows = [self.row_of[seqs[j].seq_id] for j in order]
        lengths = [seqs[j].num_cached for j in order]
        chunk = MixedChunk(prompt.seq_id, self.row_of[prompt.seq_id], start, n)
        # (head, query) order over the decode tokens and the chunk's, for `flush`
        query_rows = torch.tensor(rows + [chunk.row] * n)
        columns_of = torch.tensor(lengths + list(range(start, start + n)))
        heads = torch.arange(self.heads)[:, None]
        append = ((query_rows[None, :] * self.heads + heads) * self.capacity + columns_of[None, :]).reshape(-1)
        return DecodePlan(order, [seqs[j].seq_id for j in order], len(seqs), 0, {}, append.to(self.device), (), (),
                          chunk=chunk, lengths=lengths, query_rows=rows)

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    def flush(self, plan: DecodePlan | None, runner: ModelRunner, slots: torch.Tensor) -> None:
        """Copy the step's decode tokens from their dense rows into their paged slots, all layers at once (during
        the step they were written only to the rows: two copies per step instead of two per layer)."""
        if plan is None:
            return
        for dense, cache in ((self.k, runner.k_cache), (self.v, runner.v_cache)):
            new = dense.view(self.layers, -1, self.dim).index_select(1, plan.append_index)  # [layers, heads*rows, dim]
            cache.index_copy_(1, slots, new.view(self.layers, self.heads, plan.queries, self.dim).transpose(1, 2))

    def commit(self, plan: DecodePlan | None) -> None:
        if plan is not None:
            for seq_id in plan.seq_ids:
                self.length[self.row_of[seq_id]] += 1
            if plan.chunk is not None:
                self.length[plan.chunk.row] += plan.chunk.length

    def release_all(self) -> None:
        self.k = self.v = self.k_flat = self.v_flat = None
        self.row_of.clear()
        self.length = []

    def _reserve(self, rows: int, columns: int, ahead: bool = True) -> bool:
        """Room for `rows` rows of `columns` tokens, growing (and copying the live rows) when short; `ahead=False`
        when `columns` already covers what is coming (a prompt's whole length)."""
        if self.k is not None and rows <= self.k.shape[1] and columns <= self.capacity:
            return True
        old_rows = 0 if self.k is None else self.k.shape[1]
        wanted = columns * 5 // 4 + 32 if ahead else columns
        grown = max(self.capacity, -(-wanted // 64) * 64)  # grow ahead: copies stay rare
        # On a GPU a reallocation also drops the captured graphs (they hold the buffer's address), and capturing
        # again costs tens of milliseconds: there the whole context is reserved at once when it fits.
        caps = [max(grown, self.full_columns), grown] if self.full_columns > grown else [grown]
        # Rows grow ahead too (doubling) when rows are short and that fits, so sequences joining one by one do not
        # copy every time (when only columns are short, doubling the rows too would make every growth cost more).
        row_choices = (max(rows, 2 * old_rows if ahead else 0), max(rows, old_rows)) if rows > old_rows else (old_rows,)
        fits = [(r, c) for c in caps for r in row_choices
                if self.layers * r * self.heads * c * self.dim <= self.max_elements]
        if not fits:
            self.release_all()
            return False
        new_cap = fits[0][1]
        shape = (self.layers, fits[0][0], self.heads, new_cap, self.dim)
        # Zeros: columns past a short row's length are read (under a False mask) and must not hold NaN.
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.k is not None and self.row_of:
            used = len(self.length)
            k[:, :used, :, : self.capacity] = self.k[:, :used]
            v[:, :used, :, : self.capacity] = self.v[:, :used]
        self.k, self.v = k, v
        # Per-layer [rows * heads * capacity, dim] views, made once per buffer, for the appends of every step.
        self.k_flat = [t.view(-1, self.dim) for t in k.unbind(0)]
        self.v_flat = [t.view(-1, self.dim) for t in v.unbind(0)]
        return True

    def _retain(self, seqs: list[Sequence]) -> None:
        """Keep the rows of `seqs` that are still current; free every other row (packing the rest)."""
        live = {s.seq_id for s in seqs}
        for seq_id in [i for i in self.row_of if i not in live]:
            self._free(seq_id)
        for seq in seqs:
            row = self.row_of.get(seq.seq_id)
            if row is not None and self.length[row] != seq.num_cached:  # recomputed elsewhere: refill
                self._free(seq.seq_id)

    def _fill(self, seq: Sequence, runner: ModelRunner) -> None:
        row = len(self.length)
        self.row_of[seq.seq_id] = row
        self.length.append(seq.num_cached)
        n = seq.num_cached
        if n:
            index = torch.tensor([runner._slot(seq, p) for p in range(n)], device=self.device)
            # [layers, n, heads, dim] -> [layers, heads, n, dim], all layers in one gather
            self.k[:, row, :, :n] = runner.k_cache.index_select(1, index).transpose(1, 2)
            self.v[:, row, :, :n] = runner.v_cache.index_select(1, index).transpose(1, 2)

    def _free(self, seq_id: int) -> None:
        """Drop a row; the last row moves into its place so rows stay packed."""
        row = self.row_of.pop(seq_id)
        last = len(self.length) - 1
        if row != last:
            moved = next(i for i, r in self.row_of.items() if r == last)
            n = self.length[last]
            self.k[:, row, :, :n] = self.k[:, last, :, :n]
            self.v[:, row, :, :n] = self.v[:, last, :, :n]
            self.row_of[moved] = row
            self.length[row] = n
        self.length.pop()


class PagedAttention:
    """One step's packed inputs and the attention the model calls in every layer (`attend`)."""

    def __init__(self, runner, input_ids, position_ids, write_slots, last_index, decode, chunks, adapters, lengths,
                 copies=(), token_ids=(), graphed=False):
        self.runner = runner
        self.dtype = runner.dtype  # attention's, the cache's
        self.input_ids, self.position_ids = input_ids, position_ids
        self.last_index = last_index
        self.decode: DecodePlan | None = decode
        rows = decode.queries if decode is not None else 0
        self.decode_slots, self.prompt_slots = write_slots[:rows], write_slots[rows:]
        self.chunks: list[PromptChunk] = chunks
        self.adapters, self.lengths = adapters, lengths
        self.copies: list[tuple[slice, slice]] = list(copies)  # (source slots, destination slots): token-level hits
        self.token_ids = token_ids  # input_ids as a list, in the packed order
        self.graphed = graphed  # served by a CUDA graph (engine/decode_graphs.py)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        """q [1, H, T, D], k/v [1, KV, T, D], already in `self.dtype` (the model converts them) -> [1, H, T, D]; the
        new keys and values are stored first."""
        runner = self.runner
        rows = self.decode.rows if self.decode is not None else 0
        if rows < k.shape[2]:  # prompt tokens into their paged slots, before any chunk reads them
            k_cache, v_cache = runner.k_layers[layer_idx], runner.v_layers[layer_idx]
            k_cache.index_copy_(0, self.prompt_slots, k[0, :, rows:].transpose(0, 1))
            v_cache.index_copy_(0, self.prompt_slots, v[0, :, rows:].transpose(0, 1))
            # After the writes: a source block computed in this very step is complete. In scheduling order: a
            # source may itself have received an earlier copy of this step. (A copy always comes with a prompt row.)
            for src, dst in self.copies:
                k_cache[dst] = k_cache[src]
                v_cache[dst] = v_cache[src]
        window = runner.windows[layer_idx]
        parts = []
        if self.decode is not None:
            parts.append(self._decode(layer_idx, q, k, v, window))
        for chunk in self.chunks:
            parts.append(self._chunk(chunk, runner.k_layers[layer_idx], runner.v_layers[layer_idx], q, k, v, window))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def _decode(self, layer_idx, q, k, v, window) -> torch.Tensor:
        """The decode rows: append this step's K/V to each sequence's dense row (only there: `DecodeSlots.flush`
        writes their paged slots after the step), then one SDPA call over all rows."""
        plan, slots = self.decode, self.runner.slots
        n = plan.rows
        if n < k.shape[2]:
            q, k, v = q[:, :, :n], k[:, :, :n], v[:, :, :n]
        dim = slots.dim
        # One flat index_copy per tensor (advanced-index assignment costs ~3x more per layer).
        slots.k_flat[layer_idx].index_copy_(0, plan.append_index, k.reshape(-1, dim))
        slots.v_flat[layer_idx].index_copy_(0, plan.append_index, v.reshape(-1, dim))
        out = F.scaled_dot_product_attention(q.permute(2, 1, 0, 3), plan.k_views[layer_idx], plan.v_views[layer_idx],
                                             attn_mask=plan.masks[window], enable_gqa=q.shape[1] != k.shape[1])
        return out.permute(2, 1, 0, 3)  # [rows, H, 1, D] -> [1, H, rows, D]

    def _chunk(self, chunk: PromptChunk, k_cache, v_cache, q, k, v, window) -> torch.Tensor:
        a, b = chunk.offset, chunk.offset + chunk.length
        gqa = q.shape[1] != k.shape[1]
        if chunk.blocks is None:
            keys, values = k[:, :, a:b], v[:, :, a:b]  # already in the cache dtype (the model converts them)
        else:
            keys, values = self._gather(k_cache, chunk.blocks), self._gather(v_cache, chunk.blocks)
        if chunk.masks is None:
            return F.scaled_dot_product_attention(q[:, :, a:b], keys, values, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q[:, :, a:b], keys, values, attn_mask=chunk.masks[window],
                                              enable_gqa=gqa)

    def _gather(self, cache: torch.Tensor, blocks: torch.Tensor | slice) -> torch.Tensor:
        """[1, KV, blocks * block_size, D]: one sequence's blocks, in order (a view when they are consecutive: a
        long prompt admitted at once usually gets consecutive blocks, and its later chunks then copy nothing)."""
        if isinstance(blocks, slice):
            return cache[blocks].unsqueeze(0).transpose(1, 2)
        bs = self.runner.block_size
        heads, dim = cache.shape[1], cache.shape[2]
        return cache.view(-1, bs, heads, dim).index_select(0, blocks).view(1, -1, heads, dim).transpose(1, 2)
