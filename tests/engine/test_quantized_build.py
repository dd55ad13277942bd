"""`tunelab build --quant int8|int4`: integers and scales on disk, the options in the manifest, loaded by `LLM` with
no float conversion, a merged adapter quantised with the base, and clear errors for what is not supported."""

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.engine import LLM, SamplingParams
from tunelab.engine.build import MANIFEST
from tunelab.engine.errors import EngineError
from tunelab.lora.errors import LoraError
from tunelab.models import load_pretrained
from tunelab.models.config import ModelError
from tunelab.models.quantize import Int4Linear, Int8Linear, QuantConfig, quantize

from test_engine_adapters import make_peft_adapter  # noqa: I001


def cli_build(*args):
    result = CliRunner().invoke(app, ["build", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def builds(tiny_checkpoint, tmp_path_factory):
    base = tiny_checkpoint("llama")
    root = tmp_path_factory.mktemp("quant-builds")
    cli_build(base, "--quant", "int8", "-o", root / "int8")
    cli_build(base, "--quant", "int4", "--group-size", "32", "-o", root / "int4")
    return base, root


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_build_stores_integers_records_options_and_loads_them_as_stored(builds, mode):
    base, root = builds
    out = root / mode
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["quant"] == {"mode": mode, "group_size": 32 if mode == "int4" else None}
    assert manifest["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    qkv = stored["model.layers.0.self_attn.qkv_proj.qweight"]
    assert qkv.dtype == (torch.int8 if mode == "int8" else torch.uint8)
    assert not any(k.endswith("q_proj.weight") or k.endswith("down_proj.weight") for k in stored)
    # Loading is an assignment: the engine's tensors are the stored ones, equal to quantising in memory.
    llm = LLM(out, max_num_seqs=4)
    expected, _ = load_pretrained(base, dtype="float32")
    quantize(expected, QuantConfig(mode, 32 if mode == "int4" else None), torch.bfloat16)
    module = llm.model.layers[1].mlp.down_proj
    assert isinstance(module, Int8Linear if mode == "int8" else Int4Linear)
    assert torch.equal(module.qweight, expected.layers[1].mlp.down_proj.qweight)
    assert torch.equal(module.scales, expected.layers[1].mlp.down_proj.scales.bfloat16())
    # Through the paged cache, one row and a batch: greedy equals greedy over full recomputation with this model.
    prompts = [llm.tokenizer.encode(p) for p in ("The quick brown fox", "Paris is the capital of")]
    outs = llm.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    for prompt, out_ in zip(prompts, outs):
        ids = list(prompt)
        with torch.inference_mode():
            for _ in range(8):
                ids.append(int(llm.model(torch.tensor([ids]))[0, -1].argmax()))
        assert out_.token_ids == ids[len(prompt):]


def test_merged_adapter_is_quantised_with_the_base(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama")
    peft_model = make_peft_adapter(base, tmp_path / "alpha", 1, ["q_proj", "v_proj"])
    cli_build(base, "--adapter", f"alpha={tmp_path / 'alpha'}", "--merge", "--quant", "int4", "-o", tmp_path / "b")
    # Reference: PEFT merges the adapter, and the merged float model is quantised in memory.
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "merged" / name).write_bytes((base / name).read_bytes())
    merged, _ = load_pretrained(tmp_path / "merged", dtype="float32")
    quantize(merged, QuantConfig("int4", 32), torch.bfloat16)
    built, _ = load_pretrained(tmp_path / "b")
    qkv, ref = built.layers[0].self_attn.qkv_proj, merged.layers[0].self_attn.qkv_proj
    # The merge happens in float32 on both sides but in different code, so a weight sitting on a rounding boundary
    # may land one level apart; the adapter itself moves far more than that.
    differ = (qkv.int_weight() != ref.int_weight()).float().mean().item()
    assert differ < 0.01, differ
    unmerged, _ = load_pretrained(base, dtype="float32")
    quantize(unmerged, QuantConfig("int4", 32), torch.bfloat16)
    assert (qkv.int_weight() != unmerged.layers[0].self_attn.qkv_proj.int_weight()).float().mean() > 0.1


def test_quant_with_unmerged_adapter_is_refused_at_build_and_at_load(builds, tmp_path):
    base, root = builds
    make_peft_adapter(base, tmp_path / "alpha", 1, ["q_proj"])
    result = CliRunner().invoke(app, ["build", str(base), "--quant", "int4", "--adapter",
                                      f"alpha={tmp_path / 'alpha'}", "-o", str(tmp_path / "b")])
    assert result.exit_code != 0 and "--merge" in result.output
    with pytest.raises(LoraError, match="quantised.*--merge"):
        LLM(root / "int8", adapters={"alpha": str(tmp_path / "alpha")})


def test_bad_quant_options_and_records_name_the_field(builds, tmp_path):
    base, root = builds
    bad = CliRunner().invoke(app, ["build", str(base), "--quant", "int3", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--quant" in bad.output and "int3" in bad.output
    bad = CliRunner().invoke(app, ["build", str(base), "--quant", "int8", "--dtype", "float16", "-o",
                                   str(tmp_path / "y")])
    assert bad.exit_code != 0 and "bfloat16" in bad.output
    out = tmp_path / "copy"
    out.mkdir()
    for file in (root / "int4").iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "quant": {"mode": "int4", "group_size": 48}}))
    with pytest.raises(EngineError, match=r"tunelab-build\.json: quant: .*group_size.*48"):
        LLM(out)
    (out / MANIFEST).write_text(json.dumps({**manifest, "quant": {"mode": "int8", "group_size": None}}))
    with pytest.raises(EngineError, match="quant is .*int8.* but .*config.json records"):
        LLM(out)
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="int4 checkpoint computes in bfloat16.*dtype=float32"):
        LLM(out, dtype=torch.float32)


def test_bench_of_a_quantised_build_says_how_it_compares_with_16_bit(builds):
    from tunelab.engine.bench import run_generate_bench

    base, root = builds
    lines = []
    r = run_generate_bench(requests=2, prompt_tokens=8, new_tokens=3, single_tokens=3, bandwidth_mbytes=16,
                           build=str(root / "int4"), log=lines.append)
    assert r.build == str(root / "int4") and r.quant == "int4" and r.dtype == "bfloat16" and r.model == str(base)
    assert set(r.sixteen_bit) == {"float16", "bfloat16"}
    verdicts = [line for line in lines if "16-bit on this device" in line]
    assert len(verdicts) == 2  # batch 1 and concurrent
    for line, key, ours in zip(verdicts, ("b1_tok_s", "concurrent_tok_s"), (r.ours_b1_tok_s, r.ours_concurrent_tok_s)):
        best = max(r.sixteen_bit[d][key] for d in r.sixteen_bit)
        assert ("faster than" in line) == (ours >= best) and ("SLOWER than" in line) == (ours < best), line
    # The quantised weights count as parameters, and as the bytes a decode step reads.
    assert abs(r.params_millions - llm_params(base)) < 0.05
    result = CliRunner().invoke(app, ["bench", "generate", "--build", str(base)])
    assert result.exit_code != 0 and "not a tunelab build" in " ".join(result.output.replace("│", " ").split())


def llm_params(path) -> float:
    model, _ = load_pretrained(path, dtype="float32")
    return model.num_parameters() / 1e6
