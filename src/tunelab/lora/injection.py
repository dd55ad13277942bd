"""Putting adapters into a model and choosing which ones run: inject/add, set_active, delete, disabled, and the
trainable-parameter report. Works on any `nn.Module`; tunelab's own models also get Hugging Face names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from tunelab.lora.config import LoraConfig
from tunelab.lora.errors import LoraError
from tunelab.lora.layers import LoraEmbedding, LoraLinear, ModulesToSave, LoraLayer
from tunelab.lora.targets import find_modules_to_save, find_targets
from tunelab.models.quantize import is_quantized

_STATE_ATTR = "_tunelab_lora"


@dataclass
class AdapterState:
    """What the model remembers about its adapters (kept as a plain attribute on the root module)."""

    configs: dict[str, LoraConfig]
    targets: dict[str, list[str]]  # adapter -> wrapped module paths
    active: list[str]


def inject(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap the layers `config` targets with LoRA, add adapter `adapter_name`, make it the active one and freeze
    everything else (except `modules_to_save` and the biases `config.bias` asks for). Returns `model` (changed in
    place) so calls chain."""
    add(model, config, adapter_name)
    set_active(model, adapter_name)
    return model


def add(model: nn.Module, config: LoraConfig, adapter_name: str) -> None:
    """Add another named adapter (same or different targets) without changing which adapters are active."""
    if not adapter_name or "." in adapter_name:
        raise LoraError(f"adapter name {adapter_name!r} must be non-empty and contain no '.'")
    existing = list(getattr(model, _STATE_ATTR).configs) if hasattr(model, _STATE_ATTR) else []
    if adapter_name in existing:
        raise LoraError(f"adapter {adapter_name!r} already exists (adapters: {existing}); "
                        "delete it or choose another name")
    if config.init == "pissa" and existing:
        raise LoraError("init='pissa' rewrites the base weights, so it cannot share a model with other adapters "
                        f"(already has {existing})")
    if is_quantized(model):
        raise LoraError("this model's projection weights are quantised (int8/int4), and LoRA in tunelab wraps only "
                        "float layers; merge the adapter before quantising: tunelab build MODEL --adapter NAME=DIR "
                        "--merge --quant ...")
    # Resolve everything before touching the model, so a bad config leaves it unchanged.
    paths = find_targets(model, config)
    save_paths = find_modules_to_save(model, config.modules_to_save) if config.modules_to_save else []
    state = adapter_state(model, create=True)
    for path in paths:
        module = model.get_submodule(path)
        if not isinstance(module, LoraLayer):
            module = LoraEmbedding(module) if isinstance(module, nn.Embedding) else LoraLinear(module)
            _replace(model, path, module)
        module.add_adapter(adapter_name, config)
    for path in save_paths:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            _replace(model, path, module)
        module.add_adapter(adapter_name)
    state.configs[adapter_name] = config
    state.targets[adapter_name] = paths
    _refresh_trainable(model)


def set_active(model: nn.Module, adapter_names: str | list[str]) -> None:
    """Which adapter(s) run in forward; several are summed. Only the active adapters are trainable."""
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    state = adapter_state(model)
    unknown = [n for n in names if n not in state.configs]
    if unknown:
        raise LoraError(f"unknown adapter(s) {unknown}; this model has {list(state.configs)}")
    state.active = names
    for module in adapter_modules(model):
        module.active_adapters = [n for n in names if n in module.adapters]
    _refresh_trainable(model)


def delete(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter; layers left with no adapter go back to the plain base layer."""
    state = adapter_state(model)
    if adapter_name not in state.configs:
        raise LoraError(f"unknown adapter {adapter_name!r}; this model has {list(state.configs)}")
    for path, module in list(model.named_modules()):
        if isinstance(module, (LoraLayer, ModulesToSave)) and adapter_name in module.adapters:
            module.delete_adapter(adapter_name)
            if not module.adapters:
                if isinstance(module, LoraLayer) and module.merged_adapters:
                    continue
                _replace(model, path, module.base_layer if isinstance(module, LoraLayer) else module.original_module)
    del state.configs[adapter_name]
    del state.targets[adapter_name]
    state.active = [a for a in state.active if a != adapter_name]
    if not state.configs:
        delattr(model, _STATE_ATTR)
    _refresh_trainable(model)


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: every adapter and `modules_to_save` copy is bypassed inside the block."""
    wrappers = list(adapter_modules(model))
    merged = sorted({a for m in wrappers if isinstance(m, LoraLayer) for a in m.merged_adapters})
    if merged:
        raise LoraError(f"adapters {merged} are merged into the base weights, so the base model is not available; "
                        "call unmerge(model) first")
    before = [m.disabled for m in wrappers]
    for m in wrappers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, flag in zip(wrappers, before):
            m.disabled = flag


@dataclass(frozen=True)
class TrainableParameters:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        # The same line PEFT's print_trainable_parameters prints, so numbers can be compared by eye.
        return f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || trainable%: {self.percent:.4f}"


def trainable_parameters(model: nn.Module) -> TrainableParameters:
    """Parameters with requires_grad vs all parameters (adapters included, shared tensors counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return TrainableParameters(trainable, total)


def adapter_state(model: nn.Module, create: bool = False) -> AdapterState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        if not create:
            raise LoraError(f"{type(model).__name__} has no LoRA adapters; call tunelab.lora.inject(model, config) first")
        state = AdapterState(configs={}, targets={}, active=[])
        object.__setattr__(model, _STATE_ATTR, state)
    return state


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield path, module


def adapter_modules(model: nn.Module) -> Iterator[LoraLayer | ModulesToSave]:
    """Every adapter layer of `model` (LoRA wrappers and modules_to_save copies), in model order."""
    for module in model.modules():
        if isinstance(module, (LoraLayer, ModulesToSave)):
            yield module


def _refresh_trainable(model: nn.Module) -> None:
    """Freeze everything, then unfreeze the active adapters, their modules_to_save copies and the requested biases."""
    state = getattr(model, _STATE_ATTR, None)
    for p in model.parameters():
        p.requires_grad_(False)
    if state is None:
        return
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for name in module.active_adapters:
                for p in module.lora_parameters(name):
                    p.requires_grad_(True)
        elif isinstance(module, ModulesToSave):
            for name in module.active_adapters:
                if name in module.modules_to_save:
                    module.modules_to_save[name].requires_grad_(True)
    modes = {state.configs[a].bias for a in state.active}
    if "all" in modes:
        for name, p in model.named_parameters():
            if name.endswith("bias") and ".lora_" not in name:
                p.requires_grad_(True)
    elif "lora_only" in modes:
        for _, module in lora_layers(model):
            bias = getattr(module.base_layer, "bias", None)
            if bias is not None and any(state.configs[a].bias == "lora_only" for a in module.active_adapters):
                bias.requires_grad_(True)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)
