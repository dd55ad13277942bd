"""Which kernels a decode step gets on a CPU: the weight layout, the product kernel per dtype and row count, and the
KV cache's dtype, chosen from the CPU's own flags, because the fastest choice differs between CPUs. Measured on the
two boxes this project has run on (docs/serving.md, "Choosing a dtype"):
  - AMD EPYC, AVX2 without AVX-512: float32 weights read fastest stored [in, out]; float16 one-row products are the
    fastest 16-bit ones, and float16 multi-row products must be upcast to float32 (no fp16 matrix-matrix kernel);
    attention over a bfloat16 cache is ~4x slower than over float32;
  - Intel Xeon with AVX512-BF16, AVX512-FP16 and AMX: bfloat16 products of up to four rows are fastest through
    tunelab's own kernel (engine/native.py), and float16 products need no upcast.
"""

from __future__ import annotations

import functools
import os
import platform

import torch

from tunelab.models.transformer import RMSNorm


def choose_cpu_kernels(model: torch.nn.Module) -> None:
    """Convert `model`'s linear layers (and, with 16-bit weights, its RMSNorms) in place for this CPU (same values,
    same module API)."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        # 16-bit weights stay [out, in]: oneDNN's bf16/fp16 matrix-vector kernels want that layout (measured
        # ~2.7x fp32 there, and ~10x slower than fp32 when stored [in, out]).
        store_weights_transposed(model)
    elif dtype == torch.float16 and has_avx512_f16c() and native_kernels():
        fp16_few_rows_native(model, upcast="avx512_fp16" not in cpu_flags())
    elif dtype == torch.float16 and "avx512_fp16" not in cpu_flags():
        upcast_fp16_matmuls(model)
    elif dtype == torch.bfloat16 and has_avx512_bf16():
        bf16_single_rows_as_matvec(model)
    if dtype in (torch.bfloat16, torch.float16) and native_kernels():
        for module in model.modules():
            if type(module) is RMSNorm:
                module.__class__ = _NativeRMSNorm


def native_kernels() -> bool:
    """Whether tunelab's own CPU operators are built and loaded (engine/native.py). The decode step's attention and
    the RMSNorm run on any x86-64 CPU; the product kernels check their CPU flags too."""
    from tunelab.engine import native

    return platform.machine() in ("x86_64", "AMD64") and native.load()


def has_avx512_f16c() -> bool:
    return {"avx512f", "f16c", "fma"} <= cpu_flags()


class _NativeRMSNorm(RMSNorm):
    """A 16-bit RMSNorm as one operator, in Llama's order (normalise in float32, round, scale by the weight): the
    same values as RMSNorm.forward's CPU form up to float32 rounding, in one dispatch instead of six."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:
            return super().forward(x)
        return torch.ops.tunelab.rms_norm(x, self.weight, self.eps)


