"""Which modules get an adapter: matching `target_modules` / `exclude_modules` / `layers_to_transform` against names.

Names are the model's *checkpoint* names when it can tell them (`model.checkpoint_name(path)`, tunelab's own models),
so `["c_attn"]` finds tunelab GPT-2's fused `layers.0.self_attn.qkv_proj` and saved adapters use the Hugging Face
module paths PEFT expects. A module also matches on its own path, so tunelab's canonical names work too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from tunelab.lora.config import ALL_LINEAR, LoraConfig
from tunelab.lora.errors import LoraError
from tunelab.lora.layers import ModulesToSave, LoraLayer, is_conv1d, is_lora_target_type

# PEFT's layer-index rule: the number after the last "<name>." segment that is followed by more path.
_LAYER_INDEX = re.compile(r".*\.[^.]*\.(\d+)\.")


def checkpoint_name(model: nn.Module, path: str) -> str:
    """The module's name in the Hugging Face checkpoint (identity for models that do not remap names)."""
    fn = getattr(model, "checkpoint_name", None)
    if fn is None or not callable(fn):
        return path
    try:
        return fn(path)
    except (KeyError, ValueError, IndexError):
        return path


def find_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Module paths (as in `model.named_modules()`) to wrap with LoRA, in model order."""
    head = _output_head_paths(model) if config.target_modules == ALL_LINEAR else set()
    found = []
    for path, module in model.named_modules():
        if not path or isinstance(module, ModulesToSave) or _inside_wrapper(path, model):
            continue
        if isinstance(module, LoraLayer):
            base = module.base_layer
        elif is_lora_target_type(module):
            base = module
        else:
            continue
        names = _names(model, path)
        if config.target_modules == ALL_LINEAR:
            hit = (isinstance(base, nn.Linear) or is_conv1d(base)) and path not in head
        else:
            hit = any(matches(config.target_modules, n) for n in names)
        if not hit:
            continue
        if config.exclude_modules and any(matches(config.exclude_modules, n) for n in names):
            continue
        if config.layers_to_transform is not None:
            index = layer_index(names[0])
            if index is None or index not in config.layers_to_transform:
                continue
        found.append(path)
    if not found:
        raise LoraError(_nothing_matched(model, config))
    return found


def find_modules_to_save(model: nn.Module, names: Iterable[str]) -> list[str]:
    wanted = list(names)
    found = []
    for path, module in model.named_modules():
        if not path or _inside_wrapper(path, model) or isinstance(module, LoraLayer):
            continue
        if any(matches(wanted, n) for n in _names(model, path)):
            found.append(path)
    missing = [w for w in wanted if not any(any(matches([w], n) for n in _names(model, p)) for p in found)]
    if missing:
        raise LoraError(f"modules_to_save {missing} match no module of {type(model).__name__}")
    return found


def matches(pattern: list[str] | str, name: str) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list entry matches the name itself or a
    dotted suffix of it."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.match(name)
    return int(m.group(1)) if m else None


def linear_layer_names(model: nn.Module) -> list[str]:
    out = []
    for path, module in model.named_modules():
        if path and (isinstance(module, (nn.Linear, nn.Embedding)) or is_conv1d(module)) and not _inside_wrapper(path, model):
            name = checkpoint_name(model, path)
            kind = "Embedding" if isinstance(module, nn.Embedding) else "Linear"
            out.append(f"{name} ({kind})" if name == path else f"{name} = {path} ({kind})")
    return out


def _names(model: nn.Module, path: str) -> list[str]:
    ckpt = checkpoint_name(model, path)
    return [ckpt] if ckpt == path else [ckpt, path]


def _inside_wrapper(path: str, model: nn.Module) -> bool:
    # Parts of an existing LoRA wrapper (base_layer, lora_A.x, ...) are never targets themselves.
    return any(p in _WRAPPER_PARTS for p in path.split("."))


_WRAPPER_PARTS = frozenset({"base_layer", "lora_A", "lora_B", "lora_dropout", "original_module", "modules_to_save"})


def _output_head_paths(model: nn.Module) -> set[str]:
    """The output head that 'all-linear' leaves alone: `lm_head`, or whatever `get_output_embeddings()` returns."""
    heads = {p for p, _ in model.named_modules() if p.split(".")[-1] == "lm_head"}
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            out = getter()
        except (AttributeError, NotImplementedError):
            out = None
        if out is not None:
            heads |= {p for p, m in model.named_modules() if m is out}
    return heads


def _nothing_matched(model: nn.Module, config: LoraConfig) -> str:
    listing = linear_layer_names(model)
    shown = "\n  ".join(listing[:60]) + (f"\n  ... and {len(listing) - 60} more" if len(listing) > 60 else "")
    extra = []
    if config.exclude_modules:
        extra.append(f"exclude_modules={config.exclude_modules!r}")
    if config.layers_to_transform is not None:
        extra.append(f"layers_to_transform={config.layers_to_transform!r}")
    filters = f" (after {', '.join(extra)})" if extra else ""
    return (f"target_modules={config.target_modules!r} matched no linear/embedding layer of "
            f"{type(model).__name__}{filters}. Its linear and embedding layers are:\n  {shown}")
