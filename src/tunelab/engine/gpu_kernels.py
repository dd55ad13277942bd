"""tunelab's GPU operators for the recorded decode step, written in Triton (which ships with CUDA builds of torch;
the CPU twins are engine/csrc/decode_ops.cpp).

`decode_attention` is the one that matters. In a graphed decode step of a deep, narrow model most kernels are not
matrix products: on an H200 with a TinyLlama-1.1B-shaped model in bf16 the step ran 524 kernels, 111 of them
products, and the other ~19 a layer (RoPE's multiplies and roll, reshaping copies before and after attention, the
two K/V appends, the masked SDPA) cost ~1.9 µs each as graph nodes: half the step (docs/benchmarks.md). This kernel
does what those do, for one (row, query head) per program: rotate q and the new k, append the new k and v at the
row's length (the first head of each KV group writes them), and attend over the row's own columns with an online
softmax. The new column's score comes from registers, not from the store, so no program waits on another.

Arithmetic is float32 inside, rounded once on the way out; the eager step rounds after each operation in the model's
dtype, so in bfloat16 the two can differ in the last bit of a few values (greedy tokens agree on the checks in
scripts/gpu_check.py). `TUNELAB_TRITON=0` turns the operators off (the step then runs the eager form).
Tests run these kernels on CPU tensors through Triton's interpreter (tests/engine/test_gpu_kernels.py).
"""

from __future__ import annotations

import os

import torch

try:  # CUDA builds of torch depend on triton; CPU builds do not, and never call these operators
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on CPU-only installs without the test extra
    triton = None


def available(device: torch.device, head_dim: int) -> bool:
    """Whether the decode step on `device` uses these operators (a head is one power-of-two Triton block)."""
    return (triton is not None and device.type == "cuda" and head_dim & (head_dim - 1) == 0
            and os.environ.get("TUNELAB_TRITON", "1") != "0")


