"""LoRA as a property of a layer: `LoraLinear` (nn.Linear or transformers' Conv1D) and `LoraEmbedding`.

Each wrapper keeps the frozen layer as `base_layer` and one (A, B) pair per named adapter, so that the module tree and
state-dict keys look like PEFT's (`<path>.lora_A.<adapter>.weight`, `<path>.lora_embedding_A.<adapter>`). The output is
h = base(x) + sum over active adapters of scaling * B(A(dropout(x))).

The public protocol (as torchtune's `AdapterModule`): every adapter layer (`LoraLayer`'s subclasses and
`ModulesToSave`) owns its adapters (`adapters`, `add_adapter`, `delete_adapter`), which of them run
(`active_adapters`, `disabled`), and takes a `routing` argument in `forward` that picks the adapter per row or per
token for one pass (`routing.py`); nothing else writes into it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.lora.config import LoraConfig
from tunelab.lora.errors import LoraError
from tunelab.lora.routing import AdapterStack, Routing, mixed_embedding_delta, mixed_linear


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


class LoraLayer(nn.Module):
    """What both LoRA wrappers share: adapter bookkeeping, activation, merge/unmerge, stacking for mixed batches."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        # PiSSA keeps its initial (A, B) so a trained adapter can be exported as a plain LoRA delta.
        self.pissa_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Stacked adapters for mixed batches (`stacked`), kept between batches while the same adapters are mixed.
        self._mixed_cache: tuple[tuple, AdapterStack] | None = None

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

    def running(self, routing: Routing | None) -> list[str]:
        """The adapters this layer's plain (unmixed) forward adds: the active ones, or the one a uniform routing
        names (which overrides `disabled` and `active_adapters` for that pass)."""
        if routing is not None:
            return [n for n in routing.names if n in self.r]
        if self.disabled:
            return []
        return [a for a in self.active_adapters if a in self.r and a not in self.merged_adapters]

    def stacked(self, names: tuple[str, ...]) -> AdapterStack:
        """The adapters `names` stacked for mixing (slot 0 the base, zero), reused across batches while the same
        adapters are mixed (every decode step of a server). The key holds each factor's identity and `_version`,
        which in-place updates (optimizer steps, load_adapter's copy_) bump, so a changed adapter is never stale."""
        factors = [(n, *self.factors(n)) for n in names if n in self.r]
        key = (tuple(names), tuple((n, id(a), a._version, id(b), b._version, self.scaling[n]) for n, a, b in factors))
        if self._mixed_cache is None or self._mixed_cache[0] != key:
            self._mixed_cache = (key, AdapterStack(*self._stack_adapters(names)))
        return self._mixed_cache[1]

    def clear_mixed_cache(self) -> None:
        self._mixed_cache = None

    @torch.no_grad()
    def _stack_adapters(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        present = [n for n in names if n in self.r]
        r_max = max((self.r[n] for n in present), default=1)
        ref = self.factors(present[0])[0] if present else self.base_layer.weight
        dtype = ref.dtype if present else adapter_dtype(ref)
        a_all = torch.zeros(len(names) + 1, *self._stacked_a_shape(r_max), dtype=dtype, device=ref.device)
        b_all = torch.zeros(len(names) + 1, self.out_features, r_max, dtype=dtype, device=ref.device)
        for i, name in enumerate(names, start=1):
            if name not in self.r:
                continue  # this adapter does not touch this layer: its slot stays zero, like the base slot
            a, b = self.factors(name)
            r = self.r[name]
            self._place_a(a_all[i], a, r)
            b_all[i, :, :r] = b * self.scaling[name]
        return a_all, b_all


class LoraLinear(LoraLayer):
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

    def _stacked_a_shape(self, r_max: int) -> tuple[int, int]:
        return r_max, self.in_features

    @staticmethod
    def _place_a(slot: torch.Tensor, a: torch.Tensor, r: int) -> None:
        slot[:r] = a

    def forward(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        result = self.base_layer(x)
        if routing is not None and routing.mixed:
            return result if self.disabled else mixed_linear(self.stacked(routing.names), routing, x, result)
        for name in self.running(routing):
            a, b = self.lora_A[name], self.lora_B[name]
            h = self.lora_dropout[name](x.to(a.weight.dtype))
            result = result + (b(a(h)) * self.scaling[name]).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, fan_in_fan_out={self.fan_in_fan_out}"


class LoraEmbedding(LoraLayer):
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

    def _stacked_a_shape(self, r_max: int) -> tuple[int, int]:
        return self.in_features, r_max  # A transposed, so a row of the stacked table is one token's [r]

    @staticmethod
    def _place_a(slot: torch.Tensor, a: torch.Tensor, r: int) -> None:
        slot[:, :r] = a.T

    def forward(self, ids: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        result = self.base_layer(ids)
        if routing is not None and routing.mixed:
            if self.disabled:
                return result
            return result + mixed_embedding_delta(self.stacked(routing.names), routing, ids, self.embed).to(result.dtype)
        for name in self.running(routing):
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

    def forward(self, *args, routing: Routing | None = None, **kwargs):
        # In a mixed-adapter batch rows share one module; mixed.py refuses batches where an adapter in use has its
        # own copy, so the original is right there.
        if routing is None:
            names = [] if self.disabled else self.active_adapters
        else:
            names = [] if routing.mixed else list(routing.names)
        for name in names:
            if name in self.modules_to_save:
                return self.modules_to_save[name](*args, **kwargs)
        return self.original_module(*args, **kwargs)
