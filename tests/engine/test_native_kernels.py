"""tunelab's own CPU kernel (engine/csrc/bf16_linear.cpp, built by engine/native.py): products of one to eight rows
with bfloat16 weights, checked against the float64 product; the build's cache and its failure path."""

import logging

import pytest
import torch
import torch.nn.functional as F

from tunelab.engine import LLM, SamplingParams, native
from tunelab.engine.cpu_kernels import (
    _Bf16MatVecLinear,
    _Bf16NativeLinear,
    _Fp16NativeLinear,
    _mkldnn_packing,
    has_avx512_bf16,
    has_avx512_f16c,
)

needs_bf16_cpu = pytest.mark.skipif(not has_avx512_bf16(), reason="the kernel runs on CPUs with AVX512-BF16 only")


@pytest.fixture(scope="module")
def kernel():  # the bfloat16 product; the fixture makes sure the library is built and loaded
    if not native.load():
        pytest.fail("the native kernels did not build on a CPU that can run them (see the warning logged above)")
    return torch.ops.tunelab.bf16_linear


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8])  # past four: a second pass over each block of weights, from L1
@pytest.mark.parametrize("n, k", [(7, 100), (64, 576), (40, 1536), (13, 33), (9, 64), (3, 1)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_products_equal_float64_to_one_rounding(kernel, rows, n, k, dtype):
    if not (has_avx512_bf16() if dtype == torch.bfloat16 else has_avx512_f16c()):
        pytest.skip(f"the {dtype} kernel needs a CPU flag this one lacks")
    op = kernel if dtype == torch.bfloat16 else torch.ops.tunelab.fp16_linear
    torch.manual_seed(rows * 1000 + n + k)
    w, x, bias = torch.randn(n, k).to(dtype), torch.randn(rows, k).to(dtype), torch.randn(n).to(dtype)
    exact = x.double() @ w.double().T + bias.double()
    out = op(x, w, bias)
    assert out.dtype == dtype and out.shape == (rows, n)
    # fp32 accumulation, one rounding to 16 bits at the end: within half an ulp plus fp32 summation error
    half_ulp = torch.finfo(dtype).eps / 2
    assert torch.allclose(out.double(), exact, rtol=half_ulp * 1.01, atol=1e-4 * k**0.5)
    assert torch.equal(op(x, w, None), op(x, w))
    no_bias = x.double() @ w.double().T
    assert torch.allclose(op(x, w).double(), no_bias, rtol=half_ulp * 1.01, atol=1e-4 * k**0.5)


@needs_bf16_cpu
def test_leading_dimensions_and_strided_rows_are_kept(kernel):
    torch.manual_seed(0)
    w = torch.randn(24, 80).bfloat16()
    x = torch.randn(1, 2, 160).bfloat16()[..., ::2]  # [1, 2, 80], not contiguous
    out = kernel(x, w)
    assert out.shape == (1, 2, 24)
    assert torch.allclose(out.float(), F.linear(x.float(), w.float()), rtol=2**-7, atol=1e-3)


@needs_bf16_cpu
def test_bad_arguments_are_refused_with_the_reason(kernel):
    w = torch.randn(8, 16).bfloat16()
    with pytest.raises(RuntimeError, match="one to 8 rows"):
        kernel(torch.randn(9, 16).bfloat16(), w)
    with pytest.raises(RuntimeError, match="last dimension 16"):
        kernel(torch.randn(1, 15).bfloat16(), w)
    with pytest.raises(RuntimeError, match="contiguous 2-d bfloat16"):
        kernel(torch.randn(1, 8).bfloat16(), w.t())
    with pytest.raises(RuntimeError, match="contiguous 2-d bfloat16"):
        kernel(torch.randn(1, 16).bfloat16(), w.float())


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float_out_gives_the_float32_sums_at_any_row_count(kernel, rows, dtype):
    """`float_out` (the model's head: float32 logits) returns the float32 sums unrounded, for any number of rows:
    within float32 summation error of the float64 product, far inside the 16-bit rounding the plain call has."""
    if not (has_avx512_bf16() if dtype == torch.bfloat16 else has_avx512_f16c()):
        pytest.skip(f"the {dtype} kernel needs a CPU flag this one lacks")
    op = kernel if dtype == torch.bfloat16 else torch.ops.tunelab.fp16_linear
    torch.manual_seed(rows)
    w, x, bias = torch.randn(200, 576).to(dtype), torch.randn(rows, 576).to(dtype), torch.randn(200).to(dtype)
    exact = x.double() @ w.double().T + bias.double()
    out = op(x, w, bias, True)
    assert out.dtype == torch.float32 and out.shape == (rows, 200)
    assert (out.double() - exact).abs().max() < 1e-4
    if rows <= 8:
        rounded = op(x, w, bias)
        assert rounded.dtype == dtype and torch.equal(rounded, out.to(dtype))
    else:
        with pytest.raises(RuntimeError, match="one to 8 rows"):
            op(x, w, bias)


@needs_bf16_cpu
def test_the_head_gives_float32_logits(tiny_checkpoint, kernel):
    """A bfloat16 engine's head returns float32 logits (a bfloat16 logit keeps 8 significant bits: near ties between
    tokens swap), and keeps no blocked copy it would not use."""
    llm = LLM(tiny_checkpoint("llama"), dtype=torch.bfloat16, max_num_seqs=4)
    head = llm.model.lm_head
    assert type(head) is _Bf16NativeLinear and head.float_out and head.packed is None
    for rows in (1, 12):
        x = torch.randn(rows, head.in_features).bfloat16()
        logits = head(x)
        assert logits.dtype == torch.float32
        assert torch.allclose(logits.double(), x.double() @ head.weight.double().T, atol=1e-4)


@needs_bf16_cpu
def test_packed_linear_is_onednns_product_and_can_be_traced(kernel):
    """`packed_linear` is oneDNN's product on a blocked copy of the weight, callable where a TorchScript trace can
    record it: the trace takes the copy as an input and replays the same values, with a new copy too."""
    if not _mkldnn_packing():
        pytest.skip("this torch has no oneDNN weight packing")
    torch.manual_seed(0)
    w, bias, x = torch.randn(96, 64).bfloat16(), torch.randn(96).bfloat16(), torch.randn(20, 64).bfloat16()
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 32)
    out = torch.ops.tunelab.packed_linear(x, packed, bias)
    assert torch.equal(out, torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], ""))
    exact = x.double() @ w.double().T + bias.double()
    assert torch.allclose(out.double(), exact, rtol=2**-7, atol=2**-7 * exact.abs().max())
    traced = torch.jit.trace(lambda x, p: torch.ops.tunelab.packed_linear(x, p, bias), (x, packed), check_trace=False)
    assert torch.equal(traced(x, packed), out)
    doubled = torch.ops.mkldnn._reorder_linear_weight(w * 2, 32)
    assert torch.equal(traced(x, doubled), torch.ops.tunelab.packed_linear(x, doubled, bias))


