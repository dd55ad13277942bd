"""Which adapter each row (or token) of one forward pass runs, and the arithmetic that runs them all in that pass.

A `Routing` is the argument an adapter layer's `forward(x, routing=...)` takes (as torchtune's adapter modules take
what they need as arguments); `mixed.py` builds one and hands it to every adapter layer of a model for one block.
Each LoRA layer stacks its adapters into zero-padded tensors with a zero "base" slot (`LoraLayer.stacked`, cached
by the layer while the same adapters are mixed): A [S+1, r_max, in] and B [S+1, out, r_max] with the adapter's
scaling folded into B. Then
  - per row:   gather each row's A and B and run two batched matmuls (torch.bmm) over the whole batch (rows with
               only a few tokens, as in decoding, take the per-token path below, which moves fewer bytes);
  - per token: (for packed sequences, where one row holds many requests) project every token through all adapters'
               A at once ([N, S*r_max], cheap since r is small), zero the slots a token does not use, and multiply by
               all B's concatenated: one dense matmul, no Python loop and no per-token weight copies.
Dropout is not applied: mixed batches are an inference feature. Merged adapters cannot be mixed (they are in W0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tunelab.lora.errors import LoraError


@dataclass
class Routing:
    """`names`: the adapters in play; slot i + 1 holds names[i], slot 0 is the base model (zero delta).
    `index`: each row's [B] (or, with `per_token`, each token's [N]) slot; None means every row runs `names[0]`
    (the base model when `names` is empty) through the layer's plain single-adapter path."""

    names: tuple[str, ...]
    index: torch.Tensor | None = None
    per_token: bool = False
    index_key: tuple | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.index is not None and not self.per_token:
            self.index_key = tuple(self.index.tolist())

    @classmethod
    def uniform(cls, name: str | None) -> Routing:
        return cls(() if name is None else (name,))

    @classmethod
    def per_row(cls, adapters: Sequence[str | None]) -> Routing:
        if len(set(adapters)) == 1:
            # Every row wants the same thing: the plain single-adapter forward (or the base model) is the same
            # result without gathering per-row factors.
            return cls.uniform(adapters[0])
        names = sorted({a for a in adapters if a is not None})
        slot = {n: i + 1 for i, n in enumerate(names)}
        return cls(tuple(names), torch.tensor([0 if a is None else slot[a] for a in adapters], dtype=torch.long))

    @classmethod
    def per_token_index(cls, adapters: Sequence[str], index: torch.Tensor) -> Routing:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < -1 or int(index.max()) >= len(adapters)):
            raise LoraError(f"per_token_adapters: index values must be in [-1, {len(adapters) - 1}] (positions in "
                            f"adapters={list(adapters)}), got min {int(index.min())} max {int(index.max())}")
        return cls(tuple(adapters), index + 1, per_token=True)

    @property
    def mixed(self) -> bool:
        return self.index is not None

    def row_index(self, rows: int, device: torch.device) -> torch.Tensor:
        if rows != self.index.numel():
            raise LoraError(f"per_row_adapters got {self.index.numel()} adapter names but the batch has {rows} "
                            "rows; give one name (or None) per row")
        return self.index.to(device)

    def token_index(self, n: int, device: torch.device) -> torch.Tensor:
        if n != self.index.numel():
            raise LoraError(f"per_token_adapters got an index of {self.index.numel()} entries but the input has "
                            f"{n} tokens; give one entry per token of input_ids.reshape(-1)")
        return self.index.to(device)


class AdapterStack:
    """One layer's adapters stacked for mixing, plus the last per-row gather of them (reused while the rows keep the
    same adapters, e.g. every step of one batch)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b
        self._rows_key = None
        self._rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def rows(self, index: torch.Tensor, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows is None or self._rows_key != key:
            # Laid out for bmm: x [B, T, in] @ A_rows [B, in, r], then @ B_rows [B, r, out].
            self._rows = (self.a[index].transpose(1, 2).contiguous(), self.b[index].transpose(1, 2).contiguous())
            self._rows_key = key
        return self._rows


def mixed_linear(stack: AdapterStack, routing: Routing, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """result (the base layer's output) plus each row's / token's own adapter."""
    a, b = stack.a, stack.b                         # [S+1, r, in], [S+1, out, r]
    x = x.to(a.dtype)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    if routing.per_token:
        delta = _tokens_linear(flat, routing.token_index(flat.shape[0], a.device), a, b)
        return result + delta.reshape(*lead, -1).to(result.dtype)
    index = routing.row_index(x.shape[0], a.device)
    rows = x.reshape(index.numel(), -1, x.shape[-1])
    if rows.shape[1] <= a.shape[0]:
        # Few tokens per row (decode): gathering a copy of A and B per row would move more bytes than the
        # token path computes, so expand the row index to tokens instead.
        delta = _tokens_linear(flat, index.repeat_interleave(rows.shape[1]), a, b)
        return result + delta.reshape(*lead, -1).to(result.dtype)
    a_rows, b_rows = stack.rows(index, routing.index_key)   # [B, in, r], [B, r, out]
    h = torch.bmm(rows, a_rows)
    if result.dtype == h.dtype:
        # result + h @ B in one kernel: fewer passes over the [B, T, out] activations than bmm then add.
        return torch.baddbmm(result.reshape(rows.shape[0], -1, result.shape[-1]), h, b_rows).reshape(result.shape)
    return result + torch.bmm(h, b_rows).reshape(result.shape).to(result.dtype)


def mixed_embedding_delta(stack: AdapterStack, routing: Routing, ids: torch.Tensor,
                          embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Each row's / token's adapter delta for an embedding; `embed(ids, table)` is the layer's own lookup."""
    a, b = stack.a, stack.b                             # a: [S+1, vocab, r] (A transposed), b: [S+1, out, r]
    s, vocab, r = a.shape
    table = a.reshape(s * vocab, r)
    if routing.per_token:
        index = routing.token_index(ids.numel(), a.device)
    else:
        index = routing.row_index(ids.shape[0], a.device)
        rows = ids.reshape(index.numel(), -1)
        if rows.shape[1] > s:
            # Offset each row's token ids into its adapter's slice of the stacked table: one lookup for all rows.
            h = embed(rows + index.unsqueeze(1) * vocab, table)
            out = torch.bmm(h, b[index].transpose(1, 2))
            return out.reshape(*ids.shape, b.shape[1])
        index = index.repeat_interleave(rows.shape[1])
    h = embed(ids.reshape(-1) + index * vocab, table)     # [N, r]
    h = h.unsqueeze(1) * F.one_hot(index, s).to(h.dtype).unsqueeze(-1)
    out = h.reshape(-1, s * r) @ b.permute(0, 2, 1).reshape(s * r, -1)
    return out.reshape(*ids.shape, b.shape[1])


def _tokens_linear(flat: torch.Tensor, index: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    s, r = a.shape[0], a.shape[1]
    h = flat @ a.reshape(s * r, -1).T                # every adapter's A at once: [N, (S+1)*r]
    h = h.view(-1, s, r) * F.one_hot(index, s).to(h.dtype).unsqueeze(-1)
    return h.view(-1, s * r) @ b.permute(0, 2, 1).reshape(s * r, -1)
