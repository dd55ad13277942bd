"""Folding adapters into the base weights (W0 + scaling * B @ A) and back out, and unwrapping a merged model.

The delta is always computed and added in float32; a bf16/fp16 target then rounds once, with a warning, instead of
accumulating rounding error in the low-precision dtype (the bf16 merge drift PEFT users report).
"""

from __future__ import annotations

import warnings

from torch import nn

from tunelab.lora.errors import LoraError
from tunelab.lora.injection import _STATE_ATTR, _replace, adapter_state, lora_layers
from tunelab.lora.layers import ModulesToSave


def merge(model: nn.Module, adapter_name: str | list[str] | None = None) -> None:
    """Add the adapter(s) (default: the active ones) into the base weights; merged adapters no longer cost a matmul."""
    names = _names(model, adapter_name)
    for path, layer in lora_layers(model):
        if any(n in layer.adapters and n not in layer.merged_adapters for n in names):
            _untie(model, path, layer)
        for name in names:
            if name in layer.adapters:
                layer.merge(name)


def unmerge(model: nn.Module, adapter_name: str | list[str] | None = None) -> None:
    """Subtract merged adapter(s) (default: all merged ones) from the base weights again."""
    for _, layer in lora_layers(model):
        names = list(reversed(layer.merged_adapters)) if adapter_name is None else _names(model, adapter_name)
        for name in names:
            layer.unmerge(name)


def merge_and_unload(model: nn.Module, adapter_name: str | list[str] | None = None) -> nn.Module:
    """Merge the adapter(s) (default: the active ones) and put the plain base layers back: the result is an ordinary
    model with no trace of LoRA (active `modules_to_save` copies replace their originals). Returns `model`."""
    names = _names(model, adapter_name)
    merge(model, names)
    for path, module in list(model.named_modules()):
        if isinstance(module, ModulesToSave):
            chosen = next((module.modules_to_save[n] for n in names if n in module.modules_to_save), None)
            _replace(model, path, chosen if chosen is not None else module.original_module)
    for path, layer in list(lora_layers(model)):
        _replace(model, path, layer.base_layer)
    delattr(model, _STATE_ATTR)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _untie(model: nn.Module, path: str, layer) -> None:
    """A tied weight (GPT-2's wte is also lm_head) must not carry the embedding's delta into the output head, which
    never saw the adapter: give the adapted layer its own copy first."""
    weight = layer.base_layer.weight
    users = [p for p, m in model.named_modules(remove_duplicate=False)
             if any(t is weight for t in m._parameters.values())]
    if len(users) > 1:
        warnings.warn(f"merging into {path}: its weight is tied to {[u for u in users if u != path + '.base_layer']}; "
                      "the merged layer gets its own copy so the other module keeps W0 (the weights are now untied)",
                      stacklevel=3)
        layer.base_layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)


def _names(model: nn.Module, adapter_name: str | list[str] | None) -> list[str]:
    state = adapter_state(model)
    names = state.active if adapter_name is None else ([adapter_name] if isinstance(adapter_name, str) else list(adapter_name))
    unknown = [n for n in names if n not in state.configs]
    if unknown:
        raise LoraError(f"unknown adapter(s) {unknown}; this model has {list(state.configs)}")
    return list(names)
