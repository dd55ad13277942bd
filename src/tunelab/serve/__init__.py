"""An OpenAI-compatible HTTP server over tunelab.engine (FastAPI + uvicorn)."""

from tunelab._lazy import lazy_exports

_EXPORTS = {
    "create_app": "app",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
