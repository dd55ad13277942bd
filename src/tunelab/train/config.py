"""TuneConfig: every knob of `tunelab tune`, read from YAML and overridden by flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                   "c_attn", "c_proj", "c_fc"]  # fmt: skip


class TrainError(ValueError):
    """A training run that cannot start or continue, with what to fix."""


@dataclass
class TuneConfig:
    model: str = ""
    data: str = ""
    out: str = "tune-out"
    val: str | None = None
    val_fraction: float = 0.0
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024
    overflow: str = "truncate"  # truncate | drop rows longer than max_seq_len
    packing: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    seed: int = 0
    save_every: int = 0
    eval_every: int = 0
    resume: bool = False
    stop_after: int | None = None  # stop early, keeping the schedule of `steps` (time-boxed jobs)
    gradient_checkpointing: bool = False
    dtype: str | None = None  # weights dtype; compute is fp32 on CPU, bf16 autocast on GPU
    device: str | None = None
    loss_chunk: int | None = None  # target tokens per cross-entropy slice (default: ~32 MiB of logits)
    log_every: int = 1

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise TrainError(f"schedule: expected cosine, linear or constant, got {self.schedule!r}")
        if self.overflow not in ("truncate", "drop"):
            raise TrainError(f"overflow: expected truncate or drop, got {self.overflow!r}")
        for name in ("batch_size", "grad_accum", "rank", "max_seq_len"):
            if int(getattr(self, name)) < 1:
                raise TrainError(f"{name}: must be at least 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainError(f"val_fraction: must be in [0, 1), got {self.val_fraction!r}")
        if self.steps is not None and self.steps < 1:
            raise TrainError(f"steps: must be at least 1, got {self.steps!r}")
        if isinstance(self.targets, str) and "," in self.targets:
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "TuneConfig":
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            try:
                raw = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark else ""
                raise TrainError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
            if not isinstance(raw, dict):
                raise TrainError(f"{path}: expected a mapping of settings at the top level")
            raw = {k.replace("-", "_"): v for k, v in raw.items()}
            # Paths written in the YAML file are relative to it (flags stay relative to the
            # working directory); a model that does not exist there may be a hub id.
            for key in ("data", "val", "out"):
                if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
                    raw[key] = str(path.parent / raw[key])
            if isinstance(raw.get("model"), str) and (path.parent / raw["model"]).exists():
                raw["model"] = str(path.parent / raw["model"])
            values.update(raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainError(f"{path or 'flags'}: unknown setting(s) {unknown}; known: {sorted(known)}")
        try:
            config = cls(**values)
        except TypeError as e:
            raise TrainError(f"{path or 'flags'}: {e}") from None
        for required in ("model", "data"):
            if not getattr(config, required):
                raise TrainError(f"{required}: required (in the YAML file or as --{required})")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
