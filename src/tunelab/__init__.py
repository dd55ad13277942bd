"""tunelab: make an LLM application good and cheap, and prove it."""

__version__ = "0.1.0"
