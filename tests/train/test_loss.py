"""Chunked cross-entropy equals the plain full-logits loss, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from tunelab.train.data import IGNORE
from tunelab.train.loss import chunked_cross_entropy


@pytest.mark.parametrize("head_trains", [False, True])
def test_matches_full_logits(head_trains):
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight.requires_grad_(head_trains)
    labels = torch.randint(0, 50, (3, 11))
    labels[:, :4] = IGNORE
    labels[2, 7:] = IGNORE

    total, n = chunked_cross_entropy(hidden, labels, head, chunk=5)
    (total / n).backward()
    got = hidden.grad.clone(), (head.weight.grad.clone() if head_trains else None)
    hidden.grad = None
    head.weight.grad = None

    logits = head(hidden)[:, :-1].reshape(-1, 50)
    ref = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    ref.backward()
    assert n == int((labels[:, 1:] != IGNORE).sum())
    assert torch.allclose(total / n, ref, atol=1e-6)
    assert torch.allclose(got[0], hidden.grad, atol=1e-6)
    if head_trains:
        assert torch.allclose(got[1], head.weight.grad, atol=1e-6)
