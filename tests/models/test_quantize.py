"""Weight-only int8/int4: each quantised layer computes x @ dequant(W).T as the documented formula defines it (the
reference below unpacks the stored integers itself), the integers are the nearest ones, and a whole quantised model
stays close to the float model it came from."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelab.models import load_pretrained
from tunelab.models.config import ModelError
from tunelab.models.quantize import Int4Linear, Int8Linear, QuantConfig, quantize


def reference_weight(module) -> torch.Tensor:
    """Dequantised weight in float64, straight from the stored tensors and the module docstring's formula."""
    q = module.qweight
    if isinstance(module, Int8Linear):
        return q.double() * module.scales.double()[:, None]
    ints = torch.empty(q.shape[0], q.shape[1] * 2, dtype=torch.float64)
    ints[:, 0::2], ints[:, 1::2] = (q & 0xF).double(), (q >> 4).double()  # even column in the low nibble
    groups = ints.reshape(q.shape[0], -1, module.group_size)
    scales, zeros = module.scales.double()[..., None], module.zeros.double()[..., None]
    return ((groups - 8) * scales + zeros).reshape(q.shape[0], -1)


def make(mode: str, out: int, inp: int, dtype=torch.float32, group_size=32, bias=True):
    torch.manual_seed(out + inp)
    linear = nn.Linear(inp, out, bias=bias)
    linear.weight.data.normal_(0, 0.5)
    config = QuantConfig(mode, group_size if mode == "int4" else None)
    cls = Int8Linear if mode == "int8" else Int4Linear
    return linear, cls.from_linear(linear, config, dtype)


# out=96: the int4 CPU kernel path; out=40: not a multiple of 16, the dequantise-and-matmul fallback.
@pytest.mark.parametrize("mode,out", [("int8", 96), ("int8", 40), ("int4", 96), ("int4", 40)])
def test_quantised_linear_matches_dequantised_reference_in_float32(mode, out):
    linear, module = make(mode, out, 128)
    assert (module.kernel_weights() is not None) == (out % 16 == 0) if mode == "int4" else True
    x = torch.randn(3, 5, 128)
    ref = F.linear(x.double(), reference_weight(module), linear.bias.double())
    # float32 activations and scales: the kernels accumulate in fp32, so only fp32 rounding separates them.
    torch.testing.assert_close(module(x).double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_linear_in_bfloat16_is_within_bfloat16_rounding(mode):
    linear, module = make(mode, 96, 128, dtype=torch.bfloat16)
    for rows in (1, 7):  # one decoding row and a batch take different kernel paths
        x = torch.randn(rows, 128).bfloat16()
        ref = F.linear(x.double(), reference_weight(module), linear.bias.bfloat16().double())
        # bf16 keeps 8 significant bits: the output itself is rounded by up to 2^-8 of its magnitude, and the
        # kernels may round partial sums, so allow 2^-6 of the largest output.
        err = (module(x).double() - ref).abs().max().item()
        assert err <= 2**-6 * ref.abs().max().item(), err


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_integers_are_the_nearest_representable_weights(mode):
    linear, module = make(mode, 48, 64, bias=False)
    w, deq = linear.weight.double(), reference_weight(module)
    if mode == "int8":
        step = module.scales.double()[:, None].expand_as(w)
    else:
        step = module.scales.double().repeat_interleave(module.group_size, dim=1)
    # Round to nearest: at most half a step off (plus float32 rounding of the scale arithmetic).
    assert ((w - deq).abs() <= step / 2 + 1e-6).all()
    # The grid spans each row / group: int8 reaches +-127 in every row, int4 uses 0 and 15 in every group.
    if mode == "int8":
        assert (module.qweight.abs().amax(dim=1) == 127).all()


def test_whole_model_int8_and_int4_stay_close_to_float(tiny_checkpoint):
    fp, _ = load_pretrained(tiny_checkpoint("llama"), dtype="float32")
    ids = torch.randint(0, fp.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = fp(ids)
        for mode in ("int8", "int4"):
            model = copy.deepcopy(fp)
            quantize(model, QuantConfig(mode, 32 if mode == "int4" else None), torch.float32)
            assert all(type(m) is not nn.Linear for m in model.layers.modules())
            out = model(ids)
            # The quantised model computes exactly what the float model computes with the dequantised weights.
            deq, noisy = copy.deepcopy(fp), copy.deepcopy(fp)
            deq.fuse_projections()
            noisy.fuse_projections()
            gen = torch.Generator().manual_seed(1)
            for name, module in model.named_modules():
                if isinstance(module, (Int8Linear, Int4Linear)):
                    weight = reference_weight(module).float()
                    deq.get_submodule(name).weight.copy_(weight)
                    w = noisy.get_submodule(name).weight
                    noise = torch.randn(w.shape, generator=gen)
                    w.add_(noise * (weight - w).norm() / noise.norm())
            torch.testing.assert_close(out, deq(ids), rtol=1e-4, atol=1e-4 * ref.abs().max().item())
            # How far the logits may move depends on the model (this tiny one amplifies a weight error about 5x), so
            # the yardstick is the same model with random noise of the same size added to each weight: rounding
            # to the nearest level is unbiased, so it should hurt no more than that noise (measured 0.8-1.1x); 1.5x
            # leaves room for the seed. The weight errors themselves are bounded by the test above.
            rel = ((out - ref).norm() / ref.norm()).item()
            rel_noise = ((noisy(ids) - ref).norm() / ref.norm()).item()
            assert rel < 1.5 * rel_noise, (mode, rel, rel_noise)
            assert rel < (0.1 if mode == "int8" else 1.0), (mode, rel)


def test_tied_head_and_embeddings_stay_float_and_tied(tiny_checkpoint):
    model, _ = load_pretrained(tiny_checkpoint("qwen2"), dtype="float32")
    if not model.config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    quantize(model, QuantConfig("int8"), torch.float32)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed_tokens.weight


def test_bad_quant_configs_name_the_field():
    with pytest.raises(ModelError, match="quant mode: expected one of int8, int4, got 'int5'"):
        QuantConfig("int5")
    with pytest.raises(ModelError, match="group_size: int4 needs one of"):
        QuantConfig("int4", 48)
    with pytest.raises(ModelError, match=r"m\.json: quant: .*group_size"):
        QuantConfig.from_dict({"mode": "int4", "group_size": "32"}, "m.json: quant")
    with pytest.raises(ModelError, match="does not divide a layer's 40 input columns"):
        Int4Linear.from_linear(nn.Linear(40, 16), QuantConfig("int4", 32), torch.float32)
