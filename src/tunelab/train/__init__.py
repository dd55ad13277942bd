"""LoRA fine-tuning: data with completion-only loss, a resumable loop, chunked cross-entropy."""

from tunelab.train.config import TrainError, TuneConfig
from tunelab.train.trainer import TuneResult, tune

__all__ = ["TrainError", "TuneConfig", "TuneResult", "tune"]
