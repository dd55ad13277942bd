"""What each `tunelab bench` measures tunelab against, and what to say when that is not installed.

transformers and peft are references, never runtime dependencies: a plain install lacks them and the `bench` extra
(`pip install 'tunelab[bench]'`) brings them. The CLI checks before a benchmark starts; a benchmark called from
Python raises its own package's error with the same message (`install_hint`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

BENCH_ORACLES = {"generate": ("transformers",), "lora": ("transformers", "peft"), "train": ("transformers", "peft")}


def missing_oracles(command: str | None) -> list[str]:
    """The references `tunelab bench <command>` runs that are not installed."""
    return [m for m in BENCH_ORACLES.get(command, ()) if importlib.util.find_spec(m) is None]


def install_hint(command: str, missing: Sequence[str]) -> str:
    which = "which is" if len(missing) == 1 else "which are"
    return (f"tunelab bench {command} measures tunelab against {' and '.join(missing)}, {which} not installed: "
            "pip install 'tunelab[bench]'")
