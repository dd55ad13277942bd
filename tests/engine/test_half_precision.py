"""16-bit inference: the engine loads bfloat16/float16 weights in the layout their CPU kernels want, keeps its KV
cache in float32 on CPU, and models text as well as float32 (perplexity within 1% of transformers in float32)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.errors import EngineError
from tunelab.models.generation import perplexity

HELD_OUT = ("The capital of France is Paris, and the capital of Germany is Berlin. A fox is quick and brown; the "
            "dog is lazy. def add(a, b): return a + b. Hello, how are you today? I am fine, thank you. ") * 3


def hf_perplexity(path, ids):
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.inference_mode():
        return math.exp(float(ref(x, labels=x).loss))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_perplexity_within_one_percent_of_fp32(tiny_checkpoint, dtype):
    path = tiny_checkpoint("llama")
    llm = LLM(path, dtype=dtype, max_num_seqs=2)
    ids = llm.tokenizer.encode(HELD_OUT)
    assert next(llm.model.parameters()).dtype == dtype
    assert llm.runner.k_cache.dtype == torch.float32  # on CPU whatever the weights (engine/cpu_kernels.py)
    ours = perplexity(llm.model, ids, window=len(ids))
    reference = hf_perplexity(path, ids)
    assert abs(ours / reference - 1) < 0.01, (ours, reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_keep_out_in_layout_and_decode(tiny_checkpoint, dtype):
    llm = LLM(tiny_checkpoint("llama"), dtype=dtype, max_num_seqs=2)
    weight = llm.model.layers[0].mlp.down_proj.weight
    assert weight.is_contiguous()  # [out, in]: the 16-bit matrix-vector kernels collapse on the transposed layout
    # Greedy decoding through the paged cache equals greedy over full re-computation in the same dtype.
    prompt = llm.tokenizer.encode("The quick brown fox")
    out = llm.generate([prompt], SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(8):
            ids.append(int(llm.model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]


def test_fp32_weights_are_stored_transposed_on_cpu(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("llama"), max_num_seqs=2)
    weight = llm.model.layers[0].mlp.down_proj.weight
    assert not weight.is_contiguous() and weight.t().is_contiguous()


def test_compile_is_refused_on_cpu_with_a_clear_error(tiny_checkpoint):
    with pytest.raises(EngineError, match="compile=True is for GPUs"):
        LLM(tiny_checkpoint("llama"), device="cpu", compile=True)


def test_bf16_one_row_products_go_through_matvec_on_avx512_bf16_cpus(tiny_checkpoint):
    """Where the CPU has AVX512-BF16, few-row bfloat16 products leave `F.linear`: for tunelab's own kernel
    (tests/engine/test_native_kernels.py), or, when it cannot be built, one-row products for `torch.mv` (its kernel
    reads the weight ~1.5x faster there than `F.linear`'s): same values as the float64 product to bfloat16 rounding;
    more rows unchanged."""
    import torch.nn.functional as F

    from tunelab.engine.cpu_kernels import _Bf16MatVecLinear, _Bf16NativeLinear, has_avx512_bf16

    llm = LLM(tiny_checkpoint("llama"), dtype=torch.bfloat16, max_num_seqs=2)
    swapped = {type(m) for m in llm.model.modules()} & {_Bf16MatVecLinear, _Bf16NativeLinear}
    assert len(swapped) == int(has_avx512_bf16())
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40).bfloat16()
    x = torch.randn(1, 1, 96).bfloat16()
    exact = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    lin.__class__ = _Bf16MatVecLinear
    out = lin(x)
    assert out.shape == (1, 1, 40) and out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), exact, rtol=2**-7, atol=2**-7)
    many = torch.randn(1, 5, 96).bfloat16()
    assert torch.equal(lin(many), F.linear(many, lin.weight, lin.bias))


def test_fp16_products_are_upcast_only_on_cpus_without_avx512_fp16(tiny_checkpoint):
    from tunelab.engine.cpu_kernels import _Fp16CpuLinear, _Fp16NativeLinear, cpu_flags

    llm = LLM(tiny_checkpoint("llama"), dtype=torch.float16, max_num_seqs=2)
    upcast = any(type(m) is _Fp16CpuLinear or (type(m) is _Fp16NativeLinear and m.upcast)
                 for m in llm.model.modules())
    assert upcast == ("avx512_fp16" not in cpu_flags())
