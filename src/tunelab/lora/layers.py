"""LoRA as a property of a layer: `LoraLinear` (nn.Linear or transformers' Conv1D) and `LoraEmbedding`.

Each wrapper keeps the frozen layer as `base_layer` and one (A, B) pair per named adapter, so that the module tree and
state-dict keys look like PEFT's (`<path>.lora_A.<adapter>.weight`, `<path>.lora_embedding_A.<adapter>`). The output is
h = base(x) + sum over active adapters of scaling * B(A(dropout(x))).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.lora.config import LoraConfig
from tunelab.lora.errors import LoraError


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 `Conv1D`: a linear layer whose weight is stored transposed, [in, out], with `nf` = out.
    Detected by name so that transformers is never imported at runtime."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters of a bf16/fp16 model are kept in float32 (as PEFT's autocast_adapter_dtype does): they are tiny, and
    the optimizer's small updates to A and B would otherwise round away."""
    if weight.dtype in (torch.float16, torch.bfloat16) or not weight.is_floating_point():
        return torch.float32
    return weight.dtype


def is_lora_target_type(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding)) or is_conv1d(module)


class _LoraBase(nn.Module):
    """What both wrappers share: adapter bookkeeping, activation, merge/unmerge."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        # Set by tunelab.lora.mixed while a mixed-adapter batch runs; None otherwise.
        self.routing = None
        # PiSSA keeps its initial (A, B) so a trained adapter can be exported as a plain LoRA delta.
        self.pissa_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Stacked adapters for mixed batches, kept between batches by tunelab.lora.mixed.
        self._mixed_cache = None

    @property
    def weight(self) -> torch.Tensor:
        # Code that reads `layer.weight` (weight tying, dtype probes) keeps working on a wrapped model.
        return self.base_layer.weight

    @property
    def adapters(self) -> list[str]:
        return list(self.r)

    def add_adapter(self, name: str, config: LoraConfig) -> None:
        if name in self.r:
            raise LoraError(f"adapter {name!r} already exists on this layer; delete it first or pick another name")
        self._mixed_cache = None
        self.r[name] = config.r
        self.scaling[name] = config.scaling
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._create(name, config.r)
        self._initialise(name, config.init)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise LoraError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting it")
        if name in self.pissa_init:
            # PiSSA moved scaling*B0@A0 out of W0; put it back so the base model is the original again.
            a0, b0 = self.pissa_init[name]
            self._add_to_base(self._as_base_layout((b0 @ a0) * self.scaling[name]), f"deleting PiSSA adapter {name!r}")
        self._mixed_cache = None
        for table in (self.r, self.scaling, self.pissa_init):
            table.pop(name, None)
        for attr in ("lora_dropout", "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            container = getattr(self, attr, None)
            if container is not None and name in container:
                del container[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def lora_parameters(self, name: str) -> list[nn.Parameter]:
        a, b = self.factors(name)
        return [a, b]

    def delta_weight(self, name: str) -> torch.Tensor:
        """scaling * B @ A in float32, shaped like the base weight."""
        a, b = self.factors(name)
        delta = (b.detach().float() @ a.detach().float()) * self.scaling[name]
        return self._as_base_layout(delta)

    def merge(self, name: str) -> None:
        if name not in self.r:
            raise LoraError(f"cannot merge {name!r}: this layer has adapters {self.adapters}")
        if name in self.merged_adapters:
            return
        self._add_to_base(self.delta_weight(name), f"merging adapter {name!r}")
        self.merged_adapters.append(name)

    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        self._add_to_base(-self.delta_weight(name), f"unmerging adapter {name!r}")
        self.merged_adapters.remove(name)

    def _add_to_base(self, delta: torch.Tensor, what: str) -> None:
        weight = self.base_layer.weight
        with torch.no_grad():
            # Accumulate in float32: adding a small delta directly in bf16 loses most of its bits (PEFT's merge drift).
            total = weight.detach().float() + delta.to(weight.device)
            if weight.dtype != torch.float32:
                warnings.warn(
                    f"{what}: the base weight is {weight.dtype}; the float32 sum W0 + scaling*B@A is rounded to "
                    f"{weight.dtype} when stored, so merged outputs (and W0 after unmerge) can differ slightly. "
                    "Merge a float32 copy of the model if you need exact results.",
                    stacklevel=4,
                )
            weight.copy_(total.to(weight.dtype))

    def _lora_forward_ok(self) -> list[str]:
        if self.disabled:
            return []
        return [a for a in self.active_adapters if a in self.r and a not in self.merged_adapters]


class LoraLinear(_LoraBase):
    """LoRA around `nn.Linear` or GPT-2's `Conv1D` (fan_in_fan_out: weight stored as [in, out])."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base_layer.weight.shape
        else:
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in], B [out, r])."""
        return self.lora_A[name].weight, self.lora_B[name].weight

    def _create(self, name: str, r: int) -> None:
        kw = {"device": self.base_layer.weight.device, "dtype": adapter_dtype(self.base_layer.weight)}
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **kw)

    def _initialise(self, name: str, init: str) -> None:
        a, b = self.factors(name)
        with torch.no_grad():
            if init == "pissa":
                self._pissa(name)
                return
            if init == "kaiming":
                # Same as nn.Linear's default (and PEFT's): with B = 0 the adapted model starts equal to the base.
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            else:
                nn.init.normal_(a, std=1 / self.r[name])
            nn.init.zeros_(b)

    def _pissa(self, name: str) -> None:
        """PiSSA (Meng et al. 2024): A, B from the top-r singular triplets of W0 and W0 replaced by the residual, so
        the model still computes W0 at step 0 but training moves the principal directions. Same recipe as PEFT, so an
        adapter saved by either re-creates the same residual when loaded onto the original base weights."""
        weight = self._as_out_in(self.base_layer.weight.detach().float())
        r, scaling = self.r[name], self.scaling[name]
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        s_r = s[:r] / scaling
        a = torch.diag(torch.sqrt(s_r)) @ vh[:r]
        b = u[:, :r] @ torch.diag(torch.sqrt(s_r))
        self.lora_A[name].weight.copy_(a)
        self.lora_B[name].weight.copy_(b)
        residual = self._as_base_layout(weight - scaling * (b @ a)).to(self.base_layer.weight.dtype)
        # A fresh Parameter rather than an in-place write: a weight tied elsewhere (an output head tied to the
        # embedding) must keep W0 there.
        self.base_layer.weight = nn.Parameter(residual.contiguous(), requires_grad=False)
        self.pissa_init[name] = (a.clone(), b.clone())

    def _as_out_in(self, w: torch.Tensor) -> torch.Tensor:
        return w.T if self.fan_in_fan_out else w

    _as_base_layout = _as_out_in  # the transpose is its own inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.routing is not None and not self.disabled:
            return self.routing.linear_forward(self, x, result)
        for name in self._lora_forward_ok():
            a, b = self.lora_A[name], self.lora_B[name]
            h = self.lora_dropout[name](x.to(a.weight.dtype))
            result = result + (b(a(h)) * self.scaling[name]).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, fan_in_fan_out={self.fan_in_fan_out}"


class LoraEmbedding(_LoraBase):
    """LoRA around `nn.Embedding`. As in loralib and PEFT, A is [r, num_embeddings] (looked up by token id) and B is
    [embedding_dim, r]; A starts at zero and B normal, so the adapted model starts equal to the base."""

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features = base_layer.num_embeddings, base_layer.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def _create(self, name: str, r: int) -> None:
        kw = {"device": self.base_layer.weight.device, "dtype": adapter_dtype(self.base_layer.weight)}
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(r, self.in_features, **kw))
        self.lora_embedding_B[name] = nn.Parameter(torch.zeros(self.out_features, r, **kw))

    def _initialise(self, name: str, init: str) -> None:
        if init == "pissa":
            raise LoraError("init='pissa' is defined for linear layers only; remove the embedding from "
                            "target_modules or use init='kaiming'")
        with torch.no_grad():
            nn.init.zeros_(self.lora_embedding_A[name])
            nn.init.normal_(self.lora_embedding_B[name])

    def _as_base_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T  # B @ A is [dim, vocab]; the embedding table is [vocab, dim]

    def embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.embedding(ids, table, padding_idx=base.padding_idx, max_norm=base.max_norm,
                           norm_type=base.norm_type, scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(ids)
        if self.routing is not None and not self.disabled:
            return result + self.routing.embedding_delta(self, ids).to(result.dtype)
        for name in self._lora_forward_ok():
            a, b = self.factors(name)
            # Dropout on token ids makes no sense; like PEFT, embeddings take no LoRA dropout.
            result = result + ((self.embed(ids, a.T) @ b.T) * self.scaling[name]).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"num_embeddings={self.in_features}, dim={self.out_features}, r={self.r}"


class ModulesToSave(nn.Module):
    """A trainable copy of a whole module per adapter (e.g. a classification head), as PEFT's `modules_to_save`."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.disabled = False
        self.routing = None

    @property
    def adapters(self) -> list[str]:
        return list(self.modules_to_save)

    def add_adapter(self, name: str) -> None:
        import copy

        clone = copy.deepcopy(self.original_module)
        for p in clone.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = clone

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def forward(self, *args, **kwargs):
        # In a mixed-adapter batch (routing set) rows share one module; mixed.py refuses batches where an adapter
        # in use has its own copy, so the original is right here.
        if not self.disabled and self.routing is None:
            for name in self.active_adapters:
                if name in self.modules_to_save:
                    return self.modules_to_save[name](*args, **kwargs)
        return self.original_module(*args, **kwargs)
