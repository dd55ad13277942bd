"""The Triton decode operators (engine/gpu_kernels.py) against plain torch, run on CPU tensors by Triton's
interpreter (CI has no GPU; scripts/gpu-check.sh runs the compiled kernels on one, inside the graphed engine)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # tests/conftest.py does it before anything imports triton
pytest.importorskip("triton", reason="Triton is in the test extra (pyproject)")

from tunelab.engine import gpu_kernels  # noqa: E402
from tunelab.models.transformer import apply_rope, rope_cos_sin  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def reference(qkv, cos, sin, k, v, lengths, heads, window, scale):
    """Split, rotate, append, attend each row over its own columns: float64, one row at a time."""
    kv, dim = k.shape[1], k.shape[3]
    out = []
    for r, n in enumerate(lengths.tolist()):
        x = qkv[r].double().view(heads + 2 * kv, dim)
        q, kn, vn = x[:heads], x[heads : heads + kv], x[heads + kv :]
        if cos is not None:
            q = apply_rope(q, cos[r].double(), sin[r].double())
            kn = apply_rope(kn, cos[r].double(), sin[r].double())
        k[r, :, n] = kn.to(k.dtype)
        v[r, :, n] = vn.to(v.dtype)
        lo = max(0, n - window + 1) if window else 0
        keys = k[r, :, lo : n + 1].double().repeat_interleave(heads // kv, 0)
        values = v[r, :, lo : n + 1].double().repeat_interleave(heads // kv, 0)
        weights = torch.softmax((keys @ q[:, :, None])[..., 0] * scale, -1)
        out.append((weights[:, None, :] @ values)[:, 0].reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("rope", [True, False])
def test_decode_attention_matches_plain_torch(dtype, window, rope):
    gen = torch.Generator().manual_seed(0)
    heads, kv, dim, cap = 4, 2, 16, 160
    lengths = torch.tensor([0, 3, 70, 130])  # empty, short, past one tile, across the window
    rows = len(lengths)
    qkv = torch.randn(rows, (heads + 2 * kv) * dim, generator=gen).to(dtype)
    k = torch.randn(rows + 1, kv, cap, dim, generator=gen).to(dtype)  # one more row than the step: untouched
    v = torch.randn(rows + 1, kv, cap, dim, generator=gen).to(dtype)
    cos = sin = None
    if rope:
        cos, sin = rope_cos_sin(1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim), lengths[None], dtype)
        cos, sin = cos[0, 0], sin[0, 0]
    k_ref, v_ref, k0, v0 = k.clone(), v.clone(), k.clone(), v.clone()
    untouched = torch.ones(k.shape[:3], dtype=torch.bool)
    untouched[torch.arange(rows), :, lengths] = False
    expected = reference(qkv, cos, sin, k_ref, v_ref, lengths, heads, window, dim**-0.5)
    args = [t.to(DEVICE) if t is not None else None for t in (qkv[None], cos, sin, k, v, lengths)]
    got = gpu_kernels.decode_attention(*args, heads, window, dim**-0.5)
    assert got.shape == (1, rows, heads * dim) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got[0].cpu().double(), expected, atol=tol, rtol=tol)
    # the new k (rotated) and v went to each row's column `length`, and nothing else changed
    for got_cache, ref_cache, before in ((args[3].cpu(), k_ref, k0), (args[4].cpu(), v_ref, v0)):
        torch.testing.assert_close(got_cache.double(), ref_cache.double(), atol=tol, rtol=tol)
        assert not torch.equal(got_cache, before)
        assert torch.equal(got_cache[untouched], before[untouched])


def test_decode_attention_rejects_a_projection_of_the_wrong_width():
    k = torch.zeros(1, 2, 8, 16)
    with pytest.raises(ValueError, match="qkv's last dimension must be 128"):
        gpu_kernels.decode_attention(torch.zeros(1, 1, 100), None, None, k, k.clone(), torch.zeros(1, dtype=torch.long),
                                     4, 0, 0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_matches_plain_torch(dtype):
    x = torch.randn(3, 2, 2 * 1500, generator=torch.Generator().manual_seed(1)).to(dtype)  # two blocks, a ragged one
    got = gpu_kernels.silu_mul(x.to(DEVICE)).cpu()
    gate, up = x.double().chunk(2, -1)
    torch.testing.assert_close(got.double(), torch.nn.functional.silu(gate) * up,
                               atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("add", [False, True])
def test_rms_norm_matches_llamas_form(dtype, add):
    """Llama's order (normalise in float32, round, scale by the weight); with a residual, the sum rounded as the
    separate addition rounds it. An odd width: the block is masked."""
    gen = torch.Generator().manual_seed(2)
    x, delta = (torch.randn(3, 1, 200, generator=gen) * 3).to(dtype), torch.randn(3, 1, 200, generator=gen).to(dtype)
    weight = (torch.rand(200, generator=gen) + 0.5).to(dtype)
    total = x + delta if add else x
    f = total.float()
    expected = weight * (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    got = gpu_kernels.rms_norm(*(t.to(DEVICE) for t in (x, weight)), 1e-5, delta.to(DEVICE) if add else None)
    # Triton's interpreter rounds float32 -> bfloat16 toward zero (numpy has no bfloat16); a GPU rounds to nearest.
    step = 2**-7 if dtype == torch.bfloat16 and INTERPRETED else 0
    if add:
        got_total, got = got
        torch.testing.assert_close(got_total.cpu(), total, atol=0, rtol=step)
    # float32: summation order. bf16: the normalised value can round the other way (1/sqrt vs rsqrt in the last
    # float32 bit), one bf16 step, which the weight (up to 1.5) can carry to two steps of the output
    tol = 1e-6 if dtype == torch.float32 else 2**-6 + 2 * step
    torch.testing.assert_close(got.cpu().float(), expected.float(), atol=tol, rtol=tol)
    if dtype == torch.bfloat16 and not INTERPRETED:
        assert (got.cpu() != expected).float().mean() < 0.02, "rounding differences are rare, not systematic"
