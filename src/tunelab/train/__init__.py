"""LoRA fine-tuning: data with completion-only loss, a resumable loop, chunked cross-entropy."""

from tunelab._lazy import lazy_exports

_EXPORTS = {
    "TrainError": "config",
    "TuneConfig": "config",
    "TuneResult": "trainer",
    "tune": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
