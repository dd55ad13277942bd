"""The `tunelab` command, run as a user runs it (a subprocess)."""

import subprocess
import sys

import pytest

from tunelab import __version__


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help():
    assert _run("--version").stdout.strip() == f"tunelab {__version__}"
    out = _run("--help")
    assert out.returncode == 0 and "generate" in out.stdout and "info" in out.stdout


def test_generate_prints_the_greedy_completion(tiny_checkpoint):
    from tunelab.models import generate, load_pretrained

    path = tiny_checkpoint("llama")
    model, tok = load_pretrained(path)
    expected = generate(model, tok, "The quick", max_new_tokens=8).text
    out = _run("generate", "--model", str(path), "--prompt", "The quick", "--max-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(expected)


def test_info(tiny_checkpoint):
    from tunelab.models import load_pretrained

    path = tiny_checkpoint("gpt2")
    model, _ = load_pretrained(path)
    out = _run("info", str(path))
    assert out.returncode == 0, out.stderr
    assert "gpt2" in out.stdout and f"{model.num_parameters():,}" in out.stdout


def test_bad_model_path_exits_2_with_a_message(tmp_path):
    out = _run("generate", "--model", str(tmp_path), "--prompt", "x")
    assert out.returncode == 2 and "no config.json" in out.stdout + out.stderr


def test_generate_with_a_missing_adapter_is_a_clear_error(tiny_checkpoint, tmp_path):
    out = _run("generate", "--model", str(tiny_checkpoint("llama")), "--prompt", "x", "--adapter", str(tmp_path))
    assert out.returncode == 2 and "adapter_config.json" in out.stdout and "Traceback" not in out.stderr


def test_cli_start_up_imports_neither_torch_nor_fastapi():
    code = "import sys, tunelab.cli; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_lazy_export_resolves_to_its_object():
    import importlib
    import types

    for package in ("tunelab.models", "tunelab.lora", "tunelab.train", "tunelab.engine", "tunelab.serve"):
        module = importlib.import_module(package)
        for name in module.__all__:
            # A submodule of the same name must never shadow the function (lora.inject, models.generate).
            assert not isinstance(getattr(module, name), types.ModuleType), (package, name)


def test_bench_without_its_oracles_says_what_to_install(monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from tunelab.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    result = CliRunner().invoke(app, ["bench", "lora", "--help"])
    assert result.exit_code == 2
    assert "peft" in result.output and "pip install 'tunelab[bench]'" in result.output
    # transformers is there, so the generate bench goes ahead (here: to its help).
    assert CliRunner().invoke(app, ["bench", "generate", "--help"]).exit_code == 0


def test_bench_says_what_to_install_in_one_wording_from_the_cli_and_from_python(monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.engine.bench import run_generate_bench
    from tunelab.engine.errors import EngineError
    from tunelab.oracles import install_hint

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed: find_spec None, import fails
    hint = install_hint("generate", ["transformers"])
    assert hint == ("tunelab bench generate measures tunelab against transformers, which is not installed: "
                    "pip install 'tunelab[bench]'")
    result = CliRunner().invoke(app, ["bench", "generate", "--requests", "1"])
    assert result.exit_code == 2 and hint in result.output
    with pytest.raises(EngineError) as info:
        run_generate_bench(requests=1, log=lambda *_: None)
    assert str(info.value) == hint
    assert install_hint("lora", ["transformers", "peft"]).startswith(
        "tunelab bench lora measures tunelab against transformers and peft, which are not installed")