@needs_bf16_cpu
def test_engine_decodes_through_the_kernel_as_transformers_does(tiny_checkpoint, kernel):
    """A bfloat16 engine on this CPU routes its decode products through the kernel, and its greedy tokens agree with
    the engine without it (torch's kernels) on most positions: the two differ only in float32 summation order."""
    path = tiny_checkpoint("llama")
    llm = LLM(path, dtype=torch.bfloat16, max_num_seqs=4)
    assert any(type(m) is _Bf16NativeLinear for m in llm.model.modules())
    lin = next(m for m in llm.model.modules() if type(m) is _Bf16NativeLinear)
    assert (lin.packed is not None) == _mkldnn_packing()  # more rows: oneDNN on a copy in its own layout
    for rows in (1, 4, 5, 9):  # up to four rows through the kernel, more through F.linear, equal values either way
        x = torch.randn(rows, lin.in_features).bfloat16()
        assert torch.allclose(lin(x).float(), F.linear(x, lin.weight, lin.bias).float(), rtol=2**-6, atol=2e-2)
    prompts = [[1, 5, 9, 12], [3, 3, 7, 20, 21, 2], [8], [4, 4, 4, 4, 4]]
    params = SamplingParams(max_tokens=12, temperature=0)
    ours = [o.token_ids for o in llm.generate(prompts, params)]
    plain = LLM(path, dtype=torch.bfloat16, max_num_seqs=4)
    for m in plain.model.modules():
        if type(m) is _Bf16NativeLinear:
            m.__class__ = _Bf16MatVecLinear
    theirs = [o.token_ids for o in plain.generate(prompts, params)]
    same = sum(a == b for x, y in zip(ours, theirs) for a, b in zip(x, y))
    assert same >= 0.9 * sum(len(x) for x in ours)


