"""Per-request LoRA adapters: a batch mixing adapters == each adapter alone == PEFT's own generate."""

import pytest
import torch

import peft  # noqa: E402  (a test dependency: missing, it must fail loudly, not skip)
from transformers import AutoModelForCausalLM  # noqa: E402

from tunelab.engine import LLM, SamplingParams  # noqa: E402

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):\n", "Hello, how"]


def make_peft_adapter(base_path, out_dir, seed, targets):
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # PEFT zero-initialises B; random A and B make the adapter really matter
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(out_dir)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    base = tiny_checkpoint("llama")
    root = tmp_path_factory.mktemp("adapters")
    refs = {
        "alpha": make_peft_adapter(base, root / "alpha", 1, ["q_proj", "v_proj"]),
        "beta": make_peft_adapter(base, root / "beta", 2, ["o_proj", "down_proj", "up_proj"]),
    }
    llm = LLM(base, block_size=4, adapters={"alpha": str(root / "alpha"), "beta": str(root / "beta")})
    return llm, refs


def peft_greedy(model, ids, n):
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=1,
                         pad_token_id=2)
    tokens = out[0, len(ids):].tolist()
    return tokens[: tokens.index(1)] if 1 in tokens else tokens


def test_mixed_adapter_batch_equals_each_alone(setup):
    llm, refs = setup
    params = SamplingParams(max_tokens=16)
    names = ["alpha", "beta", None, "alpha"]
    mixed = llm.generate(PROMPTS, params, adapter=names)
    alone = [llm.generate([p], params, adapter=a)[0] for p, a in zip(PROMPTS, names)]
    assert [m.token_ids for m in mixed] == [a.token_ids for a in alone]
    # ...and each equals PEFT running that adapter (the base row: the base model).
    for prompt, name, out in zip(PROMPTS, names, mixed):
        ids = llm.tokenizer.encode(prompt)
        if name is None:
            with refs["alpha"].disable_adapter():
                assert out.token_ids == peft_greedy(refs["alpha"], ids, 16)
        else:
            assert out.token_ids == peft_greedy(refs[name], ids, 16)
    # The adapters must actually change the output, or this test proves nothing.
    same_prompt = llm.generate([PROMPTS[0]] * 3, params, adapter=["alpha", "beta", None])
    assert len({tuple(o.token_ids) for o in same_prompt}) == 3


def test_an_unknown_adapter_is_refused_once_at_the_edge_naming_the_loaded_ones(setup):
    """make_sequence is the one check: the request never reaches the scheduler, and the error lists what is loaded."""
    from tunelab.engine import EngineError, UnknownAdapter

    llm, _ = setup
    requests, used = llm.stats["requests"], llm.block_manager.num_used
    with pytest.raises(UnknownAdapter) as info:
        llm.make_sequence("hi", SamplingParams(max_tokens=2), "gamma")
    assert isinstance(info.value, EngineError)
    assert (info.value.name, info.value.loaded) == ("gamma", ["alpha", "beta"])
    assert "'gamma' is not loaded" in str(info.value) and "['alpha', 'beta']" in str(info.value)
    with pytest.raises(UnknownAdapter, match="gamma"):
        llm.generate(["hi", "there"], SamplingParams(max_tokens=2), adapter=["alpha", "gamma"])
    assert (llm.stats["requests"], llm.block_manager.num_used) == (requests, used)
