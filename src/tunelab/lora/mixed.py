"""Mixed-adapter batches: every row (or every token) of ONE forward pass uses its own adapter.

Each LoRA layer stacks its adapters into zero-padded tensors with a zero "base" slot (cached while the same adapters
are mixed, see `_cached_stack`):
A [S+1, r_max, in] and B [S+1, out, r_max] with the adapter's scaling folded into B. Then
  - per row:   gather each row's A and B and run two batched matmuls (torch.bmm) over the whole batch (rows with
               only a few tokens, as in decoding, take the per-token path below, which moves fewer bytes);
  - per token: (for packed sequences, where one row holds many requests) project every token through all adapters'
               A at once ([N, S*r_max], cheap since r is small), zero the slots a token does not use, and multiply by
               all B's concatenated: one dense matmul, no Python loop and no per-token weight copies.
Dropout is not applied: mixed batches are an inference feature. Merged adapters cannot be mixed (they are in W0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.lora.errors import LoraError
from tunelab.lora.injection import _wrappers, adapter_state
from tunelab.lora.layers import LoraEmbedding, ModulesToSave, _LoraBase, adapter_dtype


@contextlib.contextmanager
def per_row_adapters(model: nn.Module, adapters: Sequence[str | None]) -> Iterator[nn.Module]:
    """Inside the block, row i of the batch runs adapter `adapters[i]` (None = the base model).

    `with per_row_adapters(model, ["a", "b", None, "a"]): logits = model(input_ids)`
    """
    names = sorted({a for a in adapters if a is not None})
    if len(set(adapters)) == 1:
        # Every row wants the same thing: the plain single-adapter forward (or the base
        # model) is the same result without gathering per-row factors.
        with _uniform(model, adapters[0]):
            yield model
        return
    slot = {n: i + 1 for i, n in enumerate(names)}
    index = torch.tensor([0 if a is None else slot[a] for a in adapters], dtype=torch.long)
    with _routed(model, _Routing(names, index, per_token=False), adapters):
        yield model


@contextlib.contextmanager
def _uniform(model: nn.Module, name: str | None) -> Iterator[None]:
    state = adapter_state(model)
    if name is not None and name not in state.configs:
        raise LoraError(f"unknown adapter(s) {[name]} in mixed batch; this model has {list(state.configs)}")
    wrappers = list(_wrappers(model))
    before = [(m.active_adapters, m.disabled) for m in wrappers]
    for m in wrappers:
        if isinstance(m, _LoraBase) and m.merged_adapters:
            raise LoraError(f"adapters {m.merged_adapters} are merged into the base weights; unmerge(model) before "
                            "running a mixed-adapter batch")
        if name is not None and name in m.adapters:
            m.active_adapters, m.disabled = [name], False
        else:
            m.disabled = True
    try:
        yield
    finally:
        for m, (active, flag) in zip(wrappers, before):
            m.active_adapters, m.disabled = active, flag


@contextlib.contextmanager
def per_token_adapters(model: nn.Module, adapters: Sequence[str], index: torch.Tensor) -> Iterator[nn.Module]:
    """Inside the block, token t (in the order of `input_ids.reshape(-1)`) runs `adapters[index[t]]`; index -1 means
    the base model. For packed inputs such as `[1, total_tokens]` where each request's tokens share a row.

    `with per_token_adapters(model, ["a", "b"], torch.tensor([0, 0, 0, 1, 1, -1])): logits = model(ids)`
    """
    index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if index.numel() and (int(index.min()) < -1 or int(index.max()) >= len(adapters)):
        raise LoraError(f"per_token_adapters: index values must be in [-1, {len(adapters) - 1}] "
                        f"(positions in adapters={list(adapters)}), got min {int(index.min())} max {int(index.max())}")
    names = list(adapters)
    with _routed(model, _Routing(names, index + 1, per_token=True), names):
        yield model


@contextlib.contextmanager
def _routed(model: nn.Module, routing: _Routing, requested: Sequence[str | None]) -> Iterator[None]:
    state = adapter_state(model)
    unknown = sorted({a for a in requested if a is not None and a not in state.configs})
    if unknown:
        raise LoraError(f"unknown adapter(s) {unknown} in mixed batch; this model has {list(state.configs)}")
    wrappers = list(_wrappers(model))
    for m in wrappers:
        if isinstance(m, _LoraBase) and m.merged_adapters:
            raise LoraError(f"adapters {m.merged_adapters} are merged into the base weights; unmerge(model) before "
                            "running a mixed-adapter batch")
        if isinstance(m, ModulesToSave) and any(a in m.modules_to_save for a in requested if a is not None):
            raise LoraError("an adapter in this mixed batch has modules_to_save, which cannot differ per row; "
                            "run it in its own batch with set_active")
    for m in wrappers:
        m.routing = routing
    try:
        yield
    finally:
        for m in wrappers:
            m.routing = None


class _Routing:
    def __init__(self, names: list[str], index: torch.Tensor, per_token: bool) -> None:
        self.names = names          # slot i + 1 holds names[i]; slot 0 is the base model (zero delta)
        self.index = index          # per row [B] or per token [N], values in [0, S]
        self.index_key = None if per_token else tuple(index.tolist())
        self.per_token = per_token
        self._stacks: dict[int, _Stack] = {}

    def linear_forward(self, layer: _LoraBase, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """result (the base layer's output) plus each row's / token's own adapter."""
        stack = self._stack(layer)
        a, b = stack.a, stack.b                         # [S+1, r, in], [S+1, out, r]
        x = x.to(a.dtype)
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        if self.per_token:
            delta = self._tokens_linear(flat, self._token_index(flat.shape[0]), a, b)
            return result + delta.reshape(*lead, -1).to(result.dtype)
        index = self._row_index(x)
        rows = x.reshape(index.numel(), -1, x.shape[-1])
        if rows.shape[1] <= a.shape[0]:
            # Few tokens per row (decode): gathering a copy of A and B per row would move more bytes than the
            # token path computes, so expand the row index to tokens instead.
            delta = self._tokens_linear(flat, index.repeat_interleave(rows.shape[1]), a, b)
            return result + delta.reshape(*lead, -1).to(result.dtype)
        a_rows, b_rows = stack.rows(index, self.index_key)   # [B, in, r], [B, r, out]
        h = torch.bmm(rows, a_rows)
        if result.dtype == h.dtype:
            # result + h @ B in one kernel: fewer passes over the [B, T, out] activations than bmm then add.
            return torch.baddbmm(result.reshape(rows.shape[0], -1, result.shape[-1]), h, b_rows).reshape(result.shape)
        return result + torch.bmm(h, b_rows).reshape(result.shape).to(result.dtype)

    def embedding_delta(self, layer: LoraEmbedding, ids: torch.Tensor) -> torch.Tensor:
        a, b = self._stack(layer).pair()                    # a: [S+1, vocab, r] (A transposed), b: [S+1, out, r]
        s, vocab, r = a.shape
        table = a.reshape(s * vocab, r)
        if self.per_token:
            index = self._token_index(ids.numel())
        else:
            index = self._row_index(ids)
            rows = ids.reshape(index.numel(), -1)
            if rows.shape[1] > s:
                # Offset each row's token ids into its adapter's slice of the stacked table: one lookup for all rows.
                h = layer.embed(rows + index.unsqueeze(1) * vocab, table)
                out = torch.bmm(h, b[index].transpose(1, 2))
                return out.reshape(*ids.shape, b.shape[1])
            index = index.repeat_interleave(rows.shape[1])
        h = layer.embed(ids.reshape(-1) + index * vocab, table)     # [N, r]
        h = h.unsqueeze(1) * F.one_hot(index, s).to(h.dtype).unsqueeze(-1)
        out = h.reshape(-1, s * r) @ b.permute(0, 2, 1).reshape(s * r, -1)
        return out.reshape(*ids.shape, b.shape[1])

    @staticmethod
    def _tokens_linear(flat: torch.Tensor, index: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s, r = a.shape[0], a.shape[1]
        h = flat @ a.reshape(s * r, -1).T                # every adapter's A at once: [N, (S+1)*r]
        h = h.view(-1, s, r) * F.one_hot(index, s).to(h.dtype).unsqueeze(-1)
        return h.view(-1, s * r) @ b.permute(0, 2, 1).reshape(s * r, -1)

    def _row_index(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.index.numel():
            raise LoraError(f"per_row_adapters got {self.index.numel()} adapter names but the batch has "
                            f"{x.shape[0]} rows; give one name (or None) per row")
        return self.index

    def _token_index(self, n: int) -> torch.Tensor:
        if n != self.index.numel():
            raise LoraError(f"per_token_adapters got an index of {self.index.numel()} entries but the input has "
                            f"{n} tokens; give one entry per token of input_ids.reshape(-1)")
        return self.index

    def _stack(self, layer: _LoraBase) -> _Stack:
        key = id(layer)
        if key not in self._stacks:
            self._stacks[key] = _cached_stack(layer, self.names)
            self.index = self.index.to(self._stacks[key].a.device)
        return self._stacks[key]


class _Stack:
    """One layer's adapters stacked for mixing, plus the last per-row gather of them (reused while the rows keep the
    same adapters, e.g. every step of one batch)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b
        self._rows_key = None
        self._rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a, self.b

    def rows(self, index: torch.Tensor, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows is None or self._rows_key != key:
            # Laid out for bmm: x [B, T, in] @ A_rows [B, in, r], then @ B_rows [B, r, out].
            self._rows = (self.a[index].transpose(1, 2).contiguous(), self.b[index].transpose(1, 2).contiguous())
            self._rows_key = key
        return self._rows


def _cached_stack(layer: _LoraBase, names: list[str]) -> _Stack:
    """The stacked tensors, reused across batches while the same adapters are mixed (every decode step of a server).
    The key holds each factor's identity and `_version`, which in-place updates (optimizer steps, load_adapter's
    copy_) bump, so a changed adapter is never served stale."""
    factors = [(n, *layer.factors(n)) for n in names if n in layer.adapters]
    key = (tuple(names), tuple((n, id(a), a._version, id(b), b._version, layer.scaling[n]) for n, a, b in factors))
    cached = getattr(layer, "_mixed_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, _Stack(*_stack_adapters(layer, names)))
        layer._mixed_cache = cached
    return cached[1]


@torch.no_grad()
def _stack_adapters(layer: _LoraBase, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    present = [n for n in names if n in layer.adapters]
    r_max = max((layer.r[n] for n in present), default=1)
    ref = layer.factors(present[0])[0] if present else layer.base_layer.weight
    dtype = ref.dtype if present else adapter_dtype(ref)
    embedding = isinstance(layer, LoraEmbedding)
    a_shape = (len(names) + 1, layer.in_features, r_max) if embedding else (len(names) + 1, r_max, layer.in_features)
    a_all = torch.zeros(a_shape, dtype=dtype, device=ref.device)
    b_all = torch.zeros(len(names) + 1, layer.out_features, r_max, dtype=dtype, device=ref.device)
    for i, name in enumerate(names, start=1):
        if name not in layer.adapters:
            continue  # this adapter does not touch this layer: its slot stays zero, like the base slot
        a, b = layer.factors(name)
        r = layer.r[name]
        if embedding:
            a_all[i, :, :r] = a.T
        else:
            a_all[i, :r] = a
        b_all[i, :, :r] = b * layer.scaling[name]
    return a_all, b_all