def test_the_build_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_KERNEL_CACHE", str(tmp_path))
    first = native.build()
    assert first.parent == tmp_path and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_build_names_the_compiler_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(native.NativeBuildError, match="false failed"):
        native.build()
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler"):
        native.build()


def test_without_the_kernel_the_engine_keeps_torchs_own(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    """When the kernel cannot be built the engine says why once and decodes with torch.mv / F.linear."""
    monkeypatch.setenv("TUNELAB_NATIVE_KERNELS", "0")
    native.load.cache_clear()
    try:
        assert native.load() is False
        llm = LLM(tiny_checkpoint("llama"), dtype=torch.bfloat16, max_num_seqs=2)
        assert not any(type(m) is _Bf16NativeLinear for m in llm.model.modules())
        assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))[0].token_ids) == 4
    finally:
        native.load.cache_clear()

    monkeypatch.delenv("TUNELAB_NATIVE_KERNELS")
    monkeypatch.setenv("TUNELAB_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with caplog.at_level(logging.WARNING, logger="tunelab.engine.native"):
        try:
            assert native.load() is False
        finally:
            native.load.cache_clear()
    assert "torch's own are used instead" in caplog.text and "false failed" in caplog.text


def reference_decode_attention(qkv, cos, sin, k, v, lengths, heads, window, rows_of=None):
    """The same step in torch: split, rotate (models/transformer.py's apply_rope), append every query's k and v at
    its column of its row (query r is row r unless `rows_of` says otherwise), then SDPA over each query's positions
    in its row (a window keeps the last `window`)."""
    from tunelab.models.transformer import apply_rope

    rows, kv, dim = qkv.shape[0], k.shape[1], k.shape[-1]
    x = qkv.float().view(rows, heads + 2 * kv, dim)
    if cos is not None:
        qk = apply_rope(x[:, : heads + kv], cos[:, None], sin[:, None])
    else:
        qk = x[:, : heads + kv]
    q, knew, vnew = qk[:, :heads], qk[:, heads:], x[:, heads + kv:]
    out = torch.empty(rows, heads, dim)
    row_of = list(range(rows)) if rows_of is None else rows_of.tolist()
    for r in range(rows):
        k[row_of[r], :, int(lengths[r])], v[row_of[r], :, int(lengths[r])] = knew[r], vnew[r]
    for r in range(rows):
        n, row = int(lengths[r]), row_of[r]
        lo = max(0, n - window + 1) if window else 0
        keys = k[row, :, lo: n + 1].repeat_interleave(heads // kv, 0)
        values = v[row, :, lo: n + 1].repeat_interleave(heads // kv, 0)
        out[r] = F.scaled_dot_product_attention(q[r][:, None], keys, values)[:, 0]
    return out.reshape(rows, heads * dim).to(qkv.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, kv, window, rope", [(4, 2, 0, True), (6, 6, 0, False), (8, 2, 3, True)])
def test_decode_attention_appends_and_attends_like_sdpa(kernel, dtype, heads, kv, window, rope):
    torch.manual_seed(heads * 10 + kv + window)
    rows, dim, cap = 3, 16, 12
    qkv = torch.randn(rows, (heads + 2 * kv) * dim).to(dtype)
    lengths = torch.tensor([0, 5, 11])
    angles = torch.randn(rows, dim // 2)
    cos = torch.cat([angles.cos()] * 2, -1) if rope else None
    sin = torch.cat([-angles.sin(), angles.sin()], -1) if rope else None
    k, v = torch.randn(rows + 1, kv, cap, dim), torch.randn(rows + 1, kv, cap, dim)  # one row more: never touched
    k_ref, v_ref = k.clone(), v.clone()
    out = torch.ops.tunelab.decode_attention(qkv, cos, sin, k, v, lengths, heads, window, dim**-0.5)
    ref = reference_decode_attention(qkv, cos, sin, k_ref, v_ref, lengths, heads, window)
    assert out.dtype == dtype and out.shape == (rows, heads * dim)
    assert torch.allclose(k, k_ref, atol=1e-6) and torch.allclose(v, v_ref)
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, kv, window, rope", [(4, 2, 0, True), (6, 6, 0, False), (9, 3, 4, True)])
def test_prompt_chunks_attend_causally_in_their_row(kernel, dtype, heads, kv, window, rope):
    """Queries that share a row (a prompt chunk in a recorded mixed step, engine/decode_graphs.py): every query's k
    and v are appended first, so each sees the chunk's earlier tokens, and none its later ones. Two decode rows, a
    chunk of 5 after 3 cached tokens, a chunk of 3 starting its prompt, and a one-token chunk; rows out of order."""
    torch.manual_seed(heads * 10 + kv + window)
    dim, cap = 16, 24
    rows_of = torch.tensor([4, 0, 2, 2, 2, 2, 2, 1, 1, 1, 3])
    lengths = torch.tensor([7, 0, 3, 4, 5, 6, 7, 0, 1, 2, 9])
    queries = len(lengths)
    qkv = torch.randn(queries, (heads + 2 * kv) * dim).to(dtype)
    angles = torch.randn(queries, dim // 2)
    cos = torch.cat([angles.cos()] * 2, -1) if rope else None
    sin = torch.cat([-angles.sin(), angles.sin()], -1) if rope else None
    k, v = torch.randn(6, kv, cap, dim), torch.randn(6, kv, cap, dim)
    k_ref, v_ref = k.clone(), v.clone()
    out = torch.ops.tunelab.decode_attention(qkv, cos, sin, k, v, lengths, heads, window, dim**-0.5, rows_of)
    ref = reference_decode_attention(qkv, cos, sin, k_ref, v_ref, lengths, heads, window, rows_of)
    assert torch.allclose(k, k_ref, atol=1e-6) and torch.allclose(v, v_ref)
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)
    # The chunk's first query did not see the keys its later queries appended: alone, it gives the same output.
    k2, v2 = k_ref.clone(), v_ref.clone()
    k2[2, :, 4:], v2[2, :, 4:] = 1e3, -1e3  # what the later queries wrote, spoiled
    alone = torch.ops.tunelab.decode_attention(qkv[2:3], cos[2:3] if rope else None, sin[2:3] if rope else None,
                                               k2, v2, lengths[2:3], heads, window, dim**-0.5, rows_of[2:3])
    assert torch.allclose(alone.float(), out[2:3].float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dim, window", [(64, 0), (64, 700), (24, 0)])
def test_a_long_chunk_attends_like_sdpa(kernel, dim, window):
    """A 40-token chunk after 1,300 cached tokens with 8 query heads over 2 kv heads: 160 (query, head) vectors in
    several register groups, the keys split in ranges whose softmaxes are merged (AVX-512, dim a multiple of 16);
    a head dimension of 24 takes ATen's SDPA instead. Both agree with the reference."""
    torch.manual_seed(dim + window)
    heads, kv, cap, start, n = 8, 2, 1400, 1300, 40
    rows_of = torch.tensor([0] + [1] * n)
    lengths = torch.tensor([3] + list(range(start, start + n)))
    qkv = torch.randn(n + 1, (heads + 2 * kv) * dim)
    angles = torch.randn(n + 1, dim // 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([-angles.sin(), angles.sin()], -1)
    k, v = torch.randn(2, kv, cap, dim), torch.randn(2, kv, cap, dim)
    k_ref, v_ref = k.clone(), v.clone()
    out = torch.ops.tunelab.decode_attention(qkv, cos, sin, k, v, lengths, heads, window, dim**-0.5, rows_of)
    ref = reference_decode_attention(qkv, cos, sin, k_ref, v_ref, lengths, heads, window, rows_of)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3])
def test_long_decode_rows_attend_like_sdpa(kernel, rows):
    """Decoding rows 1,300 tokens long: one alone has its keys split over the threads (the block kernel), several
    keep one task per (row, kv head); both agree with the reference."""
    torch.manual_seed(rows)
    heads, kv, dim, cap = 9, 3, 64, 1400
    lengths = torch.tensor([1300 + r for r in range(rows)])
    qkv = torch.randn(rows, (heads + 2 * kv) * dim)
    k, v = torch.randn(rows, kv, cap, dim), torch.randn(rows, kv, cap, dim)
    k_ref, v_ref = k.clone(), v.clone()
    out = torch.ops.tunelab.decode_attention(qkv, None, None, k, v, lengths, heads, 0, dim**-0.5)
    ref = reference_decode_attention(qkv, None, None, k_ref, v_ref, lengths, heads, 0)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_decode_attention_refuses_a_row_past_the_cache(kernel):
    k = torch.zeros(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="length 4 is outside the cache's 4 columns"):
        torch.ops.tunelab.decode_attention(torch.randn(1, 24), None, None, k, k.clone(), torch.tensor([4]), 1, 0, 1.0)
    with pytest.raises(RuntimeError, match="last dimension must be 24"):
        torch.ops.tunelab.decode_attention(torch.randn(1, 23), None, None, k, k.clone(), torch.tensor([0]), 1, 0, 1.0)
    with pytest.raises(RuntimeError, match="query 0 is in row 1, the cache has 1"):
        torch.ops.tunelab.decode_attention(torch.randn(1, 24), None, None, k, k.clone(), torch.tensor([0]), 1, 0, 1.0,
                                           torch.tensor([1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_matches_the_model_to_one_rounding(kernel, dtype):
    """The 16-bit RMSNorm gives models/transformer.py's values: the same order of roundings, so at most one unit in
    the last place apart (float32 summation differs), and almost always equal."""
    from tunelab.models.transformer import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(576, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(576) + 0.5)
    x = (torch.randn(5, 576) * 3).to(dtype)
    ours, model = torch.ops.tunelab.rms_norm(x, norm.weight, 1e-5), norm(x)
    assert ours.shape == model.shape and ours.dtype == dtype
    ulp = torch.finfo(dtype).eps * model.float().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((ours.float() - model.float()).abs() <= ulp * 1.01).all()
    assert (ours == model).float().mean() >= 0.99


def test_float16_engine_decodes_through_its_kernel(tiny_checkpoint, kernel):
    """A float16 engine on a CPU with AVX-512 routes products of up to four rows through tunelab's fp16 kernel,
    with F.linear's values to float16 rounding (both accumulate exact products in float32)."""
    if not has_avx512_f16c():
        pytest.skip("the float16 kernel needs AVX-512 and F16C")
    llm = LLM(tiny_checkpoint("llama"), dtype=torch.float16, max_num_seqs=4)
    lin = next(m for m in llm.model.modules() if type(m) is _Fp16NativeLinear)
    for rows in (1, 3, 4, 7):
        x = torch.randn(rows, lin.in_features).half()
        assert torch.allclose(lin(x).float(), F.linear(x, lin.weight, lin.bias).float(), rtol=2**-9, atol=2e-3)
    with pytest.raises(RuntimeError, match="float16 with last dimension"):
        torch.ops.tunelab.fp16_linear(torch.randn(1, lin.in_features).bfloat16(), lin.weight)
    out = llm.generate([[1, 5, 9, 12], [7]], SamplingParams(max_tokens=6, temperature=0))
    assert [len(o.token_ids) for o in out] == [6, 6]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_engine_with_an_adapter_keeps_loras_float32_factors_out_of_the_kernels(tiny_checkpoint,
                                                                                         tmp_path, dtype, kernel):
    """LoRA keeps its factors in float32 inside the 16-bit model; the kernels take only the model's own 16-bit
    products. (They once took the factors too, and one request in fifty of the demo's LoRA rung failed.)"""
    import peft  # a test dependency: missing, it must fail loudly
    from transformers import AutoModelForCausalLM

    base = tiny_checkpoint("llama")
    ref = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                              peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    ref.save_pretrained(tmp_path / "ad")
    llm = LLM(base, dtype=dtype, max_num_seqs=4, adapters={"ad": str(tmp_path / "ad")})
    factors = [m for n, m in llm.model.named_modules() if "lora_" in n and isinstance(m, torch.nn.Linear)]
    assert factors and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in factors)
    outs = llm.generate([[1, 5, 9, 12], [7, 7]], SamplingParams(max_tokens=5, temperature=0), adapter=["ad", None])
    assert [o.finish_reason for o in outs] == ["length", "length"] and all(len(o.token_ids) == 5 for o in outs)
