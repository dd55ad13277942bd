"""`tunelab build`: weights converted once (dtype, merged adapter), a manifest, loaded with no conversion, and a clear
error on another kind of device. The merged build generates what PEFT generates with the adapter applied."""

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.engine import LLM, SamplingParams
from tunelab.engine.build import MANIFEST
from tunelab.engine.errors import EngineError

from test_engine_adapters import make_peft_adapter, peft_greedy  # noqa: I001


def test_build_merges_adapter_converts_dtype_and_writes_manifest(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama")
    ref = make_peft_adapter(base, tmp_path / "alpha", 1, ["q_proj", "v_proj"])
    out = tmp_path / "built"
    result = CliRunner().invoke(app, ["build", str(base), "--adapter", f"alpha={tmp_path / 'alpha'}", "--merge",
                                      "--dtype", "float32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["device_kind"] == "cpu" and manifest["dtype"] == "float32"
    assert len(manifest["source_sha256"]) == 64 and manifest["merged_adapters"] == {"alpha": str(tmp_path / "alpha")}
    llm = LLM(out)
    ids = llm.tokenizer.encode("The quick brown fox")
    assert llm.generate([ids], SamplingParams(max_tokens=10))[0].token_ids == peft_greedy(ref, ids, 10)


def test_16_bit_build_is_stored_in_its_dtype(tiny_checkpoint, tmp_path):
    out = tmp_path / "fp16"
    result = CliRunner().invoke(app, ["build", str(tiny_checkpoint("llama")), "--dtype", "float16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    llm = LLM(out)
    assert next(llm.model.parameters()).dtype == torch.float16


def test_build_for_another_device_kind_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "gpu-build"
    assert CliRunner().invoke(app, ["build", str(tiny_checkpoint("llama")), "-o", str(out)]).exit_code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "device_kind": "cuda-sm90"}))
    with pytest.raises(EngineError, match="built for cuda-sm90, but this device is cpu"):
        LLM(out)


@pytest.mark.parametrize("command", ["build", "serve"])
def test_adapter_flags_are_read_one_way_by_build_and_serve(tmp_path, command):
    """Both commands take `--adapter name=DIR` through one reader: a malformed or repeated flag is refused, naming it,
    before any model is read (the model path here does not exist)."""
    extra = ["-o", str(tmp_path / "out")] if command == "build" else []
    for flags, words in ((["oops"], "'oops': expected name=DIR"), (["=d"], "'=d': expected name=DIR"),
                         (["a=x", "a=y"], "'a' is given twice")):
        args = [command, str(tmp_path / "missing"), *extra]
        for flag in flags:
            args += ["--adapter", flag]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and words in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "out").exists()


def test_default_dtype_is_the_fastest_16_bit_type_for_the_device():
    from tunelab.engine.build import default_dtype
    from tunelab.engine.cpu_kernels import has_avx512_bf16

    # measured: float16 decodes one sequence fastest on AVX2 CPUs, bfloat16 on AVX512-BF16 ones
    assert default_dtype(None, "cpu") == ("bfloat16" if has_avx512_bf16() else "float16")
    assert default_dtype(None, "cuda") == "bfloat16"
    assert default_dtype({"mode": "int4"}, "cpu") == "bfloat16"
