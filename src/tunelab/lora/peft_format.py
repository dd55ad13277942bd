"""PEFT's adapter files, both directions: `adapter_config.json` + `adapter_model.safetensors`.

Keys are `base_model.model.<checkpoint module path>.<param>` with the adapter name removed, exactly as
`PeftModel.save_pretrained` writes them: `.lora_A.weight` / `.lora_B.weight` for linear layers (A [r, in], B [out, r],
also for GPT-2's transposed Conv1D), `.lora_embedding_A` [r, vocab] / `.lora_embedding_B` [dim, r] for embeddings,
`<module>.<param>` for a `modules_to_save` copy, and `.base_layer.bias` / `.bias` for trained biases. Module paths are
the Hugging Face checkpoint's even when the model is tunelab's own (via `model.checkpoint_name`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.lora.config import ALL_LINEAR, LoraConfig
from tunelab.lora.errors import LoraError
from tunelab.lora.injection import _STATE_ATTR, adapter_state, add, delete, lora_layers, set_active
from tunelab.lora.layers import LoraEmbedding, ModulesToSave, LoraLayer, is_lora_target_type
from tunelab.lora.targets import _inside_wrapper, checkpoint_name, layer_index, matches

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def save_adapter(model: nn.Module, directory: str | Path, adapter_name: str = "default",
                 convert_pissa: bool = False) -> Path:
    """Write adapter `adapter_name` as a PEFT LoRA adapter that `PeftModel.from_pretrained` loads. Returns the dir.

    A PiSSA adapter is saved as PEFT saves it (loading re-derives the residual base from the original weights).
    With `convert_pissa=True` it is written instead as a plain rank-2r LoRA whose delta is the change from the
    original W0 (PEFT's `path_initial_model_for_weight_conversion`), usable on the original base like any adapter
    and combinable with other adapters."""
    state = adapter_state(model)
    if adapter_name not in state.configs:
        raise LoraError(f"unknown adapter {adapter_name!r}; this model has {list(state.configs)}")
    config = state.configs[adapter_name]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _adapter_tensors(model, adapter_name, config)
    if convert_pissa:
        if config.init != "pissa":
            raise LoraError(f"convert_pissa=True: adapter {adapter_name!r} was initialised with {config.init!r}, "
                            "not 'pissa'; save it without convert_pissa")
        tensors, config = _pissa_as_lora(model, adapter_name, config, tensors)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE),
              metadata={"format": "pt"})
    peft = config.to_peft(fan_in_fan_out=_checkpoint_uses_conv1d(model, adapter_name))
    peft.update(_peft_selection(model, adapter_name, config))
    if peft["base_model_name_or_path"] is None:
        peft["base_model_name_or_path"] = _model_name(model)
    (directory / CONFIG_FILE).write_text(json.dumps(peft, indent=2, sort_keys=True) + "\n")
    return directory


def load_adapter(model: nn.Module, directory: str | Path, adapter_name: str = "default",
                 activate: bool = True) -> nn.Module:
    """Add the PEFT LoRA adapter saved in `directory` to `model` under `adapter_name` (and make it active unless
    `activate=False`). Every tensor in the file must land on a module of the model with the same shape."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise LoraError(f"{path} not found: a PEFT adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}"
                            + (" (adapter_model.bin is not read: weights are only loaded from safetensors)"
                               if path == weights_path and (directory / "adapter_model.bin").exists() else ""))
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise LoraError(f"{config_path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    config = LoraConfig.from_peft(raw, source=str(config_path))
    tensors = load_file(str(weights_path))
    existed = hasattr(model, _STATE_ATTR) and adapter_name in adapter_state(model).configs
    if existed:
        raise LoraError(f"adapter {adapter_name!r} already exists; pass another adapter_name")
    add(model, config, adapter_name)
    try:
        _copy_into(model, adapter_name, tensors, weights_path)
    except Exception:
        delete(model, adapter_name)
        raise
    if activate:
        set_active(model, adapter_name)
    return model


# --- saving -----------------------------------------------------------------------------------------------------

def _adapter_tensors(model: nn.Module, adapter_name: str, config: LoraConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    wrapped: set[str] = set()
    for path, layer in lora_layers(model):
        wrapped.add(path)
        if adapter_name not in layer.adapters:
            continue
        key = PREFIX + checkpoint_name(model, path)
        a, b = layer.factors(adapter_name)
        if isinstance(layer, LoraEmbedding):
            out[f"{key}.lora_embedding_A"], out[f"{key}.lora_embedding_B"] = a, b
        else:
            out[f"{key}.lora_A.weight"], out[f"{key}.lora_B.weight"] = a, b
        bias = getattr(layer.base_layer, "bias", None)
        if config.bias in ("all", "lora_only") and bias is not None:
            out[f"{key}.base_layer.bias"] = bias
    for path, module in model.named_modules():
        if isinstance(module, ModulesToSave) and adapter_name in module.modules_to_save:
            key = PREFIX + checkpoint_name(model, path)
            for name, tensor in module.modules_to_save[adapter_name].state_dict().items():
                out[f"{key}.{name}"] = tensor
    if config.bias == "all":
        for path, module in model.named_modules():
            if _inside_wrapper(path, model) or isinstance(module, (LoraLayer, ModulesToSave)) or path in wrapped:
                continue
            bias = module._parameters.get("bias")
            if bias is not None:
                out[f"{PREFIX}{checkpoint_name(model, path) + '.' if path else ''}bias"] = bias
    return out


def _pissa_as_lora(model, adapter_name, config, tensors):
    """s*(B A - B0 A0) = s*[B, -B0] @ [A; A0]: a rank-2r adapter on the original W0 with the same scaling."""
    for path, layer in lora_layers(model):
        if adapter_name not in layer.adapters:
            continue
        a0, b0 = layer.pissa_init[adapter_name]
        key = PREFIX + checkpoint_name(model, path)
        a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
        tensors[f"{key}.lora_A.weight"] = torch.cat([a.detach(), a0.to(a.dtype)], dim=0)
        tensors[f"{key}.lora_B.weight"] = torch.cat([b.detach(), -b0.to(b.dtype)], dim=1)
    r = 2 * config.r
    alpha = config.scaling * (r ** 0.5 if config.use_rslora else r)
    return tensors, dataclasses.replace(config, r=r, alpha=alpha, init="kaiming")


def _peft_selection(model: nn.Module, adapter_name: str, config: LoraConfig) -> dict:
    """target_modules / exclude_modules / layers_to_transform that make PEFT wrap exactly the layers we wrapped.

    PEFT only sees checkpoint names, so the user's spelling (maybe tunelab's canonical names) is re-checked against
    them: the original fields if they still select the same set, else the wrapped layers' leaf names (PEFT expands
    "all-linear" the same way), else a regex of the exact names."""
    wanted = {checkpoint_name(model, p) for p, layer in lora_layers(model) if adapter_name in layer.adapters}
    candidates = [checkpoint_name(model, p) for p, m in model.named_modules()
                  if p and not _inside_wrapper(p, model) and (isinstance(m, LoraLayer) or is_lora_target_type(m))]
    options = []
    if isinstance(config.target_modules, str) and config.target_modules != ALL_LINEAR:
        options.append((config.target_modules, config.exclude_modules, None))
    options.append((sorted({n.rsplit(".", 1)[-1] for n in wanted}), config.exclude_modules, config.layers_to_transform))
    for targets, exclude, layers in options:
        chosen = {n for n in candidates if matches(targets, n) and not (exclude and matches(exclude, n))
                  and (layers is None or layer_index(n) in layers)}
        if chosen == wanted:
            return {"target_modules": targets, "exclude_modules": exclude, "layers_to_transform": layers}
    exact = "|".join(re.escape(n) for n in sorted(wanted))  # PEFT full-matches a string target
    return {"target_modules": exact, "exclude_modules": None, "layers_to_transform": None}


def _checkpoint_uses_conv1d(model: nn.Module, adapter_name: str) -> bool:
    """fan_in_fan_out: True when the checkpoint stores the targeted weights as GPT-2 Conv1D ([in, out])."""
    for _, layer in lora_layers(model):
        if adapter_name in layer.adapters and getattr(layer, "fan_in_fan_out", False):
            return True
    # A model that renames its modules may also load [in, out] checkpoint weights into nn.Linear (tunelab's GPT-2
    # transposes Conv1D at load time); it says so through this hook, and the checkpoint (and PEFT) still see Conv1D.
    hook = getattr(model, "checkpoint_fan_in_fan_out", None)
    return callable(hook) and hook() and any(
        not isinstance(layer, LoraEmbedding) for _, layer in lora_layers(model) if adapter_name in layer.adapters)


def _model_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    for attr in ("name_or_path", "_name_or_path"):
        value = getattr(cfg, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


# --- loading ----------------------------------------------------------------------------------------------------

_LORA_SUFFIXES = {".lora_A.weight": 0, ".lora_B.weight": 1, ".lora_embedding_A": 0, ".lora_embedding_B": 1}


def _copy_into(model: nn.Module, adapter_name: str, tensors: dict[str, torch.Tensor], source: Path) -> None:
    modules = {}
    for path, module in model.named_modules():
        if not _inside_wrapper(path, model):
            modules[checkpoint_name(model, path) if path else ""] = (path, module)
    filled: set[tuple[str, int]] = set()
    planned: list[tuple[torch.Tensor, torch.Tensor]] = []
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise LoraError(f"{source}: key {key!r} does not start with {PREFIX!r} (not a PEFT LoRA adapter file)")
        name = key[len(PREFIX):]
        target, where = _resolve(model, modules, name, adapter_name, source, key)
        if where is not None:
            filled.add(where)
        if tuple(target.shape) != tuple(value.shape):
            raise LoraError(f"{source}: tensor {key!r} has shape {tuple(value.shape)} but the model's "
                            f"parameter has shape {tuple(target.shape)}")
        planned.append((target, value))
    missing = []
    for path, layer in lora_layers(model):
        if adapter_name in layer.adapters:
            ck = checkpoint_name(model, path)
            names = (".lora_embedding_A", ".lora_embedding_B") if isinstance(layer, LoraEmbedding) else (
                ".lora_A.weight", ".lora_B.weight")
            missing += [PREFIX + ck + n for i, n in enumerate(names) if (path, i) not in filled]
    if missing:
        raise LoraError(f"{source}: adapter_config.json targets layers whose weights are missing from the file: "
                        f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
    # Copy only once every key is known to fit: a bad file must not leave base biases half overwritten.
    with torch.no_grad():
        for target, value in planned:
            target.copy_(value.to(dtype=target.dtype, device=target.device))


def _resolve(model, modules, name, adapter_name, source, key):
    """The tensor of `model` that file entry `name` (key without the prefix) belongs to, and which LoRA factor."""
    for suffix, which in _LORA_SUFFIXES.items():
        if name.endswith(suffix):
            path, module = modules.get(name[: -len(suffix)], (None, None))
            if not isinstance(module, LoraLayer) or adapter_name not in module.adapters:
                raise LoraError(f"{source}: key {key!r} names module {name[: -len(suffix)]!r}, which is not a LoRA "
                                f"target in this model (check target_modules in adapter_config.json and the base model)")
            if ("embedding" in suffix) != isinstance(module, LoraEmbedding):
                raise LoraError(f"{source}: key {key!r} is for a {'n embedding' if 'embedding' in suffix else ' linear'}"
                                f" layer but {name[: -len(suffix)]!r} is a {type(module.base_layer).__name__}")
            return module.factors(adapter_name)[which], (path, which)
    # Base-layer weights PEFT saves next to a targeted embedding, or biases trained with bias="all"/"lora_only".
    owner, _, param = name.rpartition(".")
    if owner.endswith(".base_layer") or owner == "base_layer":
        path, module = modules.get(owner[: -len(".base_layer")] if owner != "base_layer" else "", (None, None))
        if isinstance(module, LoraLayer) and param in module.base_layer._parameters:
            return module.base_layer._parameters[param], None
    # A modules_to_save copy: "<module>.<param path inside it>"; find the longest module prefix.
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path, module = modules.get(".".join(parts[:cut]), (None, None))
        if module is None:
            continue
        rest = ".".join(parts[cut:])
        if isinstance(module, ModulesToSave):
            if adapter_name in module.modules_to_save:
                sub = dict(module.modules_to_save[adapter_name].state_dict(keep_vars=True))
                if rest in sub:
                    return sub[rest], None
            break
        if rest == "bias" and module._parameters.get("bias") is not None:
            return module._parameters["bias"], None
        break
    raise LoraError(f"{source}: key {key!r} matches no LoRA layer, modules_to_save module or bias of "
                    f"{type(model).__name__}")
