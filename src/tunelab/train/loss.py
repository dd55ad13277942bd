"""Cross-entropy from hidden states, in slices, without materialising [tokens x vocab].

Only positions that have a target go through the output head at all (prompt tokens
are masked, so their logits are never needed). When the head is frozen - the usual
LoRA case - the gradient with respect to the hidden states is computed slice by
slice during the forward pass (softmax - one_hot, times W), so at most one slice of
float32 logits exists at any time and backward costs nothing extra. When the head
itself trains, each slice is checkpointed instead and recomputed in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunelab.train.data import IGNORE


def chunked_cross_entropy(hidden, labels, lm_head, chunk: int | None = None):
    """Sum of next-token cross-entropy over target positions, and their count.

    hidden: [B, T, H] final hidden states; labels: [B, T] with IGNORE where masked.
    """
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = (y != IGNORE).nonzero().squeeze(-1)
    h, y = h.index_select(0, keep), y.index_select(0, keep)
    n = y.numel()
    if n == 0:
        return hidden.sum() * 0.0, 0
    if chunk is None:
        # About 32 MiB of float32 logits per slice: small enough not to matter next to
        # the activations, large enough that the matmul stays efficient.
        chunk = max(64, (8 << 20) // lm_head.weight.shape[0])
    head_trains = any(p.requires_grad for p in lm_head.parameters())
    if not head_trains and isinstance(lm_head, torch.nn.Linear) and lm_head.bias is None:
        return _FrozenHeadCE.apply(h, y, lm_head.weight, chunk), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        total = total + checkpoint(_slice_ce, h[i : i + chunk], y[i : i + chunk], lm_head, use_reentrant=False)
    return total, n


def _slice_ce(h, y, head):
    return F.cross_entropy(head(h).float(), y, reduction="sum")


class _FrozenHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, y, weight, chunk):
        grad_h = torch.empty_like(h)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        w = weight.to(h.dtype)
        n = h.shape[0]
        chunk = min(chunk, n)
        buf = torch.empty(chunk, w.shape[0], dtype=torch.float32, device=h.device)
        for i in range(0, n, chunk):
            hs, ys = h[i : i + chunk], y[i : i + chunk]
            b = buf[: ys.numel()]
            rows = torch.arange(ys.numel(), device=ys.device)
            # One [chunk x vocab] buffer, reused by every slice, does everything in place:
            # logits, exp(logits - max), softmax, then d(sum CE)/d(logits) = softmax - one_hot.
            if hs.dtype == torch.float32:
                torch.mm(hs, w.t(), out=b)
            else:
                b.copy_(hs @ w.t())
            target = b[rows, ys]
            peak = b.amax(dim=-1, keepdim=True)
            b.sub_(peak).exp_()
            denom = b.sum(dim=-1, keepdim=True)
            total += (denom.log().squeeze(1) + peak.squeeze(1) - target).sum()
            b.div_(denom)
            b[rows, ys] -= 1.0
            if hs.dtype == torch.float32:
                torch.mm(b, w, out=grad_h[i : i + chunk])
            else:
                grad_h[i : i + chunk] = (b.to(w.dtype) @ w).to(h.dtype)
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), None, None, None
