"""`LoraConfig`: what an adapter is, and how it round-trips to PEFT's `adapter_config.json`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tunelab.lora.errors import LoraError

BIAS_MODES = ("none", "all", "lora_only")
INITS = ("kaiming", "gaussian", "pissa")
ALL_LINEAR = "all-linear"


@dataclass
class LoraConfig:
    """One adapter's hyper-parameters.

    `target_modules` is a list of module names or dotted suffixes (`"q_proj"`, `"self_attn.q_proj"`), a regex string
    that must match the whole module name (as PEFT does), or `"all-linear"` (every linear layer except the output
    head). Names are the Hugging Face checkpoint names when the model can tell them (tunelab's own models), so the
    same config works on a transformers model and on tunelab's.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    bias: str = "none"
    use_rslora: bool = False
    init: str = "kaiming"
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise LoraError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise LoraError(f"LoraConfig.alpha must be a positive number, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise LoraError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.bias not in BIAS_MODES:
            raise LoraError(f"LoraConfig.bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if self.init not in INITS:
            raise LoraError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}")
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)
        if not self.target_modules:
            raise LoraError("LoraConfig.target_modules is empty: give module names, a regex, or 'all-linear'")
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR and self.layers_to_transform:
            # PEFT refuses this combination, and we want every config we save to load there.
            raise LoraError("LoraConfig.layers_to_transform cannot be combined with a regex target_modules; "
                            "put the layer numbers into the regex instead")
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]

    @property
    def scaling(self) -> float:
        # rsLoRA (Kalajdzievski 2023): alpha/sqrt(r) keeps the update's scale stable as r grows.
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LoraError(f"LoraConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    # --- PEFT's adapter_config.json -------------------------------------------------------------------------
    def to_peft(self, fan_in_fan_out: bool = False) -> dict[str, Any]:
        """PEFT's LoraConfig fields (the ones a LoRA adapter uses; PEFT fills the rest with defaults)."""
        init = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa"}[self.init]
        targets = self.target_modules
        return {
            "alpha_pattern": {},
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": self.bias,
            "exclude_modules": self.exclude_modules,
            "fan_in_fan_out": fan_in_fan_out,
            "inference_mode": True,
            "init_lora_weights": init,
            "layers_pattern": None,
            "layers_to_transform": self.layers_to_transform,
            "lora_alpha": self.alpha,
            "lora_bias": False,
            "lora_dropout": self.dropout,
            "modules_to_save": self.modules_to_save,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": None,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": False,
            "use_rslora": self.use_rslora,
        }

    @classmethod
    def from_peft(cls, data: dict[str, Any], source: str = "adapter_config.json") -> LoraConfig:
        """Read PEFT's config; refuse the features we do not implement instead of silently loading them wrong."""
        if data.get("peft_type", "LORA") != "LORA":
            raise LoraError(f"{source}: peft_type is {data.get('peft_type')!r}; only 'LORA' adapters are supported")
        unsupported = {
            "use_dora": False, "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}, "layers_pattern": None,
            "layer_replication": None, "trainable_token_indices": None, "target_parameters": None,
        }
        for key, default in unsupported.items():
            value = data.get(key, default)
            if value not in (default, None, {}, [], False):
                raise LoraError(f"{source}: field {key!r} = {value!r} is not supported by tunelab.lora")
        init_value = data.get("init_lora_weights", True)
        if init_value is True:
            init = "kaiming"
        elif init_value in ("gaussian", "pissa"):
            init = init_value
        elif init_value is False:
            init = "kaiming"  # only affects fresh weights; the file overwrites them
        else:
            raise LoraError(f"{source}: init_lora_weights = {init_value!r} is not supported "
                            f"(expected true, 'gaussian' or 'pissa')")
        targets = data.get("target_modules")
        if targets is None:
            raise LoraError(f"{source}: target_modules is missing")
        try:
            return cls(
                r=int(data.get("r", 8)), alpha=data.get("lora_alpha", 8), dropout=float(data.get("lora_dropout", 0.0)),
                target_modules=targets if isinstance(targets, str) else sorted(targets),
                exclude_modules=data.get("exclude_modules"), layers_to_transform=data.get("layers_to_transform"),
                bias=data.get("bias", "none"), use_rslora=bool(data.get("use_rslora", False)), init=init,
                modules_to_save=data.get("modules_to_save"),
                base_model_name_or_path=data.get("base_model_name_or_path"),
            )
        except LoraError as exc:
            raise LoraError(f"{source}: {exc}") from None
