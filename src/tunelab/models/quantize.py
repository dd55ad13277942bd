"""Weight-only int8 / int4 quantisation of the projection layers, as gpt-fast's quantize.py does it.

Every `nn.Linear` inside the transformer layers (q/k/v/o, gate/up/down; fused first, so a layer has four) is swapped
for an `Int8Linear` or `Int4Linear`; embeddings and lm_head stay in the float dtype (a tied head is the embedding
table, and the logits are where rounding hurts most). Activations stay float: only the weights are stored as integers.

- int8: symmetric, one scale per output channel: w ~ q * scale, q in [-127, 127].
- int4: asymmetric, one (scale, zero) per group of `group_size` input columns of each output row:
  w ~ (q - 8) * scale + zero, q in [0, 15]; this is the convention of torch's int4 kernels (zero = min + 8 * scale).

On disk (safetensors, under the module's name): `qweight` (int8 [out, in], or for int4 uint8 [out, in / 2] with two
columns per byte, even column in the low nibble), `scales` (and for int4 `zeros`, [out, in / group]) in the compute
dtype, and `bias` if any. The kernels' own packed layout (`torch._convert_weight_to_int4pack_for_cpu`) is a private,
version-dependent format, so it is made from the stored integers when a model is loaded (integer shuffling, no float
weight is converted) and never written to disk.

Forward: on CPU `torch._weight_int8pack_mm` / `torch._weight_int4pack_mm_for_cpu`; elsewhere (and for an int4 layer
whose output width the CPU kernel cannot pack, not a multiple of 16) the weight is dequantised and multiplied with
`F.linear`, which is correct everywhere but not fast. The modules are deliberately not `nn.Linear` subclasses, so
helpers that rewrite float Linear weights (the engine's layout changes, LoRA injection) leave them alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.models.config import ModelError

MODES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 kernels accept
DEFAULT_INT4_GROUP_SIZE = 32
CONFIG_KEY = "tunelab_quantization"  # where config.json records it


@dataclass(frozen=True)
class QuantConfig:
    mode: str  # "int8" | "int4"
    group_size: int | None = None  # int4: input columns per (scale, zero); None for int8

    def __post_init__(self):
        if self.mode not in MODES:
            raise ModelError(f"quant mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise ModelError(f"quant group_size: int4 needs one of {INT4_GROUP_SIZES}, got {self.group_size!r}")
        if self.mode == "int8" and self.group_size is not None:
            raise ModelError(f"quant group_size: int8 is per output channel and takes none, got {self.group_size!r}")

    @classmethod
    def from_dict(cls, raw, source: str) -> "QuantConfig":
        """Validate a recorded config (a manifest's or config.json's), naming `source` and the field at fault."""
        if not isinstance(raw, dict) or set(raw) - {"mode", "group_size"} or "mode" not in raw:
            raise ModelError(f"{source}: expected {{\"mode\": \"int8\"|\"int4\", \"group_size\": ...}}, got {raw!r}")
        try:
            return cls(raw["mode"], raw.get("group_size"))
        except ModelError as e:
            raise ModelError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "group_size": self.group_size}


def quantize(model: nn.Module, config: QuantConfig, dtype: torch.dtype) -> None:
    """Quantise `model`'s projection layers in place from their (ideally float32) weights; scales are rounded to
    `dtype` before the integers are chosen, so the stored pair is the best one in that dtype. Records `config` in
    `model.config` so `save_pretrained` writes it to config.json."""
    _fuse(model)
    for path, linear in _projections(model):
        _replace(model, path, _QUANTIZERS[config.mode](linear, config, dtype))
    model.config.hf_config[CONFIG_KEY] = config.to_dict()


def prepare_quantized(model: nn.Module, config: QuantConfig, dtype: torch.dtype) -> None:
    """Give a freshly built (meta) model the quantised modules a quantised checkpoint holds, so loading is a plain
    state-dict assignment."""
    _fuse(model)
    for path, linear in _projections(model):
        cls = Int8Linear if config.mode == "int8" else Int4Linear
        _replace(model, path, cls.empty(linear, config, dtype))


def pack_for_kernels(model: nn.Module) -> None:
    """Make each quantised layer's kernel layout now (rather than on the first request)."""
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.kernel_weights()


