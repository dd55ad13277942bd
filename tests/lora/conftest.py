"""Fixtures for the LoRA tests; the model builders live in lora_models.py."""

import pytest
import torch
from lora_models import tiny_gpt2, tiny_llama


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def ids():
    return torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(7))
