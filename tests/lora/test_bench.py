"""The benchmark runs end to end (tiny size); its figures are read by people, not asserted on."""

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_bench_lora_tiny_runs_and_prints_ratios():
    result = CliRunner().invoke(app, ["bench", "lora", "--size", "tiny", "--iters", "1", "--warmup", "0",
                                      "--adapters", "3"])
    assert result.exit_code == 0, result.output
    assert "tunelab / PEFT" in result.output and "mixed / merged" in result.output


def test_step_memory_counts_activations_and_lora_gradients():
    import torch
    import transformers

    from tunelab.lora import LoraConfig, inject
    from tunelab.lora.bench import _step_memory

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4)
    ids = torch.randint(0, 64, (2, 8))
    small = inject(transformers.LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj"]))
    big = inject(transformers.LlamaForCausalLM(cfg), LoraConfig(r=16, target_modules="all-linear"))
    mem_small, _ = _step_memory(small, ids, "cpu")
    mem_big, _ = _step_memory(big, ids, "cpu")
    grads_big = sum(p.numel() * 4 for p in big.parameters() if p.requires_grad) / 2**20
    assert mem_big > mem_small > 0 and mem_big > grads_big
