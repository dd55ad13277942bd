"""An OpenAI-compatible HTTP server over tunelab.engine (FastAPI + uvicorn)."""

from tunelab.serve.app import create_app

__all__ = ["create_app"]