def decode_attention(qkv: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, k: torch.Tensor,
                     v: torch.Tensor, lengths: torch.Tensor, heads: int, window: int, scale: float) -> torch.Tensor:
    """The CPU operator's contract (torch.ops.tunelab.decode_attention): `qkv` [..., rows, (H + 2 KV) D] a fused
    projection; `k`, `v` one layer's dense rows [rows', KV, capacity, D] (rows' >= rows), written at column
    `lengths[r]` of each row; `cos`/`sin` [..., rows, D] (sin's first half negated, models/transformer.py) or None;
    `window` 0 for none. Returns [..., rows, H D] in qkv's dtype."""
    kv, cap, dim = k.shape[1], k.shape[2], k.shape[3]
    if heads % kv or qkv.shape[-1] != (heads + 2 * kv) * dim:
        raise ValueError(f"decode_attention: {heads} heads over {kv} KV heads of {dim}: qkv's last dimension must "
                         f"be {(heads + 2 * kv) * dim}, not {qkv.shape[-1]}")
    if k.stride(-1) != 1 or k.stride() != v.stride():
        raise ValueError("decode_attention: k and v need the same strides, contiguous in the head dimension")
    x = qkv.reshape(-1, qkv.shape[-1])
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = x.shape[0]
    out = torch.empty(rows, heads * dim, dtype=qkv.dtype, device=qkv.device)
    rope = cos is not None
    c = cos.reshape(rows, dim).contiguous() if rope else x  # any pointer: unread without RoPE
    s = sin.reshape(rows, dim).contiguous() if rope else x
    _decode_attention[(rows, heads)](
        x, c, s, k, v, lengths, out, x.stride(0), k.stride(0), k.stride(1), k.stride(2), scale,
        H=heads, KV=kv, D=dim, ROPE=rope, WINDOW=window or 0, BLOCK_T=64, num_warps=4)
    return out.view(*qkv.shape[:-1], heads * dim)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of a fused gate/up projection [..., 2 I] -> [..., I], one kernel instead of two."""
    width = gate_up.shape[-1] // 2
    x = gate_up.reshape(-1, 2 * width)
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(x.shape[0], width, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul[(x.shape[0], triton.cdiv(width, block))](x, out, width, x.stride(0), BLOCK=block, num_warps=4)
    return out.view(*gate_up.shape[:-1], width)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, delta: torch.Tensor | None = None):
    """Llama's RMSNorm of `x` (normalise in float32, round to x's dtype, scale by the weight), one kernel. With
    `delta`, of the residual sum x + delta (rounded as the separate addition rounds it): returns (sum, normed)."""
    width = x.shape[-1]
    rows = x.reshape(-1, width)
    out = torch.empty_like(rows)
    total = torch.empty_like(rows) if delta is not None else out
    other = delta.reshape(-1, width) if delta is not None else rows
    if rows.stride(-1) != 1 or other.stride(-1) != 1:
        rows, other = rows.contiguous(), other.contiguous()
    _rms_norm[(rows.shape[0],)](rows, other, weight, total, out, width, rows.stride(0), other.stride(0), eps,
                                ADD=delta is not None, BLOCK=triton.next_power_of_2(width), num_warps=4)
    if delta is None:
        return out.view(x.shape)
    return total.view(x.shape), out.view(x.shape)


if triton is not None:

    @triton.jit
    def _rms_norm(x, delta, weight, total, out, width, stride_x, stride_d, eps, ADD: tl.constexpr,
                  BLOCK: tl.constexpr):
        r = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        v = tl.load(x + r * stride_x + cols, mask=inside, other=0.0)
        if ADD:
            v = (v.to(tl.float32) + tl.load(delta + r * stride_d + cols, mask=inside, other=0.0).to(tl.float32))
            v = v.to(total.dtype.element_ty)
            tl.store(total + r * width + cols, v, mask=inside)
        f = v.to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(f * f, axis=0) / width + eps)
        normed = (f * inv).to(out.dtype.element_ty).to(tl.float32)
        w = tl.load(weight + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(out + r * width + cols, (normed * w).to(out.dtype.element_ty), mask=inside)

    @triton.jit
    def _decode_attention(qkv, cos, sin, k, v, lengths, out, stride_x, stride_row, stride_head, stride_col, scale,
                          H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, ROPE: tl.constexpr,
                          WINDOW: tl.constexpr, BLOCK_T: tl.constexpr):
        r = tl.program_id(0)
        h = tl.program_id(1)
        g = h // (H // KV)
        d = tl.arange(0, D)
        length = tl.load(lengths + r)
        row = qkv + r * stride_x
        q = tl.load(row + h * D + d).to(tl.float32)
        k_new = tl.load(row + (H + g) * D + d).to(tl.float32)
        v_new = tl.load(row + (H + KV + g) * D + d)
        if ROPE:  # x cos + roll(x, D/2) sin, sin's first half negated
            rolled = (d + D // 2) % D
            c = tl.load(cos + r * D + d).to(tl.float32)
            s = tl.load(sin + r * D + d).to(tl.float32)
            q = q * c + tl.load(row + h * D + rolled).to(tl.float32) * s
            k_new = k_new * c + tl.load(row + (H + g) * D + rolled).to(tl.float32) * s
        keys = k + r * stride_row + g * stride_head
        values = v + r * stride_row + g * stride_head
        k_new = k_new.to(k.dtype.element_ty)
        v_new = v_new.to(v.dtype.element_ty)
        writes = d < tl.where(h % (H // KV) == 0, D, 0)  # the group's first head appends
        tl.store(keys + length * stride_col + d, k_new, mask=writes)
        tl.store(values + length * stride_col + d, v_new, mask=writes)
        # the new column, from registers (as stored: rounded to the cache's dtype)
        top = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
        total = top * 0.0 + 1.0
        acc = v_new.to(tl.float32)
        lo = 0
        if WINDOW > 0:
            lo = tl.maximum(length - WINDOW + 1, 0)
        for start in range(lo, length, BLOCK_T):
            t = start + tl.arange(0, BLOCK_T)
            seen = t < length
            kt = tl.load(keys + t[:, None] * stride_col + d[None, :], mask=seen[:, None], other=0.0).to(tl.float32)
            scores = tl.where(seen, tl.sum(kt * q[None, :], axis=1) * scale, float("-inf"))
            new_top = tl.maximum(top, tl.max(scores, axis=0))
            shrink = tl.exp(top - new_top)
            p = tl.exp(scores - new_top)
            vt = tl.load(values + t[:, None] * stride_col + d[None, :], mask=seen[:, None], other=0.0).to(tl.float32)
            acc = acc * shrink + tl.sum(p[:, None] * vt, axis=0)
            total = total * shrink + tl.sum(p, axis=0)
            top = new_top
        tl.store(out + r * (H * D) + h * D + d, (acc / total).to(out.dtype.element_ty))

    @triton.jit
    def _silu_mul(x, out, width, stride_x, BLOCK: tl.constexpr):
        r = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < width
        gate = tl.load(x + r * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
        up = tl.load(x + r * stride_x + width + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(out + r * width + cols, (gate / (1.0 + tl.exp(-gate)) * up).to(out.dtype.element_ty), mask=inside)
