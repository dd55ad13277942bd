"""Custom autograd pieces of the model equal what autograd computes from the plain expression."""

import torch
import torch.nn.functional as F

from tunelab.models.transformer import SwiGLU


def test_swiglu_matches_autograd_and_gradcheck():
    torch.manual_seed(0)
    g = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (g, u))
    out = SwiGLU.apply(g, u)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (g, u), grad)
    want = torch.autograd.grad(F.silu(g) * u, (g, u), grad)
    assert torch.allclose(out, F.silu(g) * u)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))


def test_training_forward_equals_inference_forward(tiny_checkpoint):
    from tunelab.models import load_pretrained

    model, _ = load_pretrained(tiny_checkpoint("llama"))
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad():
        plain = model(ids)
    fused = model(ids)  # grad enabled: the SwiGLU function runs
    assert fused.requires_grad and torch.allclose(fused, plain, atol=1e-6)