def store_weights_transposed(model: torch.nn.Module) -> None:
    """Keep every Linear weight as a transposed view of an [in, out] contiguous tensor. Same values, same module
    API; but on CPU the one-row matrix-vector products of decoding run ~1.3-1.8x faster in this layout (measured with
    MKL/oneDNN sgemv: the [out, in] layout reads the weight at about half the memory bandwidth). Tied embedding
    weights are left alone: the embedding lookup wants rows contiguous."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in tied and module.weight.is_contiguous():
            weight = module.weight.detach().t().contiguous().t()
            module.weight = torch.nn.Parameter(weight, requires_grad=module.weight.requires_grad)


def upcast_fp16_matmuls(model: torch.nn.Module) -> None:
    """CPU without AVX512-FP16, float16 weights: products of a few rows (decoding a few sequences) stay in fp16, the
    fastest matrix-vector kernel on AVX2 (~2x fp32); products of more rows (prefill, larger decode batches) convert
    the weight to fp32 first, because without AVX-512 FP16 there is no fast fp16 matrix-matrix kernel (its cost grows
    with every row: 3.5x slower than fp32 at 32 rows). fp16 -> fp32 is exact and both accumulate in fp32; LoRA
    layers are left alone. (With AVX512-FP16 the fp16 kernel wins at every size: 44.5 against 62.4 ms for the
    built-in model's projections at 32 rows on an Intel Xeon, so nothing is converted there.)"""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = _Fp16CpuLinear


def fp16_few_rows_native(model: torch.nn.Module, upcast: bool) -> None:
    """CPU with AVX-512, float16 weights: products of one to eight rows go through tunelab's own kernel
    (`engine/csrc/bf16_linear.cpp` fp16_linear: weights widened to float32 in registers, float32 FMAs, the weight
    stream prefetched), as fast as the bfloat16 one: the 121 projections and the head, 2 threads, one row 18.6 ms
    against `F.linear`'s 27.1, four rows 24.3 against 48.0 (Intel Xeon; the bfloat16 kernel 16.7 and 21.3 then).
    More rows keep `F.linear`, or the float32 upcast without AVX512-FP16 (`upcast_fp16_matmuls`)."""
    for module in _model_linears(model, torch.float16):
        module.__class__ = _Fp16NativeLinear
        module.upcast = upcast


class _Fp16CpuLinear(torch.nn.Linear):
    # Up to this many rows the fp16 kernel (cost ~ rows x one matrix-vector product) beats converting the weight
    # (measured on SmolLM2-135M's projections: 4 rows 22.5 vs 31.2 ms, 8 rows 44.4 vs 42.9, 16 rows 89 vs 52).
    DIRECT_ROWS = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= self.DIRECT_ROWS * x.shape[-1]:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.linear(x.float(), self.weight.float(), bias).to(x.dtype)


class _Fp16NativeLinear(_Fp16CpuLinear):
    upcast = False  # more rows: the float32 upcast (no AVX512-FP16) or F.linear
    NATIVE_ROWS = 8  # 8 streams, recorded float16 decode step: 43-45 -> 27 ms against F.linear (AVX512-FP16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 0 < x.numel() <= self.NATIVE_ROWS * x.shape[-1]:
            return torch.ops.tunelab.fp16_linear(x, self.weight, self.bias)
        if self.upcast:
            return super().forward(x)
        return torch.nn.functional.linear(x, self.weight, self.bias)


def bf16_single_rows_as_matvec(model: torch.nn.Module) -> None:
    """CPU with AVX512-BF16, bfloat16 weights: products of one to four rows (decoding up to four sequences), and of
    up to eight in recorded steps, go through tunelab's own kernel (`engine/csrc/bf16_linear.cpp`, VDPBF16PS with the weight stream prefetched), or
    through `torch.mv` for one row when that kernel cannot be built. Measured on an Intel Xeon with AVX512-BF16 and
    AMX, 2 threads, SmolLM2-135M's 121 projections and head with the weights out of cache, per token: one row 14.2 ms
    (`torch.mv` 18.9, `F.linear` 26.5, float32 through MKL 25.2); two rows 15.9 (`F.linear` 27.9); four rows 18.3
    (28.5). All accumulate in float32. LoRA layers are left alone.

    Products of more rows go to oneDNN (AMX). `F.linear` reorders the weight into oneDNN's blocked layout on every
    call; a copy kept in that layout (`mkldnn._reorder_linear_weight`) saves it: 8 rows 25.4 -> 17.9 ms, 32 rows
    28.2 -> 20.5, 128 rows 46.6 -> 36.9. That copy doubles the projections' memory, so it is kept only while the
    projections take at most PACK_SHARE of the machine's memory. A trace holds a tensor in that layout only as an
    input: recorded steps of more than eight rows (decodes with a prompt chunk) are given the copies
    (`packed_weights`) and call them through `torch.ops.tunelab.packed_linear`."""
    linears = _model_linears(model, torch.bfloat16)
    if not native_kernels():
        for module in linears:
            module.__class__ = _Bf16MatVecLinear
        return
    head = getattr(model, "lm_head", None)
    pack = _mkldnn_packing() and sum(m.weight.nbytes for m in linears) <= PACK_SHARE * _memory_bytes()
    for module in linears:
        module.__class__ = _Bf16NativeLinear
        if module is head:  # float32 logits, through the kernel at any row count (_Bf16NativeLinear.float_out)
            module.float_out = True
            continue
        module.packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), 32) if pack else None