def quant_config(hf_config: dict, source: str) -> QuantConfig | None:
    """The quantisation a config.json records, or None for a float checkpoint."""
    raw = hf_config.get(CONFIG_KEY)
    return None if raw is None else QuantConfig.from_dict(raw, f"{source}: {CONFIG_KEY}")


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + bias, q int8 [out, in], one scale per output channel."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig, dtype: torch.dtype) -> "Int8Linear":
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(dtype)
        q = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        return cls(q, scales, _bias(linear, dtype))

    @classmethod
    def empty(cls, linear: nn.Linear, config: QuantConfig, dtype: torch.dtype) -> "Int8Linear":
        out, inp = linear.weight.shape
        return cls(torch.empty(out, inp, dtype=torch.int8), torch.empty(out, dtype=dtype), _bias(linear, dtype))

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if x.device.type == "cpu":
            y = torch._weight_int8pack_mm(rows, self.qweight, self.scales)
        else:
            y = F.linear(rows, self.dequantize().to(x.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


class Int4Linear(nn.Module):
    """y = x @ W.T + bias with W[o, i] = (q[o, i] - 8) * scale[o, g] + zero[o, g], g = i // group_size."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape[0], qweight.shape[1] * 2
        self.group_size = group_size
        self.register_buffer("qweight", qweight)  # uint8 [out, in / 2]
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self._kernel = None  # (device, dtype, packed weight, scales-and-zeros) for torch's CPU kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig, dtype: torch.dtype) -> "Int4Linear":
        w = linear.weight.detach().float()
        out, inp = w.shape
        gs = config.group_size
        if inp % gs:
            raise ModelError(f"int4 group_size {gs} does not divide a layer's {inp} input columns; "
                             f"use a group size that does ({[g for g in INT4_GROUP_SIZES if inp % g == 0]})")
        groups = w.reshape(out, inp // gs, gs)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-6).to(dtype)
        zeros = (low + 8 * scales.float()).to(dtype)
        s, z = scales.float()[..., None], zeros.float()[..., None]
        q = ((groups - z) / s + 8).round().clamp(0, 15).to(torch.uint8).reshape(out, inp)
        return cls(q[:, 0::2] | (q[:, 1::2] << 4), scales, zeros, gs, _bias(linear, dtype))

    @classmethod
    def empty(cls, linear: nn.Linear, config: QuantConfig, dtype: torch.dtype) -> "Int4Linear":
        out, inp = linear.weight.shape
        groups = inp // config.group_size
        return cls(torch.empty(out, inp // 2, dtype=torch.uint8), torch.empty(out, groups, dtype=dtype),
                   torch.empty(out, groups, dtype=dtype), config.group_size, _bias(linear, dtype))

    def int_weight(self) -> torch.Tensor:
        """q as int32 [out, in], values 0..15."""
        low, high = self.qweight & 0xF, self.qweight >> 4
        return torch.stack([low, high], dim=-1).reshape(self.out_features, self.in_features).to(torch.int32)

    def dequantize(self) -> torch.Tensor:
        q = self.int_weight().reshape(self.out_features, -1, self.group_size).to(self.scales.dtype)
        return ((q - 8) * self.scales[..., None] + self.zeros[..., None]).reshape(self.out_features, -1)

    def kernel_weights(self):
        """(packed, scales_and_zeros) for `torch._weight_int4pack_mm_for_cpu`, or None where it does not apply."""
        device, dtype = self.qweight.device, self.scales.dtype
        if device.type != "cpu" or self.out_features % 16:  # the CPU packing works on blocks of 16 output rows
            return None
        if self._kernel is None or self._kernel[:2] != (device, dtype):
            packed = torch._convert_weight_to_int4pack_for_cpu(self.int_weight(), 1)
            # [groups, out, 2]: each group's (scale, zero) adjacent, the layout the kernel reads.
            scales_and_zeros = torch.stack([self.scales, self.zeros], dim=-1).transpose(0, 1).contiguous()
            self._kernel = (device, dtype, packed, scales_and_zeros)
        return self._kernel[2:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        kernel = self.kernel_weights() if x.device.type == "cpu" else None
        if kernel is not None:
            y = torch._weight_int4pack_mm_for_cpu(rows, kernel[0], self.group_size, kernel[1])
        else:
            y = F.linear(rows, self.dequantize().to(x.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        self._kernel = None  # moved or cast: the packed copy is remade from the stored integers
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size}"


_QUANTIZERS = {"int8": Int8Linear.from_linear, "int4": Int4Linear.from_linear}


def _fuse(model: nn.Module) -> None:
    # Quantised models are always stored fused (qkv_proj, gate_up_proj): per-row scales make quantising the fused
    # matrix identical to quantising its parts, and the engine fuses float weights anyway.
    if hasattr(model, "fuse_projections"):
        model.fuse_projections()


def _projections(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    layers = getattr(model, "layers", model)
    prefix = "layers." if layers is not model else ""
    return [(prefix + path, m) for path, m in layers.named_modules() if isinstance(m, nn.Linear)]


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _bias(linear: nn.Linear, dtype: torch.dtype) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach().to(dtype).clone()
