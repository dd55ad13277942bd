"""Tiny random Hugging Face checkpoints for tests and demos (no network).

`make_checkpoint(family, path)` builds a model with transformers' own config and
model classes, gives it weights large enough that logits are well separated (the
default 0.02 init makes greedy decoding a coin toss between near-equal logits),
trains a small byte-level BPE tokenizer, attaches a chat template and saves it all
with `save_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 384
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "def add(a, b):\n    return a + b\n",
    "Hello, how are you today? I am fine, thank you!",
    "LoRA trains low-rank matrices A and B while W0 stays frozen.",
    "Ünïcödé text: café, naïve, 東京, emoji 🙂.",
]

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = """{{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
# Mistral-style: strict alternation enforced with raise_exception, system folded in.
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system is defined %}
            {{- ' [INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- else %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"""
# Exercises tojson, loop controls and namespace the way tool-calling templates do.
TOOLS = """{%- set ns = namespace(n=0) %}
{%- if tools %}{{ 'Tools: ' + tools | tojson + '\\n' }}{% endif %}
{%- for m in messages %}
    {%- if m['role'] == 'system' %}{% continue %}{% endif %}
    {%- set ns.n = ns.n + 1 %}
    {{- ns.n ~ '. ' ~ m['role'] ~ ': ' ~ m['content'] ~ '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ 'assistant:' }}{% endif %}
"""
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "tools": TOOLS}

FAMILIES = {
    # Llama 3: grouped-query attention, untied embeddings, llama3 rope scaling.
    "llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
        template="llama3",
    ),
    # Llama 1/2: multi-head attention, tied embeddings, attention bias.
    "llama2": dict(
        model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True, attention_bias=True,
        template="mistral",
    ),
    # Mistral: a sliding window short enough that the test sequences exceed it.
    "mistral": dict(
        model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=256, sliding_window=6, head_dim=16, template="mistral",
    ),
    # Qwen2: bias on q/k/v only, tied embeddings.
    "qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, template="chatml",
    ),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256, template="chatml"),
}  # fmt: skip


def make_tokenizer(template: str | None = "chatml"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if template:
        fast.chat_template = TEMPLATES[template]
    return fast


def make_hf_model(family: str, seed: int = 0):
    import transformers

    spec = dict(FAMILIES[family])
    spec.pop("template")
    model_type = spec.pop("model_type")
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "gpt2": "GPT2"}[model_type]
    config = getattr(transformers, f"{cls}Config")(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2, **spec)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}LMHeadModel" if cls == "GPT2" else f"{cls}ForCausalLM")(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model.eval()


def make_checkpoint(family: str, path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    model = make_hf_model(family, seed)
    model.save_pretrained(path)
    make_tokenizer(FAMILIES[family]["template"]).save_pretrained(path)
    return path