PACK_SHARE = 0.125


def _model_linears(model: torch.nn.Module, dtype: torch.dtype) -> list[torch.nn.Linear]:
    """The plain Linear layers holding `dtype` weights in the layout the kernels read: not LoRA's factors (kept in
    float32 inside LoRA layers, which keep their own forward) nor a transposed view."""
    return [m for m in model.modules()
            if type(m) is torch.nn.Linear and m.weight.dtype == dtype and m.weight.is_contiguous()]


def _mkldnn_packing() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class _Bf16MatVecLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        y = torch.mv(self.weight, x.reshape(-1))
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[0])


class _Bf16NativeLinear(torch.nn.Linear):
    # The kernel's limit. From five rows on, oneDNN on the prepacked copy is as fast or faster (the 120 projections,
    # 8 rows: 12.4 against the kernel's 15.1 ms; recorded steps hold that copy as an input), so the kernel takes 5-8
    # rows only where there is no copy (`F.linear` would reorder the weights on every call).
    NATIVE_ROWS = 8
    packed: torch.Tensor | None = None  # the weight in oneDNN's blocked layout, or None
    # The model's head: float32 sums, not rounded to bfloat16. A bfloat16 logit keeps 8 significant bits, so near
    # ties between tokens become exact ties or swap: the demo's few-shot rung in bfloat16 was 2.0 points below
    # float32 with bfloat16 logits, 1.0 with float32 ones (docs/benchmarks.md). Any row count goes through the kernel
    # then (oneDNN rounds its output to the input's type): at 32 rows ~12 against ~4 ms for oneDNN.
    float_out = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_out:
            return torch.ops.tunelab.bf16_linear(x, self.weight, self.bias, True)
        rows = x.numel() // max(x.shape[-1], 1)
        if 0 < rows <= 4 or (rows <= self.NATIVE_ROWS and self.packed is None):
            return torch.ops.tunelab.bf16_linear(x, self.weight, self.bias)
        if self.packed is not None:
            if torch.jit.is_tracing():  # a recording takes the blocked copy as an input (`packed_weights`)
                return torch.ops.tunelab.packed_linear(x, self.packed, self.bias)
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")
        return torch.nn.functional.linear(x, self.weight, self.bias)


def packed_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weight copies in oneDNN's blocked layout that `model`'s linear layers keep. A TorchScript trace holds
    such a tensor only as an input, so a recorded step is given these (and the tracer, which knows tensors by
    identity, connects each layer's `packed` to its input)."""
    return [m.packed for m in model.modules() if isinstance(m, _Bf16NativeLinear) and m.packed is not None]


def cache_dtype(weight: torch.Tensor) -> torch.dtype:
    """The KV cache's dtype (attention runs in it): the weights' on GPU, float32 on CPU whatever the weights. On AVX2,
    SDPA over a bf16 cache measured ~4x slower per decode step than over fp32. With AVX512-BF16 a bf16 cache is faster
    (batch-1 step -3%, 32 rows -4.5%), but it moved the demo's few-shot rung in bfloat16 from 1.0 to 1.5 points below
    float32 (the bar is 1), so it is not used."""
    return weight.dtype if weight.device.type != "cpu" else torch.float32


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty elsewhere, which keeps the choices made for the common case."""
    return frozenset(_cpuinfo("flags").split())


def cpu_model() -> str | None:
    """The CPU's model name (Linux), e.g. 'Intel(R) Xeon(R) Processor'; None elsewhere."""
    return _cpuinfo("model name") or None


def has_avx512_bf16() -> bool:
    return "avx512_bf16" in cpu_flags()


@functools.lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str:
    """The value of the first `field` line of /proc/cpuinfo, or '' when there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.partition(":")[2].strip() for line in f if line.split(":")[0].strip() == field), "")
    except OSError:
        return ""
