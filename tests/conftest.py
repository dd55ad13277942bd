"""Shared fixtures: tiny random checkpoints written in Hugging Face layout.

Every model test builds its own checkpoint with transformers' config classes (the
oracle), saves it to a temporary directory and goes through tunelab's real loading
code. Nothing is fetched from a hub.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels (engine/gpu_kernels.py) run in Triton's interpreter: set before triton is imported.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Converted GGUF weights go to a per-session cache, never the user's ~/.cache.
os.environ["TUNELAB_CACHE"] = tempfile.mkdtemp(prefix="tunelab-test-cache-")

from tiny_models import FAMILIES, make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(family)` -> path of a saved tiny checkpoint (cached per session)."""
    made = {}

    def build(family: str = "llama"):
        if family not in made:
            made[family] = make_checkpoint(family, tmp_path_factory.mktemp(f"ckpt-{family}"))
        return made[family]

    return build


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param
